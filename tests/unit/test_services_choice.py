"""Which services the integration suite uses: containers when Docker answers, else the
configured ones; a clear error (which CI turns into a failure) when neither is there."""

from __future__ import annotations

import pytest

from orchestrator.services import Services
from tests.support.services import ServicesMissing, choose_services, running_in_ci


def test_docker_means_containers() -> None:
    made = Services("postgresql://c/db", "amqp://c/")
    assert choose_services(docker=lambda: True, containers=lambda: made, env={}) is made


def test_without_docker_and_services_it_says_so() -> None:
    env = {
        "ORCH_TEST_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/none",
        "ORCH_TEST_AMQP_URL": "amqp://guest:guest@127.0.0.1:1/",
    }

    def no_containers() -> Services:
        raise AssertionError("must not start containers without Docker")

    with pytest.raises(ServicesMissing, match=r"PostgreSQL unreachable.*RabbitMQ unreachable"):
        choose_services(docker=lambda: False, containers=no_containers, env=env)


@pytest.mark.parametrize(
    ("value", "ci"), [("true", True), ("1", True), ("", False), ("false", False)]
)
def test_ci_detection(value: str, ci: bool) -> None:
    assert running_in_ci({"CI": value}) is ci
