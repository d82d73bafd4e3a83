"""The servers under test, each run as a worker agent in a process of its own.

- ``KiloServerAgent``: kilo_web's ``EventServiceServer`` with an
  ``InMemoryBackplane`` and an authorizer that allows everything. Events are
  published from inside the process through ``server.publish``, which goes
  through the backplane as the chat service's publishes do.
- ``BareServerAgent``: the ceiling of the stack. A ``websockets`` server
  that keeps an insertion-ordered room per context and sends each event
  with ``websockets.broadcast``. It takes the same subscribe frames and
  sends the same event frames as kilo_web, and does nothing else.
- ``SioServerAgent``: a python-socketio ``AsyncServer`` in ASGI mode under
  uvicorn, WebSocket transport only and ``async_handlers=False``, as
  Reflex 0.10 configures it. Events go out with ``emit(..., room=context)``.

Every agent has the same publishing commands, so the driver can load any of
them the same way.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import socket
import time
from collections.abc import Iterable
from typing import Any

logger = logging.getLogger(__name__)

EVENT_NAME = "bench"
_PAYLOAD_OVERHEAD = len('{"t":') + 16 + len(',"pad":""}')


def padding_for(size: int) -> str:
    """Return the padding that makes the JSON of ``{"t": ..., "pad": ...}`` about ``size`` bytes."""
    return "x" * max(0, size - _PAYLOAD_OVERHEAD)


def loopback_listener(backlog: int = 1024) -> socket.socket:
    """Return a listening TCP socket on 127.0.0.1 with a free port.

    The protocol is named explicitly: asyncio sets TCP_NODELAY only on
    sockets whose ``proto`` is IPPROTO_TCP, and ``socket.socket()`` leaves it
    0, which would leave Nagle's algorithm on for every accepted connection.
    """
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(backlog)
    return listener


class PermissiveAuthorizer:
    """An event-service ``Authorizer`` that accepts every user and allows every context."""

    async def token_version(self, user_id: str) -> int | None:
        return 0

    async def forbidden_contexts(self, user_id: str, contexts: Iterable[str]) -> list[str]:
        return []

    async def visible_users(self, user_id: str) -> frozenset[str]:
        return frozenset()


class _Publishing:
    """Publishing commands shared by the agents; subclasses define ``_publish``."""

    async def _publish(self, context: str, data: dict[str, Any]) -> None:
        raise NotImplementedError

    async def cmd_publish_burst(self, context: str, count: int, size: int) -> dict[str, Any]:
        """Publish ``count`` events back to back, yielding to the loop after each."""
        pad = padding_for(size)
        start = time.monotonic_ns()
        for _ in range(count):
            await self._publish(context, {"t": time.monotonic_ns(), "pad": pad})
            # Let the loop flush write buffers and read acknowledgements.
            await asyncio.sleep(0)
        return {"start_ns": start, "end_ns": time.monotonic_ns()}

    async def cmd_publish_paced(
        self, context: str, rate: float, seconds: float, size: int
    ) -> dict[str, Any]:
        """Publish ``rate`` events a second for ``seconds``; report how late the schedule ran."""
        pad = padding_for(size)
        loop = asyncio.get_running_loop()
        interval = 1.0 / rate
        count = max(1, int(rate * seconds))
        due = loop.time()
        max_lag = 0.0
        start = time.monotonic_ns()
        for _ in range(count):
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                max_lag = max(max_lag, -delay)
            await self._publish(context, {"t": time.monotonic_ns(), "pad": pad})
            due += interval
        return {
            "published": count,
            "start_ns": start,
            "end_ns": time.monotonic_ns(),
            "max_lag_seconds": max_lag,
        }

    async def cmd_publish_for(self, context: str, seconds: float, size: int) -> dict[str, Any]:
        """Publish back to back for ``seconds``, as ``publish_burst`` does; for profiling."""
        pad = padding_for(size)
        deadline = time.monotonic() + seconds
        count = 0
        while time.monotonic() < deadline:
            await self._publish(context, {"t": time.monotonic_ns(), "pad": pad})
            await asyncio.sleep(0)
            count += 1
        return {"published": count}

    async def cmd_gc(self) -> dict[str, Any]:
        """Run a full garbage collection, so a following RSS reading is steadier."""
        import gc

        gc.collect()
        await asyncio.sleep(0.2)
        return {}


class KiloServerAgent(_Publishing):
    """kilo_web's event service with an in-memory backplane, or Redis with ``redis_url``.

    ``server_options`` go to ``EventServiceServer`` as keyword arguments.
    Nodes that share ``redis_url`` and ``redis_prefix`` form one cluster.
    """

    def __init__(
        self,
        *,
        secret: str,
        compression: bool = True,
        server_options: dict[str, Any] | None = None,
        redis_url: str | None = None,
        redis_prefix: str = "kilo-bench:",
    ) -> None:
        self._secret = secret
        self._compression = compression
        self._server_options = server_options or {}
        self._redis_url = redis_url
        self._redis_prefix = redis_prefix
        self.server: Any = None

    async def start(self) -> dict[str, Any]:
        from kilo_web.event_service import server as server_module
        from kilo_web.event_service.backplane import Backplane, InMemoryBackplane

        backplane: Backplane
        if self._redis_url is None:
            backplane = InMemoryBackplane()
        else:
            from kilo_web.event_service.redis_backplane import RedisBackplane

            backplane = RedisBackplane(self._redis_url, prefix=self._redis_prefix)
            await backplane.ping()
        self.server = server_module.EventServiceServer(
            secret=self._secret,
            authorizer=PermissiveAuthorizer(),
            backplane=backplane,
            port=0,
            compression="deflate" if self._compression else None,
            **self._server_options,
        )
        await self.server.start()
        return {"port": self.server.port}

    async def close(self) -> None:
        if self.server is not None:
            await self.server.close()
            if self._redis_url is not None:
                await self.server.backplane.close()

    async def _publish(self, context: str, data: dict[str, Any]) -> None:
        await self.server.publish(context, EVENT_NAME, data)


class BareServerAgent(_Publishing):
    """A bare ``websockets`` server: rooms of connections and ``broadcast``."""

    def __init__(self, *, compression: bool = True) -> None:
        self._compression = compression
        self._rooms: dict[str, dict[Any, None]] = {}
        self._seq: dict[str, int] = {}
        self._server: Any = None

    async def start(self) -> dict[str, Any]:
        from websockets.asyncio.server import serve

        self._server = await serve(
            self._handle, "127.0.0.1", 0, compression="deflate" if self._compression else None
        )
        return {"port": self._server.sockets[0].getsockname()[1]}

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, connection: Any) -> None:
        from websockets.exceptions import ConnectionClosed

        held: set[str] = set()
        try:
            async for message in connection:
                frame = json.loads(message)
                contexts = frame["contexts"]
                if frame["type"] == "context.subscribe":
                    for context in contexts:
                        self._rooms.setdefault(context, {})[connection] = None
                        held.add(context)
                    reply = {"type": "context.subscribed", "contexts": contexts}
                else:
                    for context in contexts:
                        self._leave(context, connection)
                        held.discard(context)
                    reply = {"type": "context.unsubscribed", "contexts": contexts}
                await connection.send(json.dumps(reply, separators=(",", ":")))
        except ConnectionClosed:
            pass
        finally:
            for context in held:
                self._leave(context, connection)

    def _leave(self, context: str, connection: Any) -> None:
        room = self._rooms.get(context)
        if room is not None:
            room.pop(connection, None)
            if not room:
                del self._rooms[context]

    async def _publish(self, context: str, data: dict[str, Any]) -> None:
        from websockets.asyncio.server import broadcast

        seq = self._seq.get(context, 0) + 1
        self._seq[context] = seq
        frame = json.dumps(
            {"type": "event", "context": context, "event": EVENT_NAME, "data": data, "seq": seq},
            separators=(",", ":"),
            ensure_ascii=False,
        )
        room = self._rooms.get(context)
        if room:
            broadcast(room, frame)


class SioServerAgent(_Publishing):
    """python-socketio over uvicorn, configured as Reflex 0.10 configures it."""

    def __init__(self, *, compression: bool = True) -> None:
        self._compression = compression
        self._sio: Any = None
        self._uvicorn: Any = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> dict[str, Any]:
        import socketio
        import uvicorn

        sio = socketio.AsyncServer(
            async_mode="asgi",
            cors_allowed_origins="*",
            transports=["websocket"],
            allow_upgrades=False,
            async_handlers=False,
        )

        @sio.on("subscribe")
        async def subscribe(sid: str, context: str) -> bool:
            await sio.enter_room(sid, context)
            return True

        self._sio = sio
        listener = loopback_listener()
        config = uvicorn.Config(
            socketio.ASGIApp(sio),
            log_level="warning",
            lifespan="off",
            ws="websockets-sansio",
            ws_per_message_deflate=self._compression,
            backlog=1024,
        )
        self._uvicorn = uvicorn.Server(config)
        self._task = asyncio.get_running_loop().create_task(self._uvicorn.serve([listener]))
        while not self._uvicorn.started:
            if self._task.done():
                self._task.result()
            await asyncio.sleep(0.01)
        return {"port": listener.getsockname()[1]}

    async def close(self) -> None:
        if self._uvicorn is not None and self._task is not None:
            self._uvicorn.should_exit = True
            await asyncio.wait([self._task], timeout=10)

    async def _publish(self, context: str, data: dict[str, Any]) -> None:
        await self._sio.emit(EVENT_NAME, data, room=context)


SERVER_AGENTS = {
    "kilo": "bench.servers:KiloServerAgent",
    "ws": "bench.servers:BareServerAgent",
    "sio": "bench.servers:SioServerAgent",
}
"""Agent of each server under test, by the dialect its clients speak."""
