"""Starts take effect once per idempotency key, and business keys stay unique, under
concurrent starts from several connections."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import asyncpg
import orjson
import pytest

from orchestrator.client import Client, Started
from orchestrator.config import Settings
from orchestrator.errors import BusinessKeyConflict, IdempotencyConflict
from tests.support.harness import running_engine, sequential_process

pytestmark = pytest.mark.integration

CLIENTS = 5
STARTS = 50


def unique_business_key_process(key: str, on_duplicate: str) -> str:
    definition = orjson.loads(sequential_process(key, [f"{key}-work"]))
    definition["business_key"] = {"unique": True, "on_duplicate": on_duplicate}
    return orjson.dumps(definition).decode()


async def start_from_all(
    clients: list[Client], key: str, options: Callable[[int], dict[str, Any]]
) -> list[Started | BaseException]:
    """STARTS starts at once, spread over the clients' connections."""
    return await asyncio.gather(
        *(clients[i % len(clients)].start(key, **options(i)) for i in range(STARTS)),
        return_exceptions=True,
    )


async def connected_clients(settings: Settings) -> list[Client]:
    clients = [Client(settings, name=f"starter-{i}") for i in range(CLIENTS)]
    await asyncio.gather(*(client.connect() for client in clients))
    return clients


async def test_one_idempotency_key_gives_one_instance(
    settings: Settings, db: asyncpg.Pool, topics: set[str]
) -> None:
    topics.add("idem-work")
    async with running_engine(settings), running_engine(settings):
        clients = await connected_clients(settings)
        try:
            await clients[0].deploy(sequential_process("idem", ["idem-work"]))
            results = await start_from_all(
                clients,
                "idem",
                lambda _: {"idempotency_key": "order-42", "variables": {"amount": 10}},
            )
            with pytest.raises(IdempotencyConflict):
                await clients[0].start("idem", idempotency_key="order-42", variables={"amount": 11})
            again = await clients[1].start(
                "idem", idempotency_key="order-42", variables={"amount": 10}
            )
        finally:
            await asyncio.gather(*(client.close() for client in clients))
    errors = [r for r in results if isinstance(r, BaseException)]
    assert errors == []
    ids = {r.instance_id for r in results if isinstance(r, Started)}
    assert len(ids) == 1
    assert sum(r.created for r in results if isinstance(r, Started)) == 1
    assert again.instance_id in ids and not again.created
    assert await db.fetchval("SELECT count(*) FROM process_instances") == 1
    assert await db.fetchval("SELECT count(*) FROM tasks") == 1
    ledger = await db.fetchrow("SELECT duplicates FROM start_ledger")
    assert ledger["duplicates"] == STARTS  # 49 concurrent repeats and one later one


async def test_key_of_a_finished_instance_returns_it(
    settings: Settings, db: asyncpg.Pool, topics: set[str]
) -> None:
    topics.add("idem-done-work")
    async with running_engine(settings), Client(settings) as client:
        await client.deploy(sequential_process("idem-done", ["idem-done-work"]))
        first = await client.start("idem-done", idempotency_key="k1")
        await db.execute("UPDATE process_instances SET status = 'completed'")
        again = await client.start("idem-done", idempotency_key="k1")
    assert again == Started(first.instance_id, False)


async def test_business_key_reject_under_concurrency(
    settings: Settings, db: asyncpg.Pool, topics: set[str]
) -> None:
    topics.add("bk-reject-work")
    async with running_engine(settings), running_engine(settings):
        clients = await connected_clients(settings)
        try:
            await clients[0].deploy(unique_business_key_process("bk-reject", "reject"))
            results = await start_from_all(
                clients,
                "bk-reject",
                lambda i: {"business_key": "customer-7", "variables": {"attempt": i}},
            )
            other = await clients[0].start("bk-reject", business_key="customer-8")
        finally:
            await asyncio.gather(*(client.close() for client in clients))
    created = [r for r in results if isinstance(r, Started)]
    rejected = [r for r in results if isinstance(r, BusinessKeyConflict)]
    assert len(created) == 1 and created[0].created
    assert len(rejected) == STARTS - 1
    assert other.created
    count = await db.fetchval(
        "SELECT count(*) FROM process_instances WHERE business_key = 'customer-7'"
    )
    assert count == 1


async def test_business_key_return_existing_under_concurrency(
    settings: Settings, db: asyncpg.Pool, topics: set[str]
) -> None:
    topics.add("bk-existing-work")
    async with running_engine(settings), running_engine(settings):
        clients = await connected_clients(settings)
        try:
            await clients[0].deploy(unique_business_key_process("bk-existing", "return_existing"))
            results = await start_from_all(
                clients,
                "bk-existing",
                lambda i: {"business_key": "customer-9", "variables": {"attempt": i}},
            )
        finally:
            await asyncio.gather(*(client.close() for client in clients))
    assert [r for r in results if isinstance(r, BaseException)] == []
    started = [r for r in results if isinstance(r, Started)]
    assert len({r.instance_id for r in started}) == 1
    assert sum(r.created for r in started) == 1
    assert await db.fetchval("SELECT count(*) FROM process_instances") == 1


async def test_concurrent_transactions_with_one_key(
    settings: Settings, db: asyncpg.Pool, topics: set[str]
) -> None:
    """The same start in 50 concurrent transactions, as 50 engine replicas would run it."""
    from orchestrator.daemon.context import EngineContext
    from orchestrator.daemon.definitions import DefinitionCache
    from orchestrator.daemon.starts import StartBatch
    from orchestrator.model.wire import StartCommand
    from orchestrator.store.pool import create_pool
    from orchestrator.store.store import Session

    topics.add("idem-tx-work")
    async with running_engine(settings), Client(settings) as client:
        await client.deploy(sequential_process("idem-tx", ["idem-tx-work"]))
    pool = await create_pool(settings.database_url, size=STARTS)
    command = StartCommand(process_key="idem-tx", idempotency_key="same", variables={"n": 1})
    gate = asyncio.Event()

    async def one() -> Any:
        async with pool.acquire() as conn:
            await gate.wait()
            async with conn.transaction():
                context = EngineContext(DefinitionCache())
                results, _, _ = await StartBatch(Session(conn, "test", 1000), context).run(
                    [command]
                )
                return results[0]

    try:
        calls = [asyncio.create_task(one()) for _ in range(STARTS)]
        await asyncio.sleep(0)
        gate.set()
        results = await asyncio.gather(*calls)
    finally:
        await pool.close()
    assert len({r["instance_id"] for r in results}) == 1
    assert sum(r["created"] for r in results) == 1
    assert await db.fetchval("SELECT count(*) FROM process_instances") == 1
