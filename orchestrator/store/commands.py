"""Administrative database actions for the CLI, and the probe that finds PostgreSQL."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg

from orchestrator.store.migrate import apply_migrations, ensure_database


async def migrate(url: str) -> dict[str, Any]:
    await ensure_database(url)
    conn = await asyncpg.connect(url, timeout=5)
    try:
        applied = await apply_migrations(conn)
    finally:
        await conn.close()
    return {"applied": applied}


async def database_problem(url: str, timeout: float = 3.0) -> str | None:
    """Why PostgreSQL at `url` cannot be used, or None (its database is created if missing)."""
    try:
        await asyncio.wait_for(ensure_database(url, timeout=timeout), timeout + 1)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        return f"PostgreSQL unreachable: {type(exc).__name__}: {exc}"
    return None
