"""The event service: a WebSocket server where clients subscribe to contexts.

Each connection authenticates with a token at the opening handshake (an
``Authorization: Bearer`` header or a ``token`` query parameter), then sends
``context.subscribe`` and ``context.unsubscribe`` frames. Events published
through the backplane reach every local connection that holds the context.

The bookkeeping lives in ``SubscriptionTable`` and the frame parsing in
``protocol``; this module only moves frames between sockets and them.
A frame the server rejects gets an ``error`` frame and the socket stays
open; a frame larger than ``max_frame_bytes`` closes it with code 1009.
"""

from __future__ import annotations

import asyncio
import http
import itertools
import logging
import urllib.parse
import weakref
from collections.abc import Callable
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from kilo_web.event_service import protocol
from kilo_web.event_service.backplane import Backplane, InMemoryBackplane
from kilo_web.event_service.refcount import SubscriptionTable
from kilo_web.event_service.tokens import InvalidToken, TokenClaims, decode_token

logger = logging.getLogger(__name__)

MAX_CONTEXTS_PER_CONNECTION = 1000
"""Most contexts one connection may hold at once."""

FrameObserver = Callable[[int, protocol.ClientFrame], None]
"""Called with the connection id and each client frame the server accepted."""


def _bearer_token(request: Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    query = urllib.parse.urlsplit(request.path).query
    values = urllib.parse.parse_qs(query).get("token")
    return values[0] if values else None


class _SessionLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """Prefix each message with the connection id and the user id."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        extra = self.extra or {}
        return f"connection {extra.get('connection_id')} user {extra.get('user_id')}: {msg}", kwargs


class _Session:
    """One authenticated connection: its id, its user and its socket."""

    __slots__ = ("connection", "id", "claims", "log")

    def __init__(self, session_id: int, connection: ServerConnection, claims: TokenClaims):
        self.id = session_id
        self.connection = connection
        self.claims = claims
        self.log = _SessionLog(logger, {"connection_id": session_id, "user_id": claims.user_id})


class EventServiceServer:
    """Serve wire protocol v1 on ``host``:``port`` until ``close()``.

    ``port=0`` picks a free port; read it from ``port`` after ``start()``.
    Use as ``async with EventServiceServer(...) as server:`` or call
    ``start()`` and ``close()``.
    """

    def __init__(
        self,
        *,
        secret: str,
        host: str = "127.0.0.1",
        port: int = 0,
        backplane: Backplane | None = None,
        max_frame_bytes: int = 65536,
        max_contexts_per_connection: int = MAX_CONTEXTS_PER_CONNECTION,
        ping_interval: float | None = 20.0,
        ping_timeout: float | None = 20.0,
        frame_observer: FrameObserver | None = None,
    ) -> None:
        self._secret = secret
        self._host = host
        self._requested_port = port
        self.backplane: Backplane = backplane if backplane is not None else InMemoryBackplane()
        self._max_frame_bytes = max_frame_bytes
        self._max_contexts_per_connection = max_contexts_per_connection
        self._ping_interval = ping_interval
        self._ping_timeout = ping_timeout
        self._frame_observer = frame_observer

        self._table: SubscriptionTable[int] = SubscriptionTable()
        self._sessions: dict[int, _Session] = {}
        # Claims verified at the handshake, until the handler takes them.
        self._claims: weakref.WeakKeyDictionary[ServerConnection, TokenClaims] = (
            weakref.WeakKeyDictionary()
        )
        self._ids = itertools.count(1)
        self._server: Server | None = None
        self._remove_receiver: Callable[[], None] | None = None

    # Life cycle -------------------------------------------------------------

    async def start(self) -> None:
        """Bind the socket and start accepting connections."""
        if self._server is not None:
            return
        self._remove_receiver = self.backplane.add_receiver(self._deliver)
        self._server = await serve(
            self._handle,
            self._host,
            self._requested_port,
            process_request=self._authenticate,
            max_size=self._max_frame_bytes,
            ping_interval=self._ping_interval,
            ping_timeout=self._ping_timeout,
        )
        logger.info("event service listening on %s", self.url)

    async def close(self) -> None:
        """Close every connection with code 1001 and stop listening."""
        if self._server is None:
            return
        server, self._server = self._server, None
        server.close(close_connections=True)
        await server.wait_closed()
        if self._remove_receiver is not None:
            self._remove_receiver()
            self._remove_receiver = None
        logger.info("event service stopped")

    async def __aenter__(self) -> EventServiceServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def port(self) -> int:
        """The TCP port the server listens on."""
        if self._server is None:
            raise RuntimeError("the event service is not started; call start() first")
        return self._server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        """The ``ws://`` URL of the server."""
        return f"ws://{self._host}:{self.port}"

    # Publishing -------------------------------------------------------------

    async def publish(self, context: str, event: str, data: dict[str, Any]) -> None:
        """Publish ``event`` to ``context`` through the backplane."""
        await self.backplane.publish(context, event, data)

    def _deliver(self, context: str, event: str, data: dict[str, Any]) -> None:
        holders = self._table.holders(context)
        if not holders:
            return
        message = protocol.encode(protocol.Event(context=context, event=event, data=data))
        # NOTE: broadcast() applies no backpressure; a client that reads slower
        # than events arrive buffers them until the ping timeout drops it.
        broadcast((self._sessions[i].connection for i in holders), message)

    # Introspection ----------------------------------------------------------

    def subscriptions_of(self, user_id: str) -> dict[str, int]:
        """Return each context held by ``user_id`` with the number of their connections holding it."""
        counts: dict[str, int] = {}
        for session in self._sessions.values():
            if session.claims.user_id != user_id:
                continue
            for context in self._table.contexts_of(session.id):
                counts[context] = counts.get(context, 0) + 1
        return counts

    def connection_count(self, user_id: str | None = None) -> int:
        """Return the number of open connections, of one user or of all."""
        if user_id is None:
            return len(self._sessions)
        return sum(1 for s in self._sessions.values() if s.claims.user_id == user_id)

    def connection_ids(self, user_id: str) -> list[int]:
        """Return the ids of the open connections of ``user_id``."""
        return [s.id for s in self._sessions.values() if s.claims.user_id == user_id]

    def contexts(self) -> list[str]:
        """Return every context some connection holds."""
        return self._table.contexts()

    async def disconnect(
        self,
        user_id: str | None = None,
        *,
        connection_id: int | None = None,
        code: int = protocol.CloseCode.SERVICE_RESTART,
        reason: str = "disconnected by the server",
    ) -> int:
        """Close the connections of one user, one connection, or all; return how many."""
        sessions = [
            session
            for session in list(self._sessions.values())
            if (user_id is None or session.claims.user_id == user_id)
            and (connection_id is None or session.id == connection_id)
        ]
        for session in sessions:
            session.log.info("closing the connection with code %d: %s", code, reason)
            await session.connection.close(code, reason)
        return len(sessions)

    # Connections ------------------------------------------------------------

    def _authenticate(self, connection: ServerConnection, request: Request) -> Response | None:
        token = _bearer_token(request)
        if token is None:
            return self._reject(
                connection, "missing token: send 'Authorization: Bearer <token>' or ?token="
            )
        try:
            claims = decode_token(self._secret, token)
        except InvalidToken as exc:
            logger.info("handshake rejected from %s: %s", connection.remote_address, exc)
            return self._reject(connection, str(exc))
        self._claims[connection] = claims
        return None

    @staticmethod
    def _reject(connection: ServerConnection, reason: str) -> Response:
        response = connection.respond(http.HTTPStatus.UNAUTHORIZED, reason + "\n")
        response.headers["WWW-Authenticate"] = 'Bearer realm="kilo_web"'
        return response

    async def _handle(self, connection: ServerConnection) -> None:
        claims = self._claims.pop(connection)
        session = _Session(next(self._ids), connection, claims)
        self._sessions[session.id] = session
        session.log.info("connection opened (source %s)", claims.token_source)
        try:
            async for message in connection:
                await self._receive(session, message)
        except ConnectionClosed:
            pass
        finally:
            del self._sessions[session.id]
            stopped = self._table.drop(session.id)
            for context in stopped:
                await self.backplane.unwatch(context)
            session.log.info(
                "connection closed (code %s)",
                connection.close_code,
            )

    async def _receive(self, session: _Session, message: str | bytes) -> None:
        try:
            frame = protocol.parse_client_frame(message)
        except protocol.ProtocolError as exc:
            session.log.info("frame rejected: %s (%s)", exc.code.value, exc.message)
            await self._send(session, protocol.error_frame(exc))
            return

        if self._frame_observer is not None:
            self._frame_observer(session.id, frame)

        if isinstance(frame, protocol.Subscribe):
            await self._subscribe(session, frame)
        else:
            await self._unsubscribe(session, frame)

    async def _subscribe(self, session: _Session, frame: protocol.Subscribe) -> None:
        held = self._table.contexts_of(session.id)
        new = [c for c in frame.contexts if c not in held]
        if len(held) + len(new) > self._max_contexts_per_connection:
            await self._send(
                session,
                protocol.Error(
                    code=protocol.ErrorCode.TOO_MANY_CONTEXTS.value,
                    message=(
                        f"this connection holds {len(held)} contexts and may hold at most "
                        f"{self._max_contexts_per_connection}; unsubscribe some first"
                    ),
                    frame_type=frame.type,
                ),
            )
            return
        started = self._table.subscribe(session.id, frame.contexts)
        for context in started:
            await self.backplane.watch(context)
        await self._send(session, protocol.Subscribed(contexts=frame.contexts))

    async def _unsubscribe(self, session: _Session, frame: protocol.Unsubscribe) -> None:
        stopped = self._table.unsubscribe(session.id, frame.contexts)
        for context in stopped:
            await self.backplane.unwatch(context)
        await self._send(session, protocol.Unsubscribed(contexts=frame.contexts))

    @staticmethod
    async def _send(session: _Session, frame: protocol.ServerFrame) -> None:
        try:
            await session.connection.send(protocol.encode(frame))
        except ConnectionClosed:
            # The reader loop sees the close and cleans up.
            pass


async def run_server(server: EventServiceServer) -> None:
    """Run ``server`` until the task is cancelled."""
    await server.start()
    try:
        await asyncio.Future()
    finally:
        await server.close()
