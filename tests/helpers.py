"""Helpers shared by test folders: free loopback ports, a rule-based authorizer and a
proxy that cuts connections."""

from __future__ import annotations

import asyncio
import socket


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

    Clients connect to ``port``; each connection is relayed to
    ``target_port``. ``cut()`` closes every relayed connection at once, as a
    network drop would; new connections are accepted again right away.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.cuts = 0
        self.accepted = 0
        self.blocked = False
        """While True, new connections are closed at once, as by a host that is down."""
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()

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
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(
                "127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._open.update((writer, upstream_writer))

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
        self._open.difference_update((writer, upstream_writer))

    def cut(self) -> None:
        """Drop every relayed connection without a closing handshake."""
        self.cuts += 1
        for writer in list(self._open):
            transport = writer.transport
            if transport is not None:
                transport.abort()
        self._open.clear()

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
