"""Every part of the batch statement, alone and all together, is valid SQL for the server
and takes exactly the arguments the builder passes."""

from __future__ import annotations

import asyncpg
import pytest

from orchestrator.store.batch_statement import batch_statement, load_parts, parameter_count

pytestmark = pytest.mark.integration


async def test_every_part_prepares_alone_and_all_together(database_url: str) -> None:
    parts = load_parts()
    conn = await asyncpg.connect(database_url)
    try:
        shapes = [[name] for name in parts] + [list(parts)]
        for shape in shapes:
            columns = {name: [None] * parameter_count(parts[name]) for name in shape}
            sql, args = batch_statement(columns, 0)
            prepared = await conn.prepare(sql)
            assert len(prepared.get_parameters()) == len(args), shape
    finally:
        await conn.close()
