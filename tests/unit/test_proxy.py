"""The fault tests' TCP proxy, against an echo server of this process (no services needed)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

import pytest

from tests.support.harness import wait_until
from tests.support.proxy import TcpProxy

TIMEOUT = 5.0


class Target:
    """An echo server that records what reaches it: bytes, connections, and ends seen."""

    def __init__(self) -> None:
        self.received = 0
        self.accepted = 0
        self.ended = 0
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._echo, "127.0.0.1", 0)
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def _echo(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.writers.append(writer)
        try:
            while data := await reader.read(4096):
                self.received += len(data)
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            self.ended += 1
            writer.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            for writer in self.writers:
                writer.transport.abort()
            await self.server.wait_closed()


@pytest.fixture
async def target() -> AsyncIterator[Target]:
    server = Target()
    await server.start()
    yield server
    await server.close()


@pytest.fixture
async def proxy(target: Target) -> AsyncIterator[TcpProxy]:
    assert target.server is not None
    port = target.server.sockets[0].getsockname()[1]
    started = await TcpProxy("127.0.0.1", port, name="echo").start()
    yield started
    await started.close()


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


async def test_pause_holds_bytes_both_ways_until_resume(proxy: TcpProxy, target: Target) -> None:
    reader, writer = await _connect(proxy)
    assert await _roundtrip(reader, writer, b"x") == b"x"
    received = target.received
    proxy.pause()
    for index in range(3):
        writer.write(b"%d" % index)
        await writer.drain()
    target.writers[0].write(b"pushed")
    await target.writers[0].drain()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.read(1), 0.3)
    assert target.received == received
    proxy.resume()
    # Everything arrives, in order: the target's push, then the echo of what was held.
    assert await asyncio.wait_for(reader.readexactly(9), TIMEOUT) == b"pushed012"
    assert proxy.counters.dropped_bytes == 0
    await _close(writer)


async def test_a_blackhole_drops_what_a_pause_held(proxy: TcpProxy, target: Target) -> None:
    reader, writer = await _connect(proxy)
    assert await _roundtrip(reader, writer, b"x") == b"x"
    received = target.received
    proxy.pause()
    writer.write(b"held")
    await writer.drain()
    proxy.blackhole()
    proxy.resume()
    await _dropped(proxy, 4)
    assert target.received == received
    await _stays_silent(reader)
    await _close(writer)


#: How long a silenced connection is watched for a byte or an end that must not come.
QUIET_S = 0.3


async def _stays_silent(reader: asyncio.StreamReader) -> None:
    """Nothing arrives for QUIET_S, not even the end of the stream."""
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.read(1), QUIET_S)


async def _dropped(proxy: TcpProxy, total: int) -> None:
    async def counted() -> bool:
        return proxy.counters.dropped_bytes == total

    await wait_until(counted, timeout=TIMEOUT, what=f"{total} bytes dropped")


async def test_blackhole_silences_current_connections_both_ways_without_ending_them(
    proxy: TcpProxy, target: Target
) -> None:
    reader, writer = await _connect(proxy)
    assert await _roundtrip(reader, writer, b"x") == b"x"
    assert proxy.blackhole() == 1
    assert (proxy.active, proxy.silent, proxy.blackholed) == (0, 1, True)
    received = target.received
    writer.write(b"lost")
    await writer.drain()
    await _dropped(proxy, 4)  # read by the proxy, so it can no longer be forwarded
    assert target.received == received
    await _stays_silent(reader)  # no echo, and no end either
    target.writers[0].write(b"pushed")  # the other way: nothing reaches the client
    await target.writers[0].drain()
    await _dropped(proxy, 10)
    await _stays_silent(reader)
    assert target.ended == 0, "the target saw the connection end"
    assert (proxy.counters.blackholes, proxy.counters.silenced) == (1, 1)
    await _close(writer)


async def test_connections_accepted_during_a_blackhole_never_reach_the_target(
    proxy: TcpProxy, target: Target
) -> None:
    proxy.blackhole()
    reader, writer = await _connect(proxy)  # accepted, and held
    writer.write(b"hello?")
    await writer.drain()
    await _dropped(proxy, 6)
    await _stays_silent(reader)
    assert target.accepted == 0
    assert (proxy.counters.silenced, proxy.counters.connections, proxy.silent) == (1, 0, 1)
    await _close(writer)


async def test_heal_forwards_new_connections_and_the_silenced_ones_stay_silent(
    proxy: TcpProxy,
) -> None:
    before_reader, before_writer = await _connect(proxy)
    assert await _roundtrip(before_reader, before_writer, b"x") == b"x"
    proxy.blackhole()
    during_reader, during_writer = await _connect(proxy)
    during_writer.write(b"a")
    await during_writer.drain()
    await _dropped(proxy, 1)
    proxy.heal()
    assert not proxy.blackholed
    after_reader, after_writer = await _connect(proxy)
    assert await _roundtrip(after_reader, after_writer, b"back") == b"back"
    # A partition that lost the connections' state: nothing gets through on them again.
    before_writer.write(b"still there?")
    during_writer.write(b"b")
    await _dropped(proxy, 1 + 12 + 1)
    await _stays_silent(before_reader)
    await _stays_silent(during_reader)
    assert (proxy.active, proxy.silent) == (1, 2)
    for writer in (before_writer, during_writer, after_writer):
        await _close(writer)


async def test_an_end_on_a_silenced_connection_is_not_passed_on(
    proxy: TcpProxy, target: Target
) -> None:
    # One connection whose client gives up, one whose target does.
    # (One at a time, so the target's first connection is the first client's.)
    client_ends = await _connect(proxy)
    assert await _roundtrip(*client_ends, b"x") == b"x"
    target_ends = await _connect(proxy)
    assert await _roundtrip(*target_ends, b"x") == b"x"
    assert proxy.blackhole() == 2
    await _close(client_ends[1])
    target.writers[1].close()

    async def target_saw_an_end() -> bool:
        return target.ended > 1  # the one it closed itself counts once

    with pytest.raises(AssertionError):
        await wait_until(target_saw_an_end, timeout=QUIET_S, what="an end at the target")
    await _stays_silent(target_ends[0])  # and the client saw no end either
    assert proxy.silent == 2
    # Once both sides of a silenced connection gave up, the proxy lets it go.
    target.writers[0].close()
    await _close(target_ends[1])

    async def released() -> bool:
        return proxy.silent == 0

    await wait_until(released, timeout=TIMEOUT, what="the silenced connections to be let go")


async def test_close_ends_silenced_connections(
    proxy: TcpProxy, target: Target, caplog: pytest.LogCaptureFixture
) -> None:
    reader, writer = await _connect(proxy)
    assert await _roundtrip(reader, writer, b"x") == b"x"
    proxy.blackhole()
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        await proxy.close()
        await asyncio.sleep(0)  # the callbacks of the connections' tasks run
    assert not caplog.records, "closing logged errors"
    try:
        ended = await asyncio.wait_for(reader.read(1), TIMEOUT)
    except ConnectionResetError:
        ended = b""
    assert ended == b""

    async def target_saw_the_end() -> bool:
        return target.ended == 1

    await wait_until(target_saw_the_end, timeout=TIMEOUT, what="the target to see the end")
    await _close(writer)
