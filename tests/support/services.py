"""Which PostgreSQL and RabbitMQ the integration tests use.

Containers when a Docker engine answers (probed with a short timeout); otherwise the services
named by ORCH_TEST_DATABASE_URL / ORCH_TEST_AMQP_URL (default: the local ones). In CI a
missing service fails the run instead of skipping it.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

from orchestrator.services import (
    Services,
    docker_answers,
    postgres_problem,
    rabbitmq_problem,
    start_containers,
)

DEFAULT_TEST_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/orchestrator_test"
DEFAULT_TEST_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"


class ServicesMissing(RuntimeError):
    """Neither Docker nor the configured services are available."""


def choose_services(
    *,
    docker: Callable[[], bool] = docker_answers,
    containers: Callable[[], Services] = start_containers,
    env: dict[str, str] | None = None,
) -> Services:
    env = dict(os.environ) if env is None else env
    if docker():
        return containers()
    database_url = env.get("ORCH_TEST_DATABASE_URL", DEFAULT_TEST_DATABASE_URL)
    amqp_url = env.get("ORCH_TEST_AMQP_URL", DEFAULT_TEST_AMQP_URL)
    problems = [
        problem for problem in asyncio.run(_problems(database_url, amqp_url)) if problem is not None
    ]
    if problems:
        raise ServicesMissing("; ".join(problems) + " (and no Docker engine answers)")
    return Services(database_url, amqp_url)


async def _problems(database_url: str, amqp_url: str) -> list[str | None]:
    return list(await asyncio.gather(postgres_problem(database_url), rabbitmq_problem(amqp_url)))


def running_in_ci(env: dict[str, str] | None = None) -> bool:
    env = dict(os.environ) if env is None else env
    return env.get("CI", "").lower() not in ("", "0", "false")
