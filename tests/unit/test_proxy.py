"""The fault tests' TCP proxy, against an echo server of this process (no services needed)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest

from tests.harness import wait_until
from tests.proxy import TcpProxy

TIMEOUT = 5.0


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(4096):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


@pytest.fixture
async def proxy() -> AsyncIterator[TcpProxy]:
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    started = await TcpProxy("127.0.0.1", port, name="echo").start()
    yield started
    await started.close()
    server.close()
    await server.wait_closed()


async def _connect(proxy: TcpProxy) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", proxy.port)


async def _roundtrip(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes
) -> bytes:
    writer.write(data)
    await writer.drain()
    return await asyncio.wait_for(reader.readexactly(len(data)), TIMEOUT)


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


async def test_forwards_both_ways(proxy: TcpProxy) -> None:
    reader, writer = await _connect(proxy)
    assert await _roundtrip(reader, writer, b"hello") == b"hello"
    payload = bytes(range(256)) * 2048  # larger than one chunk, arrives whole and in order
    assert await _roundtrip(reader, writer, payload) == payload
    assert (proxy.counters.connections, proxy.active) == (1, 1)
    await _close(writer)


async def test_cut_resets_current_connections_and_new_ones_work(proxy: TcpProxy) -> None:
    connections = [await _connect(proxy) for _ in range(3)]
    for reader, writer in connections:
        assert await _roundtrip(reader, writer, b"x") == b"x"
    assert proxy.cut() == 3
    for reader, writer in connections:
        try:
            ended = await asyncio.wait_for(reader.read(1), TIMEOUT)
        except ConnectionResetError:
            ended = b""
        assert ended == b"", "a cut connection still delivered data"
        await _close(writer)
    assert (proxy.counters.cuts, proxy.counters.cut_connections, proxy.active) == (1, 3, 0)
    reader, writer = await _connect(proxy)
    assert await _roundtrip(reader, writer, b"again") == b"again"
    await _close(writer)


async def test_block_refuses_new_connections_until_it_ends(proxy: TcpProxy) -> None:
    proxy.block(0.3)
    reader, writer = await _connect(proxy)
    writer.write(b"x")
    try:
        refused = await asyncio.wait_for(reader.read(1), TIMEOUT)
    except ConnectionResetError:
        refused = b""
    assert refused == b""
    await _close(writer)
    assert (proxy.counters.refused, proxy.counters.connections) == (1, 0)

    async def unblocked() -> bool:
        return not proxy.blocked

    waited = await wait_until(unblocked, timeout=TIMEOUT, what="the block to end by itself")
    assert waited > 0.1
    reader, writer = await _connect(proxy)
    assert await _roundtrip(reader, writer, b"back") == b"back"
    await _close(writer)


async def test_held_connection_is_forwarded_on_unblock(proxy: TcpProxy) -> None:
    proxy.block(hold=True)
    reader, writer = await _connect(proxy)
    writer.write(b"waiting")
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.read(1), 0.2)
    proxy.unblock()
    assert await asyncio.wait_for(reader.readexactly(7), TIMEOUT) == b"waiting"
    assert (proxy.counters.held, proxy.counters.connections) == (1, 1)
    await _close(writer)


async def test_delay_adds_latency_each_way_and_keeps_order(proxy: TcpProxy) -> None:
    reader, writer = await _connect(proxy)
    began = time.monotonic()
    await _roundtrip(reader, writer, b"fast")
    fast = time.monotonic() - began
    proxy.delay(100)
    began = time.monotonic()
    for index in range(5):
        writer.write(b"%d" % index)
    await writer.drain()
    echoed = await asyncio.wait_for(reader.readexactly(5), TIMEOUT)
    slow = time.monotonic() - began
    assert echoed == b"01234"
    assert slow >= 0.2 > fast, (fast, slow)
    proxy.delay(0)
    began = time.monotonic()
    await _roundtrip(reader, writer, b"fast again")
    assert time.monotonic() - began < 0.2
    await _close(writer)


async def test_url_points_at_the_proxy_and_keeps_the_rest(proxy: TcpProxy) -> None:
    assert proxy.url("amqp://guest:guest@127.0.0.1:5672/vhost?heartbeat=5") == (
        f"amqp://guest:guest@127.0.0.1:{proxy.port}/vhost?heartbeat=5"
    )
    assert proxy.url("postgresql://postgres@db.example:5432/orch_test") == (
        f"postgresql://postgres@127.0.0.1:{proxy.port}/orch_test"
    )
