from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from orchestrator.broker.topology import delete_namespace
from orchestrator.config import Settings
from orchestrator.services import Services
from tests.support import harness
from tests.support.services import ServicesMissing, choose_services, running_in_ci


@pytest.fixture(scope="session")
def services() -> Iterator[Services]:
    try:
        found = choose_services()
    except ServicesMissing as exc:
        if running_in_ci():
            pytest.fail(f"integration services missing in CI: {exc}", pytrace=False)
        pytest.skip(f"integration services missing: {exc}")
    yield found
    found.stop()


@pytest.fixture(scope="session")
def template_database(services: Services) -> Iterator[str]:
    name = f"orch_template_{os.getpid()}"
    asyncio.run(harness.create_template(services.database_url, name))
    yield name
    asyncio.run(harness.drop_database(services.database_url, name))


@pytest.fixture
async def database_url(services: Services, template_database: str) -> AsyncIterator[str]:
    """A fresh, migrated database for each test (a clone of the template)."""
    name = f"orch_test_{uuid.uuid4().hex[:12]}"
    url = await harness.clone_database(services.database_url, template_database, name)
    yield url
    await harness.drop_database(services.database_url, name)


@pytest.fixture
def topics() -> set[str]:
    """Topics a test uses; their queues are deleted after it."""
    return set()


@pytest.fixture
async def settings(
    services: Services, database_url: str, topics: set[str]
) -> AsyncIterator[Settings]:
    namespace = harness.new_namespace()
    yield Settings(
        database_url=database_url,
        amqp_url=services.amqp_url,
        namespace=namespace,
        reaper_interval_ms=100,
        outbox_claim_ms=2_000,
    )
    await delete_namespace(services.amqp_url, namespace, topics)


@pytest.fixture
async def db(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    async with harness.database(settings.database_url) as pool:
        yield pool


@pytest.fixture
def processes(settings: Settings, tmp_path: Path) -> Iterator[harness.Processes]:
    procs = harness.Processes(settings, tmp_path)
    yield procs
    procs.stop_all()
