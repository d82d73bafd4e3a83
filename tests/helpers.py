"""Helpers shared by test folders: free loopback ports, a rule-based authorizer and a
proxy that cuts connections."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class RuleAuthorizer:
    """An authorizer whose answers the test sets: versions, denials, visibility.

    Every user exists with token version 0 unless ``versions`` says otherwise;
    contexts under ``/forbidden`` and the pairs in ``denied`` are refused.
    """

    def __init__(self) -> None:
        self.versions: dict[str, int | None] = {}
        self.denied: set[tuple[str, str]] = set()
        self.visibility: dict[str, set[str]] = {}

    async def token_version(self, user_id: str) -> int | None:
        return self.versions.get(user_id, 0)

    async def forbidden_contexts(self, user_id: str, contexts) -> list[str]:
        return [
            context for context in contexts
            if context.startswith("/forbidden") or (user_id, context) in self.denied
        ]

    async def visible_users(self, user_id: str) -> frozenset[str]:
        return frozenset(self.visibility.get(user_id, ()))


class CuttingProxy:
    """A loopback TCP proxy, run in the caller's event loop, that can cut every connection.

    Clients connect to ``port``; each new connection is relayed to
    ``target_port``, which a load balancer's test may change between
    connections. ``cut()`` closes relayed connections at once, as a network
    drop would, and new connections are accepted again right away.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.cuts = 0
        self.accepted = 0
        self.blocked = False
        """While True, new connections are closed at once, as by a host that is down."""
        self._server: asyncio.Server | None = None
        # Both ends of each relayed connection, with the port it went to.
        self._open: dict[asyncio.StreamWriter, int] = {}

    @property
    def port(self) -> int:
        assert self._server is not None, "start() the proxy first"
        return self._server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        """The proxy as an event-service URL."""
        return f"ws://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.blocked:
            transport = writer.transport
            if transport is not None:
                transport.abort()
            return
        self.accepted += 1
        target = self.target_port
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", target)
        except OSError:
            writer.close()
            return
        self._open.update({writer: target, upstream_writer: target})

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                sink.close()

        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))
        self._open.pop(writer, None)
        self._open.pop(upstream_writer, None)

    def cut(self, *, keep_port: int | None = None) -> None:
        """Drop relayed connections without a closing handshake, but those to ``keep_port``."""
        self.cuts += 1
        for writer, target in list(self._open.items()):
            if target == keep_port:
                continue
            transport = writer.transport
            if transport is not None:
                transport.abort()
            del self._open[writer]

    def block(self) -> None:
        """Cut every connection and refuse new ones until ``unblock()``."""
        self.blocked = True
        self.cut()

    def unblock(self) -> None:
        self.blocked = False

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


class ProxyThread:
    """A CuttingProxy on an event loop of its own thread, for synchronous tests."""

    def __init__(self, target_port: int) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.proxy = CuttingProxy(target_port)
        asyncio.run_coroutine_threadsafe(self.proxy.start(), self.loop).result(10)

    def call(self, method: Callable[[], object]) -> None:
        """Run ``method`` (a proxy operation) on the proxy's loop and wait until it ran."""

        async def run() -> None:
            method()

        asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._shut_down(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    async def _shut_down(self) -> None:
        await self.proxy.close()
        # Let the relays finish, so none is left pending when the loop stops.
        relays = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in relays:
            task.cancel()
        await asyncio.gather(*relays, return_exceptions=True)
