"""Settings: each field read from its ORCH_ variable, checked the same way as an argument,
and a bad value named by the variable it came from."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from orchestrator.config import Settings

FIELDS = [field.name for field in dataclasses.fields(Settings)]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only what a test sets: an ORCH_ variable of the shell running the tests must not count."""
    for variable in {name for names in Settings.variables().values() for name in names}:
        monkeypatch.delenv(variable, raising=False)


def another_value(name: str) -> Any:
    """A valid value of the field, other than its default."""
    default = getattr(Settings(), name)
    if name == "namespace":
        return "elsewhere"
    if name == "web_tokens":
        return "reader-token-1=read"
    if name == "web_bpmn_js":
        return "/opt/bpmn-js"
    if name == "metrics_port":  # off by default
        return 9464
    if name == "log_format":
        return "json"
    if isinstance(default, str):
        return default.replace("127.0.0.1", "example.org")
    if isinstance(default, float):
        return default * 2 + 0.5
    return default + 1


@pytest.mark.parametrize("name", FIELDS)
def test_every_field_is_read_from_its_variable(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    variable = "ORCH_" + name.upper()
    assert Settings.variables()[name][0] == variable
    value = another_value(name)
    monkeypatch.setenv(variable, str(value))
    assert getattr(Settings.from_env(), name) == value
    assert Settings.from_env() == dataclasses.replace(Settings(), **{name: value})


def test_arguments_never_read_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCH_BATCH_SIZE", "7")
    monkeypatch.setenv("ORCH_NAMESPACE", "from-env")
    assert (Settings().batch_size, Settings().namespace) == (500, "orch")


def test_overrides_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCH_BATCH_SIZE", "7")
    monkeypatch.setenv("ORCH_POOL_SIZE", "3")
    settings = Settings.from_env(batch_size=9)
    assert (settings.batch_size, settings.pool_size) == (9, 3)
    with pytest.raises(TypeError, match="no field 'bach_size'"):
        Settings.from_env(bach_size=9)


def test_the_client_timeout_keeps_its_documented_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCH_CLIENT_TIMEOUT", "12.5")
    assert Settings.from_env().client_timeout_s == 12.5
    monkeypatch.setenv("ORCH_CLIENT_TIMEOUT_S", "4")
    assert Settings.from_env().client_timeout_s == 4.0  # the field's own name wins


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("ORCH_BATCH_SIZE", "many", "ORCH_BATCH_SIZE must be an integer, not 'many'"),
        ("ORCH_BATCH_SIZE", "2.5", "ORCH_BATCH_SIZE must be an integer, not '2.5'"),
        ("ORCH_POOL_SIZE", "0", "ORCH_POOL_SIZE must be at least 1, not '0'"),
        ("ORCH_MAX_REDISPATCHES", "-1", "ORCH_MAX_REDISPATCHES must be at least 0, not '-1'"),
        ("ORCH_CLIENT_TIMEOUT_S", "soon", "ORCH_CLIENT_TIMEOUT_S must be a number, not 'soon'"),
        ("ORCH_CLIENT_TIMEOUT", "0", "ORCH_CLIENT_TIMEOUT must be greater than 0"),
        ("ORCH_CLIENT_TIMEOUT", "inf", "ORCH_CLIENT_TIMEOUT must be a finite number"),
        ("ORCH_NAMESPACE", "Prod", "ORCH_NAMESPACE: invalid namespace 'Prod'"),
    ],
)
def test_a_bad_value_names_its_variable(
    variable: str, value: str, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValueError) as raised:
        Settings.from_env()
    assert str(raised.value).startswith(message)


def test_every_bad_value_is_named_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCH_BATCH_SIZE", "x")
    monkeypatch.setenv("ORCH_DISPATCH_TIMEOUT_MS", "0")
    with pytest.raises(ValueError, match=r"ORCH_BATCH_SIZE.*; ORCH_DISPATCH_TIMEOUT_MS"):
        Settings.from_env()


def test_a_bad_override_names_its_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCH_BATCH_SIZE", "5")
    with pytest.raises(ValueError, match=r"^batch_size must be at least 1, not 0$"):
        Settings.from_env(batch_size=0)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("namespace", "has space"),
        ("batch_size", 0),
        ("client_timeout_s", 0.0),
        ("client_timeout_s", float("nan")),
        ("dispatch_timeout_ms", 0),
        ("recent_instances", -1),
    ],
)
def test_arguments_are_checked_too(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        Settings(**{field: value})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=field):
        dataclasses.replace(Settings(), **{field: value})


def test_zero_is_allowed_where_it_means_something() -> None:
    settings = Settings(recent_instances=0, db_lock_timeout_ms=0, max_redispatches=0)
    assert settings.session_limits().lock_timeout_ms == 0
