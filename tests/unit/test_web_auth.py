"""Bearer tokens of the HTTP API: parsing ORCH_WEB_TOKENS, roles, constant-time compare."""

from __future__ import annotations

import hmac
from typing import Any

import pytest

from orchestrator.web import auth
from orchestrator.web.auth import TokenConfigError, bearer, parse_tokens, permits, role_of

TOKENS = "reader-token-1=read, operator-token-1=operator"


def test_tokens_are_parsed_with_their_roles() -> None:
    assert parse_tokens(TOKENS) == [(b"reader-token-1", "read"), (b"operator-token-1", "operator")]
    assert parse_tokens(None) == []
    assert parse_tokens(" , ") == []


@pytest.mark.parametrize(
    "text",
    [
        "no-role-given",
        "=read",
        "reader-token-1=admin",
        "short=read",
        "aaaaaaaa=read,aaaaaaaa=operator",
    ],
)
def test_malformed_tokens_are_refused(text: str) -> None:
    with pytest.raises(TokenConfigError):
        parse_tokens(text)


def test_a_token_may_hold_an_equals_sign() -> None:
    assert parse_tokens("abc=def=ghi=read") == [(b"abc=def=ghi", "read")]


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc", "abc"),
        ("bearer  abc ", "abc"),
        ("Basic abc", None),
        ("Bearer", None),
        ("", None),
        (None, None),
    ],
)
def test_bearer_header(header: str | None, token: str | None) -> None:
    assert bearer(header) == token


def test_roles_of_tokens() -> None:
    tokens = parse_tokens(TOKENS)
    assert role_of("reader-token-1", tokens) == "read"
    assert role_of("operator-token-1", tokens) == "operator"
    assert role_of("reader-token-", tokens) is None
    assert role_of("", tokens) is None
    assert role_of(None, tokens) is None
    assert role_of("\udcff-not-utf8", tokens) is None


def test_operator_may_read_and_act_reader_only_read() -> None:
    assert permits("read", "read") and permits("operator", "read")
    assert permits("operator", "operator")
    assert not permits("read", "operator")


def test_every_token_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[Any, Any]] = []
    original = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return original(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    tokens = parse_tokens(TOKENS)
    assert role_of("reader-token-1", tokens) == "read"
    # No early exit on a match: the time taken does not tell which token matched.
    assert len(calls) == len(tokens)
    assert all(isinstance(a, bytes) and isinstance(b, bytes) for a, b in calls)
