"""EventServiceClient: one event-service socket shared by many consumers.

Consumers subscribe and unsubscribe contexts independently; the client
counts holders per context (``SubscriptionCounts``) and puts only the
transitions on the wire: ``context.subscribe`` for 0 -> 1 and
``context.unsubscribe`` for 1 -> 0, one frame per call. After every
(re)connect it sends each context whose count is above zero exactly once.

Invariant: ``_lock`` is held while a count changes and its frame is sent,
and while the full set is sent on connect. So the wire sees the counts'
transitions in order, and a context subscribed during a reconnect is sent
either in the full set or as a diff afterwards, never both or neither.

Recovery: the client remembers the stream position of each held context
(from the subscribe acknowledgement and each event's ``seq``) and names it
when it resubscribes after a reconnect. The server replays what was missed,
or reports that it cannot; then handlers of ``context.recovery_failed``
get a local event for that context and should reload it from its source.

Revocation: when the server sends ``access.revoked`` (the user left a
conversation, say), the client sets the count of each named context to
zero and forgets its stream position before the event reaches handlers,
so no reconnect subscribes it again. A subscribe frame with one forbidden
context subscribes nothing, so resubscribing a revoked context would also
lose every other context of that frame. When that happens all the same
(the context was revoked while the socket was down), the client forgets
the contexts the ``forbidden`` error lists and sends the rest of the frame
again. It matches the error to its frame by order, because the server
replies to the frames of a connection in the order they arrive.

Tokens: the client reads the expiry of each token (without verifying it:
the server does that) and fetches a fresh one before it runs out, one
fetch at a time, sending it in band with ``auth.refresh``.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import jwt
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from kilo_web.event_service import protocol
from kilo_web.event_service.contexts import validate_context
from kilo_web.event_service.protocol import Event
from kilo_web.event_service.refcount import SubscriptionCounts

logger = logging.getLogger(__name__)

EventHandler = Callable[[Event], Awaitable[None] | None]
ErrorHandler = Callable[[protocol.Error], Awaitable[None] | None]
StateHandler = Callable[[str], Awaitable[None] | None]

CONNECTED = "connected"
DISCONNECTED = "disconnected"
FAILED = "failed"
"""State of a client that stopped because the token source raised ``CredentialsRejected``."""
RECOVERY_FAILED = "context.recovery_failed"
"""Local event dispatched when missed events of a context could not be replayed."""
SUBSCRIBED = "context.subscribed"
"""Local event dispatched for each context the server acknowledged.

Its data holds the stream position (``stream``, ``seq``) and ``recovered``:
true when the events missed while disconnected were replayed. When it is
false, anything published before the subscription is not coming; a
consumer that shows a history should reload it from its source.
"""


class CredentialsRejected(Exception):
    """Raised by a token source whose credentials will not work again, such as a revoked key.

    The client stops instead of retrying: ``connect()`` and
    ``wait_connected()`` raise it, and state handlers get ``"failed"``.
    Any other exception from the token source is retried with backoff.
    """


class _TokenFetchFailed(Exception):
    """Wraps an exception of the token source, so the loop can log it in one line."""


def token_expiry(token: str) -> float | None:
    """Return the ``exp`` claim of a JWT as a POSIX timestamp, or None if it has none.

    The signature is not checked: the client only schedules its refresh.
    """
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.InvalidTokenError:
        return None
    exp = claims.get("exp")
    return float(exp) if isinstance(exp, (int, float)) else None


def refresh_delay(expires_at: float, *, now: float, margin_seconds: float) -> float:
    """Return how long to wait before refreshing a token that expires at ``expires_at``.

    The refresh starts ``margin_seconds`` before the expiry, or at half the
    remaining lifetime for a token shorter-lived than twice the margin.
    """
    remaining = expires_at - now
    return max(0.0, remaining - margin_seconds, remaining / 2)


def backoff_delay(attempt: int, *, minimum: float, maximum: float) -> float:
    """Return the delay before reconnect ``attempt`` (0-based): full jitter.

    The cap grows as ``minimum * 2**attempt`` up to ``maximum``, and the delay
    is drawn uniformly below it, so clients that lost the same server do not
    come back in lockstep.
    """
    cap = min(maximum, minimum * (2 ** min(attempt, 32)))
    return random.uniform(0, cap)


async def _call(handler: Callable[..., Any], *args: Any) -> None:
    result = handler(*args)
    if inspect.isawaitable(result):
        await result


class EventServiceClient:
    """Share one event-service socket among many consumers.

    ``url`` is one node's ``ws://`` URL or a list of nodes: after a failed or
    lost connection the client tries the next one, and resubscribes there.
    ``get_token`` is an async callable that returns a token; it is called for
    every connect and reconnect. Handlers run one at a time in the reader
    task, in arrival order, so a slow handler delays the events after it.
    """

    def __init__(
        self,
        url: str | Sequence[str],
        get_token: Callable[[], Awaitable[str]],
        *,
        reconnect_min_seconds: float = 0.5,
        reconnect_max_seconds: float = 30.0,
        stable_after_seconds: float = 5.0,
        refresh_margin_seconds: float = 60.0,
        max_frame_bytes: int = 2**20,
        name: str | None = None,
    ) -> None:
        if reconnect_min_seconds <= 0 or reconnect_max_seconds < reconnect_min_seconds:
            raise ValueError(
                f"invalid backoff: reconnect_min_seconds={reconnect_min_seconds} must be "
                f"above 0 and at most reconnect_max_seconds={reconnect_max_seconds}"
            )
        urls = [url] if isinstance(url, str) else list(url)
        if not urls:
            raise ValueError("give at least one event-service URL")
        self.urls = urls
        """The nodes to connect to; after a failed or lost connection the next one is tried."""
        self._node = 0
        self.name = name or urls[0]
        self._get_token = get_token
        self._reconnect_min = reconnect_min_seconds
        self._reconnect_max = reconnect_max_seconds
        self._stable_after = stable_after_seconds
        self._refresh_margin = refresh_margin_seconds
        self._max_frame_bytes = max_frame_bytes
        self._positions: dict[str, protocol.StreamPosition] = {}
        self._recovering: set[str] = set()
        """Contexts resubscribed with ``since`` whose acknowledgement is pending."""
        self._unreplied: collections.deque[tuple[str, ...]] = collections.deque()
        """Contexts of each subscribe frame sent on this socket without a reply yet, oldest first."""
        self._refresh_task: asyncio.Task[None] | None = None
        self.refresh_count = 0
        """How many tokens were accepted in band with ``auth.refresh``."""

        self._counts = SubscriptionCounts()
        self._handlers: dict[str, list[EventHandler]] = {}
        self._error_handlers: list[ErrorHandler] = []
        self._state_handlers: list[StateHandler] = []

        self._lock = asyncio.Lock()
        self._socket: ClientConnection | None = None
        self._task: asyncio.Task[None] | None = None
        self._opened = asyncio.Event()
        self._closing = False
        self._failure: CredentialsRejected | None = None
        self._failed = asyncio.Event()
        self.connect_count = 0
        """How many times a socket was opened; tests and status pages read it."""

    # Properties -------------------------------------------------------------

    @property
    def counts(self) -> dict[str, int]:
        """Each context with a count above zero, mapped to its count."""
        return self._counts.snapshot()

    @property
    def url(self) -> str:
        """The node the client is connected to, or tries next."""
        return self.urls[self._node % len(self.urls)]

    @property
    def connected(self) -> bool:
        """Whether the socket is open now."""
        return self._socket is not None

    # Life cycle -------------------------------------------------------------

    async def connect(self) -> None:
        """Start the connection loop if needed and wait until the socket is open.

        The loop reconnects with exponential backoff and full jitter until
        ``close()``. Cancelling this call stops only the wait, not the loop.
        Raises CredentialsRejected when the token source raised it, and
        RuntimeError after ``close()``.
        """
        if self._failure is not None:
            raise self._failure
        if self._closing:
            raise RuntimeError(f"client {self.name} is closed; create a new one")
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"event-service {self.name}")
        await self._wait_open()

    async def _wait_open(self) -> None:
        """Wait until the socket is open, or raise the failure that stopped the client."""
        waiters = [asyncio.ensure_future(self._opened.wait()),
                   asyncio.ensure_future(self._failed.wait())]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
        if self._failure is not None:
            raise self._failure

    async def close(self) -> None:
        """Close the socket and stop reconnecting. Safe to call more than once."""
        self._closing = True
        task, self._task = self._task, None
        socket = self._socket
        if socket is not None:
            # A normal closing handshake (1000); cancelling the task alone
            # would drop the connection with 1011.
            try:
                await asyncio.wait_for(socket.close(), timeout=2)
            except (TimeoutError, OSError, ConnectionClosed):
                pass
        if task is not None:
            task.cancel()
            # gather() absorbs the task's own CancelledError but still raises
            # if the caller of close() is cancelled.
            await asyncio.gather(task, return_exceptions=True)

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Wait until the socket is open; raise TimeoutError after ``timeout`` seconds.

        Raises CredentialsRejected when the token source raised it.
        """
        async with asyncio.timeout(timeout):
            await self._wait_open()

    # Subscriptions ----------------------------------------------------------

    async def subscribe(self, contexts: Iterable[str]) -> None:
        """Hold each context once more; send ``context.subscribe`` for those new.

        Contexts are validated first, so a malformed one raises
        InvalidContextError and changes no count.
        """
        contexts = self._validate(contexts)
        async with self._lock:
            started = self._counts.acquire(contexts)
            if started:
                await self._send_locked(protocol.Subscribe(contexts=tuple(started)))

    async def unsubscribe(self, contexts: Iterable[str]) -> None:
        """Hold each context once less; send ``context.unsubscribe`` for those released.

        A context that is not held is ignored: no frame, no error.
        """
        contexts = list(contexts)
        async with self._lock:
            stopped = self._counts.release(contexts)
            for context in stopped:
                self._positions.pop(context, None)
            if stopped:
                await self._send_locked(protocol.Unsubscribe(contexts=tuple(stopped)))

    @staticmethod
    def _validate(contexts: Iterable[str]) -> list[str]:
        return [validate_context(context) for context in contexts]

    async def _send_locked(self, frame: protocol.ClientFrame) -> None:
        socket = self._socket
        if socket is None:
            return  # Sent with the full set on the next connect.
        if isinstance(frame, protocol.Subscribe):
            # Recorded before the send, because the reply may be read before it returns.
            self._unreplied.append(frame.contexts)
        try:
            await socket.send(protocol.encode(frame))
        except ConnectionClosed:
            # The reader task notices the close and reconnects; the counts
            # already hold the change, so the full set carries it.
            logger.info("%s: socket closed while sending %s", self.name, frame.type)

    # Handlers ---------------------------------------------------------------

    def on(self, event: str, handler: EventHandler) -> Callable[[], None]:
        """Call ``handler`` for each event named ``event`` (``"*"``: every server event).

        Handlers of ``access.revoked`` run after the client dropped the named
        contexts from its counts. Besides the server's events the client
        dispatches two local ones:
        ``context.subscribed`` (data: the stream position) for each context the
        server acknowledged, and ``context.recovery_failed`` when missed events
        of a context could not be replayed after a reconnect.

        Returns a function that removes the handler.
        """
        self._handlers.setdefault(event, []).append(handler)
        return lambda: self.off(event, handler)

    def off(self, event: str, handler: EventHandler) -> None:
        """Remove a handler registered with ``on``; unknown handlers are ignored."""
        handlers = self._handlers.get(event)
        if handlers and handler in handlers:
            handlers.remove(handler)
            if not handlers:
                del self._handlers[event]

    def on_error(self, handler: ErrorHandler) -> Callable[[], None]:
        """Call ``handler`` for each ``error`` frame; returns a remover.

        For a ``forbidden`` subscribe error, the handler runs after the client
        dropped the contexts the error lists and sent the rest of the frame again.
        """
        self._error_handlers.append(handler)
        return lambda: self._error_handlers.remove(handler) if handler in self._error_handlers else None

    def on_state_change(self, handler: StateHandler) -> Callable[[], None]:
        """Call ``handler("connected")`` or ``handler("disconnected")``; returns a remover."""
        self._state_handlers.append(handler)
        return lambda: self._state_handlers.remove(handler) if handler in self._state_handlers else None

    # Connection loop --------------------------------------------------------

    async def _run(self) -> None:
        attempt = 0
        loop = asyncio.get_running_loop()
        while not self._closing:
            opened_at: float | None = None
            try:
                token = await self._fetch_token()
                async with ws_connect(
                    self.url,
                    additional_headers={"Authorization": f"Bearer {token}"},
                    max_size=self._max_frame_bytes,
                ) as socket:
                    opened_at = loop.time()
                    await self._on_open(socket)
                    self._schedule_refresh(token)
                    await self._read(socket)
            except asyncio.CancelledError:
                raise
            except CredentialsRejected as exc:
                logger.error("%s: the token source rejected its credentials, so the client "
                             "stops: %s", self.name, exc)
                self._failure = exc
                self._closing = True
                self._failed.set()
            except _TokenFetchFailed as exc:
                logger.warning("%s: get_token() failed, retrying with backoff: %r", self.name,
                               exc.__cause__)
            except InvalidStatus as exc:
                logger.warning(
                    "%s: server rejected the handshake with HTTP %s; retrying with a new token",
                    self.name,
                    exc.response.status_code,
                )
            except (OSError, InvalidHandshake, ConnectionClosed, TimeoutError) as exc:
                logger.info("%s: connection failed or lost: %r", self.name, exc)
            except Exception:
                # get_token() or a handler may raise anything; the loop must live on.
                logger.exception("%s: unexpected error in the connection loop", self.name)
            finally:
                self._cancel_refresh()
                await self._on_close()

            if self._failure is not None:
                await self._notify_state(FAILED)
            if self._closing:
                break
            # The node failed or went away, so the next attempt tries another.
            self._node = (self._node + 1) % len(self.urls)
            if opened_at is not None and loop.time() - opened_at >= self._stable_after:
                attempt = 0
            delay = backoff_delay(attempt, minimum=self._reconnect_min, maximum=self._reconnect_max)
            attempt += 1
            logger.info("%s: reconnecting in %.2f s (attempt %d)", self.name, delay, attempt)
            await asyncio.sleep(delay)

    async def _fetch_token(self) -> str:
        try:
            return await self._get_token()
        except (asyncio.CancelledError, CredentialsRejected):
            raise
        except Exception as exc:
            raise _TokenFetchFailed() from exc

    def _schedule_refresh(self, token: str) -> None:
        self._cancel_refresh()
        expires_at = token_expiry(token)
        if expires_at is None:
            return
        self._refresh_task = asyncio.create_task(
            self._refresh_before(expires_at), name=f"token refresh {self.name}"
        )

    def _cancel_refresh(self) -> None:
        task, self._refresh_task = self._refresh_task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    async def _refresh_before(self, expires_at: float) -> None:
        """Fetch a token before ``expires_at`` and send it; retry with backoff until it is late."""
        attempt = 0
        while True:
            delay = refresh_delay(expires_at, now=time.time(), margin_seconds=self._refresh_margin)
            await asyncio.sleep(delay if attempt == 0 else backoff_delay(
                attempt, minimum=self._reconnect_min, maximum=self._reconnect_max))
            try:
                token = await self._get_token()
            except asyncio.CancelledError:
                raise
            except CredentialsRejected as exc:
                # The reconnect after the server closes the socket at expiry
                # meets the same refusal and stops the client.
                logger.warning("%s: token refresh rejected, so the socket ends when the "
                               "token expires: %s", self.name, exc)
                return
            except Exception:
                attempt += 1
                logger.warning("%s: token refresh failed (attempt %d)", self.name, attempt,
                               exc_info=True)
                if time.time() >= expires_at:
                    return  # The server closes the socket; the reconnect fetches a token.
                continue
            new_expiry = token_expiry(token)
            if new_expiry is None or new_expiry <= expires_at:
                # A token that does not outlive the current one would make this
                # loop spin; back off as after a failed fetch.
                attempt += 1
                logger.warning("%s: get_token() returned a token that expires no later; "
                               "retrying (attempt %d)", self.name, attempt)
                if time.time() >= expires_at:
                    return
                continue
            async with self._lock:
                await self._send_locked(protocol.AuthRefresh(token=token))
            expires_at = new_expiry
            attempt = 0

    async def _on_open(self, socket: ClientConnection) -> None:
        async with self._lock:
            self._unreplied.clear()
            active = self._counts.active()
            # One frame may carry at most MAX_CONTEXTS_PER_FRAME contexts.
            step = protocol.MAX_CONTEXTS_PER_FRAME
            for start in range(0, len(active), step):
                batch = tuple(active[start : start + step])
                since = {c: self._positions[c] for c in batch if c in self._positions}
                self._recovering.update(since)
                self._unreplied.append(batch)
                await socket.send(protocol.encode(protocol.Subscribe(batch, since=since or None)))
            self._socket = socket
            self.connect_count += 1
        self._opened.set()
        logger.info("%s: connected, resubscribed %d contexts", self.name, len(active))
        await self._notify_state(CONNECTED)

    async def _on_close(self) -> None:
        if self._socket is None:
            return
        async with self._lock:
            self._socket = None
        self._opened.clear()
        await self._notify_state(DISCONNECTED)

    async def _read(self, socket: ClientConnection) -> None:
        async for message in socket:
            try:
                frame = protocol.parse_server_frame(message)
            except protocol.ProtocolError as exc:
                logger.warning("%s: ignoring malformed server frame: %s", self.name, exc.message)
                continue
            if isinstance(frame, Event):
                self._advance(frame)
                if frame.event == protocol.ACCESS_REVOKED_EVENT:
                    await self._forget_revoked(frame)
                await self._dispatch(frame)
            elif isinstance(frame, protocol.Subscribed):
                self._pop_replied()
                await self._acknowledged(frame)
            elif isinstance(frame, protocol.AuthRefreshed):
                self.refresh_count += 1
                logger.info("%s: token refreshed in band, now valid until %s",
                            self.name, frame.expires_at)
            elif isinstance(frame, protocol.Error):
                logger.warning("%s: server error %s: %s", self.name, frame.code, frame.message)
                if frame.frame_type == "context.subscribe":
                    rejected = self._pop_replied()
                    if frame.code == protocol.ErrorCode.FORBIDDEN.value and frame.contexts:
                        await self._retry_without(rejected, frame.contexts)
                for handler in list(self._error_handlers):
                    await self._guarded(handler, frame)

    async def _forget_revoked(self, event: Event) -> None:
        """Drop every hold of the contexts an ``access.revoked`` event names."""
        contexts = event.data.get("contexts")
        if not isinstance(contexts, list):
            logger.warning("%s: ignoring access.revoked without a list 'contexts': %r",
                           self.name, event.data)
            return
        async with self._lock:
            forgotten = self._forget_locked([c for c in contexts if isinstance(c, str)])
        if forgotten:
            logger.info("%s: access revoked, dropped %s", self.name, ", ".join(forgotten))

    def _forget_locked(self, contexts: Iterable[str]) -> list[str]:
        """Set the counts of ``contexts`` to zero and drop their positions; return those held."""
        counts = self._counts.snapshot()
        forgotten = []
        for context in contexts:
            if context in counts:
                self._counts.release([context] * counts[context])
                forgotten.append(context)
            self._positions.pop(context, None)
            self._recovering.discard(context)
        return forgotten

    def _pop_replied(self) -> tuple[str, ...]:
        """Remove the oldest subscribe frame without a reply from the queue; return its contexts."""
        # NOTE: a subscribe frame that the server drops under its frame rate limit
        # gets no reply of its own, so later replies match the wrong frame until
        # the next connect.
        return self._unreplied.popleft() if self._unreplied else ()

    async def _retry_without(self, rejected: tuple[str, ...], forbidden: Sequence[str]) -> None:
        """Forget the ``forbidden`` contexts of a rejected subscribe and send the rest again."""
        async with self._lock:
            forgotten = self._forget_locked(forbidden)
            retry = tuple(c for c in rejected if c in self._counts)
            if retry:
                since = {c: self._positions[c] for c in retry if c in self._positions}
                self._recovering.update(since)
                await self._send_locked(protocol.Subscribe(retry, since=since or None))
        logger.warning("%s: subscribe forbidden for %s; dropped them and sent %d other "
                       "contexts again", self.name, ", ".join(forgotten or forbidden), len(retry))

    def _advance(self, event: Event) -> None:
        position = self._positions.get(event.context)
        if position is not None and event.seq is not None and event.seq > position.seq:
            self._positions[event.context] = protocol.StreamPosition(position.stream, event.seq)

    async def _acknowledged(self, frame: protocol.Subscribed) -> None:
        failed = set(frame.recovery_failed or ())
        for context, position in (frame.streams or {}).items():
            if context not in self._counts:
                continue
            known = self._positions.get(context)
            if known is None or known.stream != position.stream or context in failed:
                self._positions[context] = position
        for context in frame.contexts:
            position = (frame.streams or {}).get(context)
            data: dict[str, Any] = {"recovered": context in self._recovering and context not in failed}
            self._recovering.discard(context)
            if position is not None:
                data.update(stream=position.stream, seq=position.seq)
            await self._dispatch(Event(context=context, event=SUBSCRIBED, data=data), local=True)
        for context in frame.recovery_failed or ():
            logger.info("%s: missed events of %s could not be replayed", self.name, context)
            await self._dispatch(Event(context=context, event=RECOVERY_FAILED, data={}), local=True)

    async def _dispatch(self, event: Event, *, local: bool = False) -> None:
        # Handlers of "*" get the server's events; local ones only by their name.
        wildcard = () if local else self._handlers.get("*", ())
        for handler in [*self._handlers.get(event.event, ()), *wildcard]:
            await self._guarded(handler, event)

    async def _guarded(self, handler: Callable[..., Any], *args: Any) -> None:
        try:
            await _call(handler, *args)
        except asyncio.CancelledError:
            raise
        except Exception:
            # A broken consumer must not silence the others.
            logger.exception("%s: handler %r failed", self.name, handler)

    async def _notify_state(self, state: str) -> None:
        for handler in list(self._state_handlers):
            await self._guarded(handler, state)
