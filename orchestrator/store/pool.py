"""Connection pool with jsonb decoded by orjson."""

from __future__ import annotations

from typing import Any

import asyncpg
import orjson


def _encode_jsonb(value: Any) -> bytes:
    return b"\x01" + orjson.dumps(value)


def _decode_jsonb(data: bytes) -> Any:
    return orjson.loads(data[1:])


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec(
        "jsonb", schema="pg_catalog", encoder=_encode_jsonb, decoder=_decode_jsonb, format="binary"
    )


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Released connections skip asyncpg's reset query (RESET ALL, UNLISTEN, advisory
    unlock): the engine leaves nothing of that behind, and the query cost a round trip at the
    end of every transaction. asyncpg still rolls back a transaction left open."""


async def create_pool(
    url: str, *, size: int = 8, timeout: float = 5.0, application_name: str = "orchestrator"
) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        url,
        min_size=1,
        max_size=size,
        timeout=timeout,
        command_timeout=60,
        init=_init_connection,
        reset=_keep_session,
        server_settings={
            "application_name": application_name,
            # One plan per statement and connection, made at its first use: planning the
            # batch statement each time cost more than running it.
            "plan_cache_mode": "force_generic_plan",
            # Every statement on the engine's path reads rows by key. A plan made while a
            # table is still small prefers a sequential scan, and the cached plan keeps it
            # after the table has grown (until an ANALYZE invalidates it): a backlog of
            # 30,000 instances drained at half speed. Index plans are right at every size.
            "enable_seqscan": "off",
        },
    )
    if pool is None:  # asyncpg types it Optional; it is never None once awaited
        raise RuntimeError("asyncpg returned no pool")
    return pool
