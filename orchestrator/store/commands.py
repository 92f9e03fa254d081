"""Administrative database actions for the CLI."""

from __future__ import annotations

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
