"""A TCP proxy the fault tests own, to cut, refuse and delay connections to a service.

It runs in the test's event loop; the engine and workers (real subprocesses) are pointed at it
by URL (`proxy.url(service_url)`). Every connection it accepts gets its own upstream
connection to the target; bytes are forwarded as they come, in order, each chunk held back by
the current delay.

    proxy = await TcpProxy.for_url(settings.amqp_url)
    processes.worker(SPEC, ORCH_AMQP_URL=proxy.url(settings.amqp_url))
    proxy.cut()            # abort every current connection (both sides see a reset)
    proxy.block(2.0)       # refuse new connections for 2 s (hold=True: keep them waiting)
    proxy.delay(100)       # 100 ms more latency on every forwarded chunk, both directions
    proxy.pause()          # hold every byte in flight until proxy.resume()
    proxy.blackhole()      # a silent partition: nothing forwarded, nothing closed
    proxy.heal()           # new connections work again; the silenced ones stay silent
    await proxy.close()

The blackhole models a partition that drops packets (no reset, no FIN): a host that vanished,
a cable pulled, a firewall that drops. Every connection open at `blackhole()`, and every one
accepted while it lasts, is silenced for good: what either side sends is read and dropped (so
a sender's writes still succeed, as they do into a socket buffer), and a side that closes is
not passed on to the other, which learns nothing and waits until its own timeouts give up.
Connections accepted during the blackhole never reach the target (their SYN was dropped;
here the client's connect succeeds, at the proxy, but nothing it sends gets through).
`heal()` restores forwarding for new connections only: the silenced ones stay dead, as when
the partition lost the connections' state (a rebooted host, a NAT or firewall entry gone), so
the retransmissions after the heal are answered by nobody. Only their owners giving up (or
`cut()`, or `close()`) ends them. Keepalive probes cannot detect it: the proxy's own socket,
alive on this host, acknowledges them; a client needs a timeout of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

log = logging.getLogger(__name__)

CHUNK = 64 * 1024
#: Chunks waiting for their delay in one direction before reading stops (backpressure).
QUEUE_CHUNKS = 256
#: How long `close()` lets aborted connections end by themselves.
CLOSE_WAIT_S = 2.0


@dataclass
class ProxyCounters:
    connections: int = 0
    """Connections accepted and forwarded."""
    cuts: int = 0
    """Calls of `cut()`."""
    cut_connections: int = 0
    """Connections aborted by `cut()`."""
    refused: int = 0
    """Connections refused while blocked."""
    held: int = 0
    """Connections that waited for `unblock()`."""
    blackholes: int = 0
    """Calls of `blackhole()`."""
    silenced: int = 0
    """Connections silenced: open at a `blackhole()`, or accepted while it lasted."""
    dropped_bytes: int = 0
    """Bytes read from a silenced connection (either side) and dropped."""


class _Link:
    """One client connection and its upstream connection (none if it was accepted during a
    blackhole). A silenced link forwards nothing again, in either direction."""

    def __init__(self, client: asyncio.StreamWriter, upstream: asyncio.StreamWriter | None) -> None:
        self.client = client
        self.upstream = upstream
        self.silenced = upstream is None

    def abort(self) -> None:
        self.client.transport.abort()
        if self.upstream is not None:
            self.upstream.transport.abort()


class TcpProxy:
    def __init__(self, target_host: str, target_port: int, *, name: str = "proxy") -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.name = name
        self.counters = ProxyCounters()
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._delay_s = 0.0
        self._blocked = False
        self._hold = False
        self._blackholed = False
        self._closing = False
        self._unblocked = asyncio.Event()
        self._unblocked.set()
        self._unblock_timer: asyncio.TimerHandle | None = None
        self._flowing = asyncio.Event()
        self._flowing.set()

    @classmethod
    async def for_url(cls, url: str, *, name: str | None = None) -> TcpProxy:
        """A started proxy in front of the host and port of a service URL."""
        parts = urlsplit(url)
        if parts.hostname is None or parts.port is None:
            raise ValueError(f"the URL names no host and port: {url}")
        return await cls(parts.hostname, parts.port, name=name or parts.scheme).start()

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the proxy is not started")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    def url(self, service_url: str) -> str:
        """`service_url` with its host and port replaced by the proxy's."""
        parts = urlsplit(service_url)
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = f"{userinfo}@127.0.0.1:{self.port}" if userinfo else f"127.0.0.1:{self.port}"
        return urlunsplit(parts._replace(netloc=netloc))

    @property
    def active(self) -> int:
        """Connections open and forwarding."""
        return sum(1 for link in self._links if not link.silenced)

    @property
    def silent(self) -> int:
        """Silenced connections not yet closed by both of their sides."""
        return sum(1 for link in self._links if link.silenced)

    @property
    def blackholed(self) -> bool:
        return self._blackholed

    @property
    def blocked(self) -> bool:
        return self._blocked

    # --- controls ----------------------------------------------------------------------

    def cut(self) -> int:
        """Abort every current connection; returns how many were cut."""
        links = list(self._links)
        for link in links:
            link.abort()
        self.counters.cuts += 1
        self.counters.cut_connections += len(links)
        log.info("%s: cut %d connections", self.name, len(links))
        return len(links)

    def block(self, seconds: float | None = None, *, hold: bool = False) -> None:
        """Refuse new connections (accept and reset them at once), or with `hold` keep them
        waiting unforwarded, until `unblock()` or for `seconds`. Current ones are untouched."""
        self._blocked, self._hold = True, hold
        self._unblocked.clear()
        if self._unblock_timer is not None:
            self._unblock_timer.cancel()
            self._unblock_timer = None
        if seconds is not None:
            self._unblock_timer = asyncio.get_running_loop().call_later(seconds, self.unblock)

    def unblock(self) -> None:
        self._blocked = False
        self._unblocked.set()
        if self._unblock_timer is not None:
            self._unblock_timer.cancel()
            self._unblock_timer = None

    def blackhole(self) -> int:
        """Stop forwarding, silently: every current connection is silenced for good, and new
        ones are accepted and silenced, until `heal()`. Nothing is closed or reset. Returns how
        many current connections were silenced."""
        self._blackholed = True
        self.counters.blackholes += 1
        links = [link for link in self._links if not link.silenced]
        for link in links:
            link.silenced = True
        self.counters.silenced += len(links)
        log.info("%s: blackhole, %d connections silenced", self.name, len(links))
        return len(links)

    def pause(self) -> None:
        """Hold every byte read from now on, in both directions and on every connection:
        nothing forwarded, nothing dropped, until `resume()` forwards it all in order (or a
        `blackhole()` drops it). A test uses it to look at one side while nothing moves."""
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    def heal(self) -> None:
        """New connections are forwarded again; the silenced ones stay silent."""
        self._blackholed = False
        log.info("%s: healed, %d connections stay silent", self.name, self.silent)

    def delay(self, ms: float) -> None:
        """Hold every chunk read from now on this long before forwarding it (0: no delay)."""
        self._delay_s = max(0.0, ms) / 1000

    # --- forwarding --------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            await self._serve(reader, writer)
        except Exception:  # never let a connection's trouble escape into the event loop
            log.debug("%s: connection ended with an error", self.name, exc_info=True)
        finally:
            writer.transport.abort()
            if task is not None:
                self._tasks.discard(task)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._blocked:
            if not self._hold:
                self.counters.refused += 1
                return
            self.counters.held += 1
            await self._unblocked.wait()
            if self._closing:
                return
        if self._blackholed:
            await self._swallow(reader, _Link(writer, None))
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError as exc:
            log.info("%s: target unreachable: %s", self.name, exc)
            return
        link = _Link(writer, up_writer)
        self._links.add(link)
        self.counters.connections += 1
        try:
            await asyncio.gather(
                self._pipe(reader, up_writer, link), self._pipe(up_reader, writer, link)
            )
        finally:
            self._links.discard(link)
            link.abort()

    async def _swallow(self, reader: asyncio.StreamReader, link: _Link) -> None:
        """A connection accepted during a blackhole: held open, its bytes dropped, until its
        client closes it."""
        self._links.add(link)
        self.counters.silenced += 1
        try:
            while data := await reader.read(CHUNK):
                self.counters.dropped_bytes += len(data)
        except OSError:
            pass
        finally:
            self._links.discard(link)

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, link: _Link
    ) -> None:
        """Forward one direction; a chunk read at t leaves at t + the delay at the time. Once
        the link is silenced, drop what is read (also what waits for its delay), and do not
        pass on the end of the stream."""
        chunks: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(QUEUE_CHUNKS)

        async def read() -> None:
            try:
                while data := await reader.read(CHUNK):
                    if link.silenced:
                        self.counters.dropped_bytes += len(data)
                    else:
                        await chunks.put((time.monotonic() + self._delay_s, data))
            except OSError:
                pass
            await chunks.put((0.0, b""))

        reading = asyncio.create_task(read())
        try:
            while True:
                due, data = await chunks.get()
                if not data:
                    break
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                await self._flowing.wait()
                if link.silenced:
                    self.counters.dropped_bytes += len(data)
                    continue
                writer.write(data)
                await writer.drain()
            if not link.silenced and writer.can_write_eof():
                writer.write_eof()
        except OSError:
            link.abort()  # one side is gone: take the other down too, as a cut would
        finally:
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reading

    async def close(self) -> None:
        self._closing = True
        self.unblock()
        self.resume()
        if self._server is not None:
            self._server.close()
        for link in list(self._links):
            link.abort()
        # Aborted, the connections end by themselves. Only a connection task that does not
        # is cancelled: asyncio (3.11) logs an error for a cancelled connection callback.
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=CLOSE_WAIT_S)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None


class Proxies:
    """The proxies of one test, each in front of the service a URL names."""

    def __init__(self) -> None:
        self.made: list[TcpProxy] = []

    async def to(self, url: str, name: str) -> TcpProxy:
        proxy = await TcpProxy.for_url(url, name=name)
        self.made.append(proxy)
        return proxy

    async def close(self) -> None:
        for proxy in self.made:
            await proxy.close()
