"""One event-service connection per browser tab, kept in a per-process registry.

Reflex states are pickled, so a tab's socket and tasks cannot live in its
state. ``TabConnectionRegistry`` keeps them here instead, keyed by the
Reflex client token of the tab, and the tab's state keeps only plain values.

Each ``TabConnection`` owns an ``EventServiceClient``, connected in the
background, and two tasks:

- the *operations* task applies subscribe, unsubscribe and carry-over
  requests to the client one at a time, in the order the tab's event
  handlers queued them, so the handlers never wait on the network;
- the *delivery* task hands incoming events and connection-status changes
  to a ``deliver`` coroutine in batches: everything that queued up while the
  previous batch was being delivered goes in the next one.

Delayed releases: a page often releases a context and claims it again
within milliseconds. React StrictMode (dev mode) mounts each new component
twice, which in Reflex 0.10.1 dev mode includes every component of the page
after each hydrate. A reload or reconnect also makes every mounted
component subscribe again under a new epoch, after the tab's earlier counts
were reset. So the connection does not unsubscribe a released context at
once: it keeps it for ``release_delay_seconds`` (``grace_seconds`` after a
carry-over), and a subscribe in the meantime claims it back without any
wire frame. Events of a context that waits for its release still reach the
tab's states.

Closing: a tab whose Reflex socket disconnected is closed after
``grace_seconds``, unless it connects again first.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from kilo_web.event_service import EventServiceClient
from kilo_web.event_service.client import CONNECTED, RECOVERY_FAILED, SUBSCRIBED
from kilo_web.event_service.protocol import Event
from kilo_web.event_service.tokens import mint_token

logger = logging.getLogger(__name__)

MAX_BATCH_SIZE = 200
"""Maximum number of items passed to one call of ``deliver``."""

MAX_QUEUED_ITEMS = 10_000
"""Maximum number of items waiting for delivery to one tab.

When it is reached, the client stops reading its socket until the tab's
states catch up, so a slow tab slows its own connection and no other.
"""


class ConnectionStatus(str, enum.Enum):
    """Status of a tab's event-service connection, as shown to the user."""

    IDLE = "idle"
    """The tab has no connection (it subscribed nothing yet, or was closed)."""
    CONNECTING = "connecting"
    """The first connect is in progress."""
    CONNECTED = "connected"
    """The socket is open."""
    RECONNECTING = "reconnecting"
    """The socket dropped and the client is reconnecting."""


@dataclasses.dataclass(frozen=True, slots=True)
class StatusChange:
    """A change of a tab's connection status, delivered in order with its events."""

    status: ConnectionStatus


DeliveryItem = Event | StatusChange
Deliver = Callable[[str, list[DeliveryItem]], Awaitable[None]]
"""Coroutine that applies a batch of items to the tab with the given client token."""

ClientFactory = Callable[[str, Callable[[], Awaitable[str]]], EventServiceClient]
"""Build a client from a name and a token source."""


class _Operation(enum.Enum):
    SUBSCRIBE = "subscribe"
    UNSUBSCRIBE = "unsubscribe"
    CARRY_OVER = "carry_over"
    RELEASE_DUE = "release_due"


class _TabLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """Prefix each message with a short tab id (never the whole client token)."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return f"tab {self.extra['tab'] if self.extra else '?'}: {msg}", kwargs


def short_tab_id(token: str) -> str:
    """Return the first 8 characters of a client token, enough to tell tabs apart in logs."""
    return token[:8]


class TabConnection:
    """The event-service client of one browser tab and the tasks that feed it.

    Create it through ``TabConnectionRegistry``; all methods except
    ``close`` are synchronous and only queue work.
    """

    def __init__(
        self,
        token: str,
        user_id: str,
        client: EventServiceClient,
        *,
        deliver: Deliver,
        grace_seconds: float,
        release_delay_seconds: float,
    ) -> None:
        self.token = token
        self.user_id = user_id
        self.client = client
        self.log = _TabLog(logger, {"tab": short_tab_id(token)})
        self._deliver = deliver
        self._grace_seconds = grace_seconds
        self._release_delay_seconds = release_delay_seconds
        self._operations: asyncio.Queue[tuple[_Operation, tuple[str, ...]]] = asyncio.Queue()
        self._inbox: asyncio.Queue[DeliveryItem] = asyncio.Queue(maxsize=MAX_QUEUED_ITEMS)
        # Context -> loop time at which it is unsubscribed unless claimed again.
        self._pending_releases: dict[str, float] = {}
        self._release_handle: asyncio.TimerHandle | None = None
        self._closed = False

        client.on("*", self._inbox.put)
        # The client's local events reach only handlers registered by name.
        client.on(RECOVERY_FAILED, self._inbox.put)
        client.on(SUBSCRIBED, self._inbox.put)
        client.on_state_change(self._on_client_state)
        self._inbox.put_nowait(StatusChange(ConnectionStatus.CONNECTING))
        self._tasks = [
            asyncio.create_task(self._apply_operations(), name=f"tab {short_tab_id(token)} operations"),
            asyncio.create_task(self._deliver_items(), name=f"tab {short_tab_id(token)} delivery"),
            asyncio.create_task(self._connect(), name=f"tab {short_tab_id(token)} connect"),
        ]

    @property
    def pending_releases(self) -> frozenset[str]:
        """Contexts the tab released that the client still holds for a while."""
        return frozenset(self._pending_releases)

    @property
    def closed(self) -> bool:
        """Whether ``close()`` was called."""
        return self._closed

    def subscribe(self, contexts: Iterable[str]) -> None:
        """Queue a subscribe of ``contexts``."""
        self._queue(_Operation.SUBSCRIBE, contexts)

    def unsubscribe(self, contexts: Iterable[str]) -> None:
        """Queue an unsubscribe of ``contexts``."""
        self._queue(_Operation.UNSUBSCRIBE, contexts)

    def carry_over(self) -> None:
        """Queue a delayed release of everything the client holds (see the module docstring)."""
        self._queue(_Operation.CARRY_OVER, ())

    def _queue(self, operation: _Operation, contexts: Iterable[str]) -> None:
        if self._closed:
            raise RuntimeError(f"tab {short_tab_id(self.token)} connection is closed")
        self._operations.put_nowait((operation, tuple(contexts)))

    async def close(self) -> None:
        """Stop the tasks and close the client. Safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        if self._release_handle is not None:
            self._release_handle.cancel()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.client.close()
        self.log.info("event-service connection closed")

    async def _connect(self) -> None:
        # connect() returns once the socket is open; the client keeps the
        # connection (and reconnects) on its own after that.
        await self.client.connect()

    async def _on_client_state(self, state: str) -> None:
        if self._closed:
            return
        status = ConnectionStatus.CONNECTED if state == CONNECTED else ConnectionStatus.RECONNECTING
        await self._inbox.put(StatusChange(status))

    async def _apply_operations(self) -> None:
        while True:
            operation, contexts = await self._operations.get()
            try:
                await self._apply(operation, contexts)
            except asyncio.CancelledError:
                raise
            except Exception:
                # A bad request must not stop the requests queued after it.
                self.log.exception("%s of %s failed", operation.value, list(contexts))

    async def _apply(self, operation: _Operation, contexts: tuple[str, ...]) -> None:
        if operation is _Operation.SUBSCRIBE:
            fresh = [c for c in contexts if self._pending_releases.pop(c, None) is None]
            if fresh:
                await self.client.subscribe(fresh)
        elif operation is _Operation.UNSUBSCRIBE:
            self._release_later(contexts, self._release_delay_seconds)
        elif operation is _Operation.CARRY_OVER:
            self._release_later(self.client.counts, self._grace_seconds)
        elif operation is _Operation.RELEASE_DUE:
            self._release_handle = None
            now = asyncio.get_running_loop().time()
            due = sorted(c for c, deadline in self._pending_releases.items() if deadline <= now)
            for context in due:
                del self._pending_releases[context]
            if due:
                self.log.debug("releasing %d contexts", len(due))
                await self.client.unsubscribe(due)
            self._schedule_release()

    def _release_later(self, contexts: Iterable[str], delay: float) -> None:
        """Mark held contexts for release after ``delay`` seconds, keeping any later deadline."""
        held = self.client.counts
        deadline = asyncio.get_running_loop().time() + delay
        for context in contexts:
            if context in held:
                self._pending_releases[context] = max(self._pending_releases.get(context, 0.0), deadline)
        self._schedule_release()

    def _schedule_release(self) -> None:
        if self._release_handle is not None:
            self._release_handle.cancel()
            self._release_handle = None
        if self._pending_releases:
            loop = asyncio.get_running_loop()
            self._release_handle = loop.call_at(
                min(self._pending_releases.values()), self._queue, _Operation.RELEASE_DUE, ()
            )

    async def _deliver_items(self) -> None:
        while True:
            batch = [await self._inbox.get()]
            while len(batch) < MAX_BATCH_SIZE and not self._inbox.empty():
                batch.append(self._inbox.get_nowait())
            try:
                await self._deliver(self.token, batch)
            except asyncio.CancelledError:
                raise
            except Exception:
                # The tab keeps receiving later batches even if one failed.
                self.log.exception("delivery of %d items failed", len(batch))


class TabConnectionRegistry:
    """Map Reflex client tokens to their ``TabConnection`` in this process.

    ``is_tab_connected(token)`` returns whether the tab's Reflex socket is
    open now. A scheduled close is skipped when it returns true.
    """

    def __init__(
        self,
        *,
        url: str | list[str],
        jwt_secret: str,
        deliver: Deliver,
        grace_seconds: float = 10.0,
        release_delay_seconds: float = 1.0,
        token_ttl_seconds: int = 3600,
        reconnect_min_seconds: float = 0.5,
        reconnect_max_seconds: float = 30.0,
        client_factory: ClientFactory | None = None,
        issue_token: Callable[[str], Awaitable[str]] | None = None,
    ) -> None:
        if grace_seconds < 0 or release_delay_seconds < 0:
            raise ValueError(
                f"grace_seconds={grace_seconds} and release_delay_seconds="
                f"{release_delay_seconds} must not be negative"
            )
        self.url = url
        self.grace_seconds = grace_seconds
        self.release_delay_seconds = release_delay_seconds
        self.is_tab_connected: Callable[[str], bool] = lambda token: False
        self._jwt_secret = jwt_secret
        self._deliver = deliver
        self._token_ttl_seconds = token_ttl_seconds
        self._reconnect_min_seconds = reconnect_min_seconds
        self._reconnect_max_seconds = reconnect_max_seconds
        self._client_factory = client_factory or self._default_client
        self._issue_token = issue_token
        self._tabs: dict[str, TabConnection] = {}
        self._pending_closes: dict[str, asyncio.TimerHandle] = {}
        self._closing_tasks: set[asyncio.Task[None]] = set()

    def _default_client(self, name: str, get_token: Callable[[], Awaitable[str]]) -> EventServiceClient:
        return EventServiceClient(
            self.url,
            get_token,
            reconnect_min_seconds=self._reconnect_min_seconds,
            reconnect_max_seconds=self._reconnect_max_seconds,
            name=name,
        )

    def _token_source(self, user_id: str) -> Callable[[], Awaitable[str]]:
        issue, secret, ttl = self._issue_token, self._jwt_secret, self._token_ttl_seconds

        async def get_token() -> str:
            if issue is not None:
                return await issue(user_id)
            return mint_token(secret, user_id, token_source="web", ttl_seconds=ttl)

        return get_token

    # Queries ------------------------------------------------------------------

    def get(self, token: str) -> TabConnection | None:
        """Return the open connection of a tab, or None."""
        return self._tabs.get(token)

    def connections(self) -> list[TabConnection]:
        """Return every open connection."""
        return list(self._tabs.values())

    def __len__(self) -> int:
        return len(self._tabs)

    def close_pending(self, token: str) -> bool:
        """Return whether a close of the tab is scheduled."""
        return token in self._pending_closes

    # Requests from the tab's event handlers ------------------------------------

    def subscribe(self, token: str, user_id: str, context: str) -> None:
        """Hold ``context`` for the tab, opening its connection for ``user_id`` if needed.

        A connection opened for another user is closed first, because its
        token names the wrong user.
        """
        tab = self._tabs.get(token)
        if tab is not None and tab.user_id != user_id:
            tab.log.info("the signed-in user changed; closing the old connection")
            self._close_soon(token)
            tab = None
        if tab is None:
            tab = self._open(token, user_id)
        self.cancel_close(token)
        tab.subscribe([context])

    def unsubscribe(self, token: str, context: str) -> None:
        """Release ``context`` for the tab; a tab without a connection is ignored."""
        tab = self._tabs.get(token)
        if tab is not None:
            tab.unsubscribe([context])

    def carry_over(self, token: str, user_id: str | None) -> None:
        """Start a carry-over for a tab that starts a new epoch.

        If the tab's user is no longer ``user_id`` (a sign-out, or another
        user signed in), its connection is closed instead.
        """
        tab = self._tabs.get(token)
        if tab is None:
            return
        if tab.user_id != user_id:
            tab.log.info("the signed-in user changed; closing the connection")
            self._close_soon(token)
            return
        tab.carry_over()

    # Reflex socket life cycle ----------------------------------------------------

    def tab_disconnected(self, token: str) -> None:
        """Schedule a close of the tab's connection after the grace period."""
        if token not in self._tabs or token in self._pending_closes:
            return
        loop = asyncio.get_running_loop()
        self._pending_closes[token] = loop.call_later(self.grace_seconds, self._grace_expired, token)
        self._tabs[token].log.debug("Reflex socket closed; closing in %.1f s", self.grace_seconds)

    def cancel_close(self, token: str) -> None:
        """Cancel a scheduled close of the tab's connection, if any."""
        handle = self._pending_closes.pop(token, None)
        if handle is not None:
            handle.cancel()

    def _grace_expired(self, token: str) -> None:
        self._pending_closes.pop(token, None)
        if self.is_tab_connected(token):
            return
        self._close_soon(token)

    # Opening and closing -----------------------------------------------------------

    def _open(self, token: str, user_id: str) -> TabConnection:
        name = f"tab {short_tab_id(token)}"
        client = self._client_factory(name, self._token_source(user_id))
        tab = TabConnection(
            token,
            user_id,
            client,
            deliver=self._deliver,
            grace_seconds=self.grace_seconds,
            release_delay_seconds=self.release_delay_seconds,
        )
        self._tabs[token] = tab
        tab.log.info("opened an event-service connection for user %s", user_id)
        return tab

    def _close_soon(self, token: str) -> None:
        """Remove the tab now and close its connection in a background task."""
        self.cancel_close(token)
        tab = self._tabs.pop(token, None)
        if tab is None:
            return
        task = asyncio.create_task(tab.close(), name=f"close {tab.client.name}")
        self._closing_tasks.add(task)
        task.add_done_callback(self._closing_tasks.discard)

    async def close(self, token: str) -> None:
        """Close the tab's connection now and wait until it is closed."""
        self.cancel_close(token)
        tab = self._tabs.pop(token, None)
        if tab is not None:
            await tab.close()

    async def close_all(self) -> None:
        """Close every connection, including those being closed in the background."""
        for handle in self._pending_closes.values():
            handle.cancel()
        self._pending_closes.clear()
        tabs, self._tabs = list(self._tabs.values()), {}
        await asyncio.gather(*(tab.close() for tab in tabs), *self._closing_tasks)
