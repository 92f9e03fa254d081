"""Apply the numbered .sql files under migrations/ once each, under an advisory lock."""

from __future__ import annotations

import contextlib
import logging
import re
from importlib import resources
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from orchestrator.store.queries import Q

log = logging.getLogger(__name__)
_MIGRATION = re.compile(r"^(\d{4})_(\w+)\.sql$")


def migrations() -> list[tuple[int, str, str]]:
    """(version, name, sql) of every migration shipped with the package, in order."""
    folder = resources.files("orchestrator.store").joinpath("migrations")
    found = []
    for entry in folder.iterdir():
        match = _MIGRATION.match(entry.name)
        if match:
            found.append((int(match.group(1)), match.group(2), entry.read_text("utf-8")))
    return sorted(found)


async def apply_migrations(conn: asyncpg.Connection) -> list[int]:
    """Bring the schema up to date; safe when several engines start at once."""
    applied_now: list[int] = []
    async with conn.transaction():
        # Another engine may be migrating right now: wait for it, and let a long migration run.
        await conn.execute(Q.local_limits, "120000", "0")
        await conn.execute(Q.migration_lock)
        await conn.execute(Q.create_migrations_table)
        done = {row["version"] for row in await conn.fetch(Q.applied_migrations)}
        for version, name, sql in migrations():
            if version in done:
                continue
            await conn.execute(sql)
            await conn.execute(Q.record_migration, version, name)
            applied_now.append(version)
            log.info("applied migration %04d_%s", version, name)
    return applied_now


async def ensure_database(url: str, timeout: float = 5.0) -> None:
    """Create the database named in `url` if the server does not have it yet."""
    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    if not name:
        return
    try:
        conn = await asyncpg.connect(url, timeout=timeout)
    except asyncpg.InvalidCatalogNameError:
        admin = urlunsplit(parts._replace(path="/postgres"))
        conn = await asyncpg.connect(admin, timeout=timeout)
        with contextlib.suppress(asyncpg.DuplicateDatabaseError):
            await conn.execute(f'CREATE DATABASE "{name.replace(chr(34), "")}"')
    await conn.close()
