"""The event service: a WebSocket server where clients subscribe to contexts.

Each connection authenticates with a token at the opening handshake (an
``Authorization: Bearer`` header or a ``token`` query parameter), then sends
``context.subscribe``, ``context.unsubscribe`` and ``auth.refresh`` frames.
Events published through the backplane reach every local connection that
holds the context, numbered by the context's stream so a client that
reconnects can ask for what it missed.

The bookkeeping lives in pure modules (``refcount``, ``presence``,
``history``, ``limits``) and the parsing in ``protocol``; this module moves
frames between sockets and them and runs the timers. Frames for one
connection are written without an ``await`` between deciding and writing,
so replays, presence state and live events reach a client in stream order.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import http
import itertools
import logging
import urllib.parse
import weakref
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from kilo_web.event_service import protocol
from kilo_web.event_service.access import Authorizer
from kilo_web.event_service.backplane import Backplane, InMemoryBackplane
from kilo_web.event_service.contexts import (
    PLATFORM_PRESENCE_CONTEXT,
    InvalidContextError,
    is_presence_context,
    user_context,
)
from kilo_web.event_service.control import (
    ACCESS_REVOKED_COMMAND,
    CONTROL_CONTEXT,
    TOKENS_REVOKED_EVENT,
    AccessRevoked,
    InvalidCommandError,
    is_system_context,
)
from kilo_web.event_service.history import ContextStream
from kilo_web.event_service.limits import TokenBucket
from kilo_web.event_service.cluster_presence import ClusterPresence
from kilo_web.event_service.presence import JOIN, LEAVE, STATE, PresenceDiff, PresenceTracker
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


def _forbidden_hint(contexts: Iterable[str]) -> str:
    """Say what would make the forbidden ``contexts`` allowed, if anything."""
    hints: list[str] = []
    for context in contexts:
        if is_system_context(context):
            hint = "contexts under /_system belong to the event-service nodes"
        elif context.startswith("/users/"):
            hint = "a /users/{id} context belongs to that user alone"
        else:
            hint = "join the instance or conversation first"
        if hint not in hints:
            hints.append(hint)
    return " and ".join(hints)


class _Connection(ServerConnection):
    """A server connection that reports when its write buffer passes the high-water mark.

    asyncio calls ``pause_writing`` from ``transport.write`` once the unsent
    bytes pass the limit set with ``write_limit``. Reacting there costs
    nothing per event, where asking every connection for its buffer size
    before each send would.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.overflow_server: EventServiceServer | None = None
        self.overflow_session: _Session | None = None

    def pause_writing(self) -> None:
        super().pause_writing()
        if self.overflow_server is not None and self.overflow_session is not None:
            self.overflow_server._overflow(self.overflow_session)


class _Session:
    """One authenticated connection and what the server tracks for it."""

    __slots__ = (
        "connection", "id", "claims", "bucket", "expiry", "visible", "limited_at", "slow",
        "subscribing", "revoked_while_subscribing",
    )

    def __init__(
        self, session_id: int, connection: ServerConnection, claims: TokenClaims, bucket: TokenBucket
    ) -> None:
        self.id = session_id
        self.connection = connection
        self.claims = claims
        self.bucket = bucket
        self.expiry: asyncio.TimerHandle | None = None
        self.visible: frozenset[str] = frozenset()
        """Users this connection may see on the platform presence tier."""
        self.limited_at = float("-inf")
        self.slow = False
        """Set once the connection fell too far behind; nothing more is sent to it."""
        self.subscribing: frozenset[str] = frozenset()
        """Contexts of the subscribe frame being handled, which awaits the authorizer."""
        # Empty frozensets are one shared object, so idle connections pay nothing for these.
        self.revoked_while_subscribing: frozenset[str] = frozenset()
        """Contexts of ``subscribing`` whose access was revoked before the frame took effect."""

    @property
    def log(self) -> _SessionLog:
        """A logger that names the connection and the user.

        Made on each use: connections log rarely, and keeping one per
        connection would cost memory on every idle one.
        """
        return _SessionLog(logger, {"connection_id": self.id, "user_id": self.claims.user_id})

    @property
    def user_id(self) -> str:
        return self.claims.user_id


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
        authorizer: Authorizer,
        host: str = "127.0.0.1",
        port: int = 0,
        backplane: Backplane | None = None,
        max_frame_bytes: int = 65536,
        max_contexts_per_connection: int = MAX_CONTEXTS_PER_CONNECTION,
        max_frames_per_second: float = 50.0,
        frame_burst: int = 200,
        presence_grace_seconds: float = 5.0,
        history_size: int = 500,
        history_linger_seconds: float = 60.0,
        ping_interval: float | None = 20.0,
        ping_timeout: float | None = 20.0,
        close_timeout: float = 5.0,
        frame_observer: FrameObserver | None = None,
        cluster: ClusterPresence | None = None,
        max_buffered_bytes: int = 1 << 20,
        user_subscribe_rate: float = 50.0,
        user_subscribe_burst: int = 1000,
        compression: str | None = None,
    ) -> None:
        self._secret = secret
        self._authorizer = authorizer
        self._host = host
        self._requested_port = port
        self.backplane: Backplane = backplane if backplane is not None else InMemoryBackplane()
        self._max_frame_bytes = max_frame_bytes
        self._max_contexts_per_connection = max_contexts_per_connection
        self._max_frames_per_second = max_frames_per_second
        self._frame_burst = frame_burst
        self._history_size = history_size
        self._history_linger = history_linger_seconds
        self._ping_interval = ping_interval
        self._ping_timeout = ping_timeout
        self._close_timeout = close_timeout
        self._frame_observer = frame_observer
        self._cluster = cluster
        self._max_buffered = max_buffered_bytes
        self._user_subscribe_rate = user_subscribe_rate
        self._user_subscribe_burst = user_subscribe_burst
        self._user_buckets: dict[str, TokenBucket] = {}
        # permessage-deflate costs about 40 KiB of memory per connection for
        # its compression state (docs/benchmarks.md), and events are small
        # JSON, so it is off unless asked for with compression="deflate".
        self._compression = compression
        # Presence entries this node wrote to Redis: (context, user) -> connection ids.
        self._cluster_entries: dict[tuple[str, str], set[int]] = {}
        self._heartbeat: asyncio.Task[None] | None = None

        self._table: SubscriptionTable[int] = SubscriptionTable()
        self._presence: PresenceTracker[int] = PresenceTracker(grace_seconds=presence_grace_seconds)
        self._streams: dict[str, ContextStream] = {}
        self._lingering: dict[str, asyncio.TimerHandle] = {}
        self._leave_timer: asyncio.TimerHandle | None = None
        self._sessions: dict[int, _Session] = {}
        # The open connections holding each context, built on the first event
        # after the holders change, so a delivery is one call to broadcast.
        self._rooms: dict[str, list[ServerConnection]] = {}
        # Claims verified at the handshake, until the handler takes them.
        self._claims: weakref.WeakKeyDictionary[ServerConnection, TokenClaims] = (
            weakref.WeakKeyDictionary()
        )
        self._ids = itertools.count(1)
        self._server: Server | None = None
        self._remove_receiver: Callable[[], None] | None = None
        # Background tasks (revocations, unwatches), kept so they are not collected mid-run.
        self._control_tasks: set[asyncio.Future[Any]] = set()
        self._watches: dict[str, asyncio.Future[None]] = {}

    # Life cycle -------------------------------------------------------------

    async def start(self) -> None:
        """Bind the socket and start accepting connections."""
        if self._server is not None:
            return
        self._remove_receiver = self.backplane.add_receiver(self._deliver)
        await self.backplane.watch(CONTROL_CONTEXT)
        if self._cluster is not None:
            await self._publish_cluster_leaves(await self._cluster.clear_node())
            self._heartbeat = asyncio.get_running_loop().create_task(self._beat())
        self._server = await serve(
            self._handle,
            self._host,
            self._requested_port,
            process_request=self._authenticate,
            max_size=self._max_frame_bytes,
            ping_interval=self._ping_interval,
            ping_timeout=self._ping_timeout,
            # A peer that stops replying to pings will not complete the closing
            # handshake either, so this bounds how long its presence outlives it.
            close_timeout=self._close_timeout,
            compression=self._compression,
            create_connection=_Connection,
            # The transport pauses writing past this many unsent bytes, which
            # signals that the client stopped reading (see _overflow).
            write_limit=self._max_buffered,
        )
        logger.info("event service listening on %s", self.url)

    async def close(self) -> None:
        """Close every connection with code 1001 and stop listening."""
        if self._server is None:
            return
        server, self._server = self._server, None
        server.close(close_connections=True)
        await server.wait_closed()
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            self._heartbeat = None
        if self._cluster is not None:
            # Leave at once instead of after the time to live.
            try:
                await self._publish_cluster_leaves(await self._cluster.clear_node())
            except Exception:
                logger.exception("clearing this node's presence entries failed")
            self._cluster_entries.clear()
        if self._remove_receiver is not None:
            self._remove_receiver()
            self._remove_receiver = None
            await self.backplane.unwatch(CONTROL_CONTEXT)
        for handle in self._lingering.values():
            handle.cancel()
        self._lingering.clear()
        if self._leave_timer is not None:
            self._leave_timer.cancel()
            self._leave_timer = None
        # Pending leaves are dropped unsent, because no connection is left to
        # receive them, and the tracker must not carry them into a restart.
        self._presence.expire(now=float("inf"))
        self._streams.clear()
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
        """Number an event from the backplane and send it to the context's holders."""
        if context == CONTROL_CONTEXT:
            self._control(event, data)
            return
        if self._cluster is not None and event in (JOIN, LEAVE) and is_presence_context(context):
            user_id = data.get("userId")
            if isinstance(user_id, str):
                self._publish_presence(PresenceDiff(context, event, user_id))
            return
        stream = self._streams.get(context)
        if stream is None:
            return
        if event in protocol.EPHEMERAL_EVENTS:
            frame = protocol.encode_ephemeral(context, event, data)
        else:
            _, frame = stream.append(lambda seq: protocol.encode_event(context, event, data, seq))
        room = self._rooms.get(context)
        if room is None:
            room = self._rooms[context] = self._room(context)
        if room:
            broadcast(room, frame)

    def _room(self, context: str) -> list[ServerConnection]:
        """List the connections that events on ``context`` go to, oldest first."""
        sessions = (self._sessions[i] for i in sorted(self._table.holders(context)))
        return [s.connection for s in sessions if not s.slow]

    def _forget_rooms(self, contexts: Iterable[str]) -> None:
        """Drop the cached rooms of ``contexts`` after their holders changed."""
        for context in contexts:
            self._rooms.pop(context, None)

    def _control(self, event: str, data: dict[str, Any]) -> None:
        """Act on a command from the application (see ``control``)."""
        if event == TOKENS_REVOKED_EVENT:
            user_id, version = data.get("userId"), data.get("version")
            if isinstance(user_id, str) and isinstance(version, int):
                task = asyncio.get_running_loop().create_task(self.revoke(user_id, version))
                self._control_tasks.add(task)
                task.add_done_callback(self._control_tasks.discard)
                return
        if event == ACCESS_REVOKED_COMMAND:
            try:
                command = AccessRevoked.parse(data)
            except InvalidCommandError as exc:
                logger.warning("ignored control event %s: %s", event, exc)
                return
            self.revoke_access(command.user_id, command.contexts)
            return
        logger.warning("ignored control event %s with data %r", event, data)

    # Introspection ----------------------------------------------------------

    def subscriptions_of(self, user_id: str) -> dict[str, int]:
        """Return each context held by ``user_id`` with the number of their connections holding it."""
        counts: dict[str, int] = {}
        for session in self._sessions.values():
            if session.user_id != user_id:
                continue
            for context in self._table.contexts_of(session.id):
                counts[context] = counts.get(context, 0) + 1
        return counts

    def connection_count(self, user_id: str | None = None) -> int:
        """Return the number of open connections, of one user or of all."""
        if user_id is None:
            return len(self._sessions)
        return sum(1 for s in self._sessions.values() if s.user_id == user_id)

    def connection_ids(self, user_id: str) -> list[int]:
        """Return the ids of the open connections of ``user_id``."""
        return [s.id for s in self._sessions.values() if s.user_id == user_id]

    def contexts(self) -> list[str]:
        """Return every context some connection holds."""
        return self._table.contexts()

    def present_users(self, context: str) -> list[str]:
        """Return the users present on a presence context, grace period included."""
        return self._presence.users(context)

    def viewing_users(self, context: str) -> list[str]:
        """Return the users with a connection subscribed to a presence context now.

        Unlike ``present_users`` this leaves out users in their grace period:
        someone who switched conversations a moment ago is not looking at it.
        """
        return [u for u in self._presence.users(context) if self._presence.connections(context, u)]

    # Administration ---------------------------------------------------------

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
            if (user_id is None or session.user_id == user_id)
            and (connection_id is None or session.id == connection_id)
        ]
        for session in sessions:
            session.log.info("closing the connection with code %d: %s", code, reason)
            await session.connection.close(code, reason)
        return len(sessions)

    async def revoke(self, user_id: str, version: int) -> int:
        """Close the connections of ``user_id`` whose token version is below ``version``."""
        sessions = [
            s for s in list(self._sessions.values())
            if s.user_id == user_id and s.claims.version < version
        ]
        for session in sessions:
            session.log.info("token version %d revoked", session.claims.version)
            await session.connection.close(protocol.CloseCode.TOKEN_REVOKED, "token revoked")
        return len(sessions)

    def revoke_access(self, user_id: str, contexts: Iterable[str]) -> int:
        """Drop the subscriptions of ``user_id`` to ``contexts`` on this node.

        Each connection goes through the steps of an unsubscribe: presence
        leave, cached rooms, and the backplane unwatch once no connection of
        the node holds a context. A subscribe frame of the user that names
        one of the contexts and is still waiting for the authorizer is cut
        down to the other contexts. Every connection that lost a context, or
        had one in such a frame, then gets the event ``access.revoked``
        ``{"contexts": [...]}`` on ``/users/{id}``. Returns the number of
        those connections.
        """
        revoked = tuple(dict.fromkeys(contexts))
        affected: list[_Session] = []
        for session in [s for s in self._sessions.values() if s.user_id == user_id]:
            held = [c for c in revoked if c in self._table.contexts_of(session.id)]
            pending = [c for c in revoked if c in session.subscribing]
            if pending:
                session.revoked_while_subscribing |= frozenset(pending)
            if not held and not pending:
                continue
            stopped = self._table.unsubscribe(session.id, held)
            self._forget_rooms(held)
            self._release(session, held, stopped)
            session.log.info("access revoked to %s", ", ".join(dict.fromkeys(held + pending)))
            affected.append(session)
        if affected:
            self._send_access_revoked(user_id, affected, revoked)
        return len(affected)

    def _send_access_revoked(
        self, user_id: str, affected: list[_Session], revoked: tuple[str, ...]
    ) -> None:
        """Send ``access.revoked`` on the user's context to ``affected`` and its holders."""
        try:
            context = user_context(user_id)
        except InvalidContextError:
            logger.warning("user id %r makes no user context; access.revoked not sent", user_id)
            return
        data = {"contexts": list(revoked)}
        holders = self._table.holders(context)
        stream = self._streams.get(context)
        if stream is not None:
            # Numbered like any event of the context, so a holder that drops
            # now can have it replayed.
            _, frame = stream.append(lambda seq: protocol.encode_event(
                context, protocol.ACCESS_REVOKED_EVENT, data, seq))
            broadcast(self._room(context), frame)
        # A connection that does not hold its user context gets the event
        # without a seq, because no stream of it exists for that connection.
        plain = protocol.encode_ephemeral(context, protocol.ACCESS_REVOKED_EVENT, data)
        for session in affected:
            if stream is None or session.id not in holders:
                self._write(session, plain)

    # Handshake --------------------------------------------------------------

    async def _verify(self, token: str) -> TokenClaims:
        """Check signature, claims, expiry and version; raise InvalidToken."""
        claims = decode_token(self._secret, token)
        current = await self._authorizer.token_version(claims.user_id)
        if current is None:
            raise InvalidToken(f"user {claims.user_id!r} does not exist")
        if claims.version < current:
            raise InvalidToken("token has been revoked; fetch a new one")
        return claims

    async def _authenticate(
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        token = _bearer_token(request)
        if token is None:
            return self._reject(
                connection, "missing token: send 'Authorization: Bearer <token>' or ?token="
            )
        try:
            claims = await self._verify(token)
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

    # Connections ------------------------------------------------------------

    async def _handle(self, connection: ServerConnection) -> None:
        claims = self._claims.pop(connection)
        loop = asyncio.get_running_loop()
        bucket = TokenBucket(self._max_frames_per_second, self._frame_burst, now=loop.time())
        session = _Session(next(self._ids), connection, claims, bucket)
        self._sessions[session.id] = session
        if isinstance(connection, _Connection):
            connection.overflow_server = self
            connection.overflow_session = session
        self._arm_expiry(session)
        session.log.info("connection opened (source %s)", claims.token_source)
        try:
            async for message in connection:
                await self._receive(session, message)
        except ConnectionClosed:
            pass
        finally:
            if session.expiry is not None:
                session.expiry.cancel()
            del self._sessions[session.id]
            if not any(s.user_id == session.user_id for s in self._sessions.values()):
                self._user_buckets.pop(session.user_id, None)
            held = list(self._table.contexts_of(session.id))
            self._forget_rooms(held)
            self._release(session, held, self._table.drop(session.id))
            session.log.info("connection closed (code %s)", connection.close_code)

    def _arm_expiry(self, session: _Session) -> None:
        """Close the connection when its token expires, unless it is refreshed first."""
        if session.expiry is not None:
            session.expiry.cancel()
        loop = asyncio.get_running_loop()
        remaining = (session.claims.expires_at - dt.datetime.now(dt.UTC)).total_seconds()
        session.expiry = loop.call_later(max(0.0, remaining), self._expire, session)

    def _expire(self, session: _Session) -> None:
        session.log.info("token expired without auth.refresh; closing")
        asyncio.ensure_future(
            session.connection.close(protocol.CloseCode.TOKEN_EXPIRED, "token expired")
        )

    async def _receive(self, session: _Session, message: str | bytes) -> None:
        now = asyncio.get_running_loop().time()
        if not session.bucket.take(now=now):
            # One error a second at most, so a flood gets no flood of errors back.
            if now - session.limited_at >= 1.0:
                session.limited_at = now
                session.log.info("frame rate limit exceeded; dropping frames")
                self._write(session, protocol.Error(
                    code=protocol.ErrorCode.RATE_LIMITED.value,
                    message=(
                        f"more than {self._max_frames_per_second:g} frames per second; "
                        "frames are dropped until the rate falls"
                    ),
                ))
            return
        try:
            frame = protocol.parse_client_frame(message)
        except protocol.ProtocolError as exc:
            session.log.info("frame rejected: %s (%s)", exc.code.value, exc.message)
            self._write(session, protocol.error_frame(exc))
            return

        if self._frame_observer is not None:
            self._frame_observer(session.id, frame)

        if isinstance(frame, protocol.Subscribe):
            # Frames of one connection are handled one at a time, so one set suffices.
            session.subscribing = frozenset(frame.contexts)
            try:
                await self._subscribe(session, frame)
            finally:
                session.subscribing = frozenset()
                session.revoked_while_subscribing = frozenset()
        elif isinstance(frame, protocol.Unsubscribe):
            self._unsubscribe(session, frame)
        else:
            await self._refresh(session, frame)

    def _write(self, session: _Session, frame: protocol.ServerFrame | str) -> None:
        """Queue a frame on the connection without awaiting, keeping frame order."""
        if session.slow:
            return
        text = frame if isinstance(frame, str) else protocol.encode(frame)
        broadcast((session.connection,), text)

    def _user_may_subscribe(self, session: _Session, count: int) -> bool:
        """Spend ``count`` of the user's subscribe allowance, shared by their connections."""
        now = asyncio.get_running_loop().time()
        bucket = self._user_buckets.get(session.user_id)
        if bucket is None:
            bucket = self._user_buckets[session.user_id] = TokenBucket(
                self._user_subscribe_rate, self._user_subscribe_burst, now=now)
        if not bucket.take(now=now, cost=count):
            session.log.info("user subscribe rate exceeded; refusing %d contexts", count)
            return False
        return True

    async def _close_slow(self, session: _Session) -> None:
        """Close a connection that fell behind, aborting it if the close frame cannot get out."""
        transport = session.connection.transport
        # The close frame waits behind the unsent events, and a client that
        # reads nothing never takes it: drop the TCP connection after the timeout.
        abort = asyncio.get_running_loop().call_later(self._close_timeout, transport.abort)
        try:
            await session.connection.close(protocol.CloseCode.TOO_SLOW,
                                           "too slow: the client stopped reading")
        finally:
            abort.cancel()

    def _overflow(self, session: _Session) -> None:
        """Stop sending to a connection whose unsent bytes passed the limit, and close it.

        ``broadcast`` applies no backpressure: frames for a client that stops
        reading pile up in its write buffer. Past ``max_buffered_bytes`` the
        client is closed with 4008, so one slow reader costs bounded memory
        and never slows the others.
        """
        if session.slow or session.id not in self._sessions:
            return
        session.slow = True
        self._forget_rooms(self._table.contexts_of(session.id))
        transport = session.connection.transport
        session.log.warning("closing: %d bytes wait to be sent, above the limit of %d",
                            transport.get_write_buffer_size() if transport is not None else -1,
                            self._max_buffered)
        self._spawn(self._close_slow(session))

    # Frames -----------------------------------------------------------------

    async def _refresh(self, session: _Session, frame: protocol.AuthRefresh) -> None:
        try:
            claims = await self._verify(frame.token)
        except InvalidToken as exc:
            session.log.info("auth.refresh rejected: %s", exc)
            self._write(session, protocol.Error(
                code=protocol.ErrorCode.INVALID_TOKEN.value, message=str(exc),
                frame_type=frame.type,
            ))
            return
        if claims.user_id != session.user_id:
            session.log.warning("auth.refresh for another user %s rejected", claims.user_id)
            self._write(session, protocol.Error(
                code=protocol.ErrorCode.INVALID_TOKEN.value,
                message="the new token names another user; open a new connection instead",
                frame_type=frame.type,
            ))
            return
        session.claims = claims
        self._arm_expiry(session)
        self._write(session, protocol.AuthRefreshed(expires_at=claims.expires_at.isoformat()))

    async def _subscribe(self, session: _Session, frame: protocol.Subscribe) -> None:
        held = self._table.contexts_of(session.id)
        new = [c for c in frame.contexts if c not in held]
        if new and not self._user_may_subscribe(session, len(new)):
            self._write(session, protocol.Error(
                code=protocol.ErrorCode.RATE_LIMITED.value,
                message=(
                    f"user {session.user_id} subscribes to more than "
                    f"{self._user_subscribe_rate:g} new contexts a second across their "
                    "connections; nothing in this frame was subscribed, so send it again later"
                ),
                frame_type=frame.type,
            ))
            return
        if len(held) + len(new) > self._max_contexts_per_connection:
            self._write(session, protocol.Error(
                code=protocol.ErrorCode.TOO_MANY_CONTEXTS.value,
                message=(
                    f"this connection holds {len(held)} contexts and may hold at most "
                    f"{self._max_contexts_per_connection}; unsubscribe some first"
                ),
                frame_type=frame.type,
            ))
            return
        forbidden = [c for c in new if is_system_context(c)]
        if new and not forbidden:
            forbidden = await self._authorizer.forbidden_contexts(session.user_id, new)
        if forbidden:
            session.log.info("subscribe forbidden: %s", ", ".join(forbidden))
            self._write(session, protocol.Error(
                code=protocol.ErrorCode.FORBIDDEN.value,
                message=(
                    f"you may not subscribe to {', '.join(forbidden)}: "
                    f"{_forbidden_hint(forbidden)}; nothing in this frame was subscribed"
                ),
                frame_type=frame.type,
                contexts=tuple(forbidden),
            ))
            return
        if PLATFORM_PRESENCE_CONTEXT in new:
            # NOTE: read once per subscribe; someone who becomes a co-member
            # later shows up only after this connection subscribes again.
            session.visible = await self._authorizer.visible_users(session.user_id)

        for context in frame.contexts:
            if self._open_stream(context):
                self._start_watch(context)
        # A context whose watch is still in flight (started by this frame or by
        # another connection's) is not acknowledged before the backplane is ready.
        watches = [self._watches[c] for c in frame.contexts if c in self._watches]
        if watches:
            results = await asyncio.gather(*(asyncio.shield(w) for w in watches),
                                           return_exceptions=True)
            failures = [r for r in results if isinstance(r, BaseException)]
            if failures:
                session.log.warning("subscribe failed, the backplane is unavailable: %s",
                                    failures[0])
                self._write(session, protocol.Error(
                    code=protocol.ErrorCode.UNAVAILABLE.value,
                    message=(
                        "the event service cannot reach its backplane right now; nothing in "
                        "this frame was subscribed, so send it again in a few seconds"
                    ),
                    frame_type=frame.type,
                ))
                return
        if session.id not in self._sessions:
            return  # The connection closed while the backplane was busy.
        contexts = self._drop_revoked(session, frame.contexts)

        # From here to the last write nothing awaits, so no event slips between.
        self._table.subscribe(session.id, contexts)
        self._forget_rooms(contexts)
        streams: dict[str, protocol.StreamPosition] = {}
        replays: list[str] = []
        failed: list[str] = []
        since = frame.since or {}
        for context in contexts:
            stream = self._streams[context]
            streams[context] = protocol.StreamPosition(stream=stream.id, seq=stream.seq)
            position = since.get(context)
            if position is None or is_presence_context(context):
                continue
            frames = stream.since(position.stream, position.seq)
            if frames is None:
                failed.append(context)
            else:
                replays.extend(frames)
        self._write(session, protocol.Subscribed(
            contexts=contexts, streams=streams, recovery_failed=tuple(failed) or None,
        ))
        for text in replays:
            self._write(session, text)
        for context in contexts:
            if is_presence_context(context):
                self._track_presence(session, context)

    def _drop_revoked(self, session: _Session, contexts: tuple[str, ...]) -> tuple[str, ...]:
        """Leave out of a subscribe the contexts revoked while the authorizer was awaited.

        The authorizer allowed them before the revocation was committed. The
        connection was sent ``access.revoked`` for them, so its client forgets
        them, and the rest of the frame is subscribed as usual.
        """
        revoked = session.revoked_while_subscribing
        if not revoked.intersection(contexts):
            return contexts
        loop = asyncio.get_running_loop()
        for context in revoked.intersection(contexts):
            # _open_stream cancelled the linger timer of a stream this frame reopened.
            if not self._table.holders(context) and context not in self._lingering:
                self._lingering[context] = loop.call_later(
                    self._history_linger, self._close_stream, context
                )
        session.log.info("subscribe of %s skipped: access revoked meanwhile",
                         ", ".join(sorted(revoked.intersection(contexts))))
        return tuple(c for c in contexts if c not in revoked)

    def _open_stream(self, context: str) -> bool:
        """Make sure ``context`` has a stream; return True if the backplane must watch it."""
        lingering = self._lingering.pop(context, None)
        if lingering is not None:
            lingering.cancel()
        if context in self._streams:
            return False
        self._streams[context] = ContextStream(self._history_size)
        return True

    def _start_watch(self, context: str) -> None:
        """Start watching ``context`` on the backplane; forget its stream if that fails."""
        task = asyncio.ensure_future(self.backplane.watch(context))
        self._watches[context] = task

        def done(task: asyncio.Future[None]) -> None:
            if self._watches.get(context) is task:
                del self._watches[context]
            if task.cancelled() or task.exception() is not None:
                logger.warning("watching %s on the backplane failed: %s", context,
                               "cancelled" if task.cancelled() else task.exception())
                if not self._table.holders(context):
                    self._streams.pop(context, None)

        task.add_done_callback(done)

    def _unsubscribe(self, session: _Session, frame: protocol.Unsubscribe) -> None:
        holding = self._table.contexts_of(session.id)
        held = [c for c in frame.contexts if c in holding]
        stopped = self._table.unsubscribe(session.id, frame.contexts)
        self._forget_rooms(held)
        self._release(session, held, stopped)
        self._write(session, protocol.Unsubscribed(contexts=frame.contexts))

    def _release(self, session: _Session, released: Iterable[str], stopped: Iterable[str]) -> None:
        """Untrack presence on ``released`` and let the node's ``stopped`` contexts linger."""
        loop = asyncio.get_running_loop()
        for context in released:
            if is_presence_context(context):
                self._presence.untrack(context, session.id, session.user_id, now=loop.time())
                if self._cluster is not None:
                    self._spawn(self._cluster_close(context, session))
                if self._cluster is not None and self._presence.connections(
                    context, session.user_id
                ):
                    # The user stays through other connections here; only the
                    # last one's entry waits for the grace period.
                    self._cluster_entries.get((context, session.user_id), set()).discard(
                        session.id
                    )
                    self._spawn(self._cluster_remove(context, session.user_id, [session.id]))
        self._arm_leave_timer()
        for context in stopped:
            # Keep the stream (and its history) a while, so a client that comes
            # straight back can still recover what it missed.
            self._lingering[context] = loop.call_later(
                self._history_linger, self._close_stream, context
            )

    def _close_stream(self, context: str) -> None:
        self._lingering.pop(context, None)
        if self._table.holders(context):
            return
        self._streams.pop(context, None)
        task = asyncio.ensure_future(self._unwatch(context))
        self._control_tasks.add(task)
        task.add_done_callback(self._control_tasks.discard)

    async def _unwatch(self, context: str) -> None:
        try:
            await self.backplane.unwatch(context)
        except Exception:
            logger.exception("unwatching %s on the backplane failed", context)

    # Presence ---------------------------------------------------------------

    def _track_presence(self, session: _Session, context: str) -> None:
        diff = self._presence.track(context, session.id, session.user_id)
        if self._cluster is not None:
            self._cluster_entries.setdefault((context, session.user_id), set()).add(session.id)
            self._spawn(self._cluster_track(session, context))
            return
        if diff is not None:
            self._publish_presence(diff)
        stream = self._streams[context]
        users = [
            {"userId": user} for user in self._presence.users(context)
            if self._may_see(session, context, user)
        ]
        self._write(session, protocol.encode_event(context, STATE, {"users": users}, stream.seq))

    def _may_see(self, viewer: _Session, context: str, user_id: str) -> bool:
        if context != PLATFORM_PRESENCE_CONTEXT:
            # Subscribing to an instance or conversation tier already needed membership.
            return True
        return user_id == viewer.user_id or user_id in viewer.visible

    def _publish_presence(self, diff: PresenceDiff) -> None:
        stream = self._streams.get(diff.context)
        if stream is None:
            return
        _, frame = stream.append(
            lambda seq: protocol.encode_event(diff.context, diff.event, {"userId": diff.user_id}, seq)
        )
        sessions = (self._sessions[i] for i in self._table.holders(diff.context))
        broadcast([
            s.connection for s in sessions
            if not s.slow and self._may_see(s, diff.context, diff.user_id)
        ], frame)

    def _arm_leave_timer(self) -> None:
        deadline = self._presence.next_deadline()
        if self._leave_timer is not None:
            self._leave_timer.cancel()
            self._leave_timer = None
        if deadline is not None:
            loop = asyncio.get_running_loop()
            self._leave_timer = loop.call_at(deadline, self._expire_presence)

    def _expire_presence(self) -> None:
        self._leave_timer = None
        now = asyncio.get_running_loop().time()
        for diff in self._presence.expire(now=now):
            if self._cluster is None:
                self._publish_presence(diff)
                continue
            entries = self._cluster_entries.pop((diff.context, diff.user_id), set())
            self._spawn(self._cluster_remove(diff.context, diff.user_id, list(entries)))
        self._arm_leave_timer()

    # Presence across nodes (with a ClusterPresence) -------------------------

    def _spawn(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._control_tasks.add(task)
        task.add_done_callback(self._control_tasks.discard)

    async def _cluster_track(self, session: _Session, context: str) -> None:
        """Write the connection's entry, announce a cluster-wide join, send the state."""
        assert self._cluster is not None
        key = (context, session.user_id)
        # The state is numbered with the stream position before Redis is read:
        # every diff numbered up to it changed Redis before the read, and the
        # client applies the later ones on top, where they change nothing twice.
        position = self._streams[context].seq
        try:
            if await self._cluster.join(context, session.user_id, session.id):
                await self.backplane.publish(context, JOIN, {"userId": session.user_id})
            # Entries of connections that closed during a grace period the user
            # came back within; removed after the join, so no leave is announced.
            stale = self._cluster_entries.get(key, set()) - self._presence.connections(*key)
            if stale:
                self._cluster_entries[key] -= stale
                await self._cluster.remove(context, session.user_id, list(stale))
            present = await self._cluster.users(context)
        except Exception:
            session.log.exception("presence on %s failed in Redis; sending this node's view",
                                  context)
            present = self._presence.users(context)
        stream = self._streams.get(context)
        if stream is None or context not in self._table.contexts_of(session.id):
            # The client unsubscribed while the Redis calls ran, and the close
            # that _release started may have reached Redis before the join.
            await self._cluster_close(context, session)
            return
        users = [{"userId": u} for u in present if self._may_see(session, context, u)]
        self._write(session, protocol.encode_event(context, STATE, {"users": users}, position))

    async def _cluster_close(self, context: str, session: _Session) -> None:
        """Take the connection out of the context's open entries in Redis."""
        assert self._cluster is not None
        try:
            await self._cluster.close(context, session.user_id, session.id)
        except Exception:
            # The entry expires after the time to live.
            session.log.exception("closing the presence entry on %s failed in Redis", context)

    async def _cluster_remove(self, context: str, user_id: str, connection_ids: list[int]) -> None:
        """Remove entries; announce the leave if the user is now present on no node."""
        assert self._cluster is not None
        try:
            if await self._cluster.remove(context, user_id, connection_ids):
                await self.backplane.publish(context, LEAVE, {"userId": user_id})
        except Exception:
            # The entries expire after the time to live, and a sweep announces the leave.
            logger.exception("removing presence of user %s on %s failed", user_id, context)

    async def _publish_cluster_leaves(self, gone: Iterable[tuple[str, str]]) -> None:
        for context, user_id in gone:
            await self.backplane.publish(context, LEAVE, {"userId": user_id})

    async def _beat(self) -> None:
        """Refresh this node's entries and sweep expired ones, every third of the TTL."""
        assert self._cluster is not None
        interval = self._cluster.ttl_seconds / 3
        while True:
            await asyncio.sleep(interval)
            try:
                entries = {key: list(ids) for key, ids in self._cluster_entries.items() if ids}
                await self._cluster.refresh(entries)
                for context in [c for c in self._streams if is_presence_context(c)]:
                    for user_id in await self._cluster.sweep(context):
                        logger.info("user %s left %s: their entries expired", user_id, context)
                        await self.backplane.publish(context, LEAVE, {"userId": user_id})
            except Exception:
                logger.exception("presence heartbeat of node %s failed; retrying in %.1f s",
                                 self._cluster.node_id, interval)


async def run_server(server: EventServiceServer) -> None:
    """Run ``server`` until the task is cancelled."""
    await server.start()
    try:
        await asyncio.Future()
    finally:
        await server.close()
