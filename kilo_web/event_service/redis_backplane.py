"""A backplane over Redis pub/sub, for several event-service nodes and publishers.

Each context has a Redis channel (``kilo:events:<context>``, under a
configurable prefix). Publishers (the
chat service, bots' posts through the API) publish to the channel, and each
node subscribes to the channels of the contexts its connections hold.

A node keeps one pub/sub connection and counts watchers per context, as the
SDK counts consumers: only ``watch`` 0 -> 1 sends ``SUBSCRIBE`` and only
``unwatch`` 1 -> 0 sends ``UNSUBSCRIBE``. Commands are sent in the order of
those transitions, under a lock, so Redis ends in the state the counts
describe, whatever the interleaving. ``watch`` returns once Redis has
confirmed the subscription, so an event published after it returns reaches
the node. A second watcher that arrives while the first ``SUBSCRIBE`` is in
flight waits for the same confirmation. An ``unwatch`` that arrives meanwhile
sends its ``UNSUBSCRIBE`` after it, and Redis applies both in order.

When the pub/sub connection drops, redis-py reconnects it and subscribes to
every channel again. Events published while it was down are lost to this
node; clients then learn of the gap only when they reconnect themselves.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
from collections.abc import Callable
from typing import Any

import redis.asyncio as redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, TimeoutError as RedisTimeoutError

from kilo_web.event_service.backplane import Receiver
from kilo_web.event_service.refcount import SubscriptionCounts

logger = logging.getLogger(__name__)

DEFAULT_PREFIX = "kilo:"
"""Start of every Redis key and channel name kilo_web uses."""

RECONNECT_DELAY_SECONDS = 1.0
"""Pause of the reader after a failed read from Redis, before it reads again."""


def encode(event: str, data: dict[str, Any]) -> str:
    """Return the message published on a channel."""
    return json.dumps({"event": event, "data": data}, separators=(",", ":"))


def decode(payload: bytes | str) -> tuple[str, dict[str, Any]]:
    """Return ``(event, data)`` from a channel message; raise ValueError if malformed."""
    message = json.loads(payload)
    if not isinstance(message, dict):
        raise ValueError("backplane message is not a JSON object")
    event, data = message.get("event"), message.get("data")
    if not isinstance(event, str) or not isinstance(data, dict):
        raise ValueError("backplane message needs a string 'event' and an object 'data'")
    return event, data


class RedisBackplane:
    """A ``Backplane`` whose publishes reach every node that watches the context."""

    def __init__(
        self, url: str, *, prefix: str = DEFAULT_PREFIX, health_check_interval: float = 10.0
    ) -> None:
        self._channel_prefix = f"{prefix}events:"
        self._client = redis.Redis.from_url(url, health_check_interval=health_check_interval)
        self._pubsub = self._client.pubsub()
        self._counts = SubscriptionCounts()
        self._lock = asyncio.Lock()
        # Futures of the SUBSCRIBE commands Redis has not confirmed yet, per channel, oldest first.
        self._pending: dict[str, collections.deque[asyncio.Future[None]]] = {}
        # The newest subscription future per context, for watchers that arrive while it is in flight.
        self._ready: dict[str, asyncio.Future[None]] = {}
        self._receivers: list[Receiver] = []
        self._reader: asyncio.Task[None] | None = None
        self._closed = False

    def channel_of(self, context: str) -> str:
        """Return the Redis channel that carries ``context``'s events."""
        return self._channel_prefix + context

    # Backplane interface ----------------------------------------------------

    def add_receiver(self, receiver: Receiver) -> Callable[[], None]:
        self._receivers.append(receiver)

        def remove() -> None:
            if receiver in self._receivers:
                self._receivers.remove(receiver)

        return remove

    async def publish(self, context: str, event: str, data: dict[str, Any]) -> None:
        await self._client.publish(self.channel_of(context), encode(event, data))

    async def watch(self, context: str) -> None:
        """Count one more watcher of ``context``; return once Redis delivers it here."""
        async with self._lock:
            if self._counts.acquire([context]):
                ready = asyncio.get_running_loop().create_future()
                channel = self.channel_of(context)
                self._pending.setdefault(channel, collections.deque()).append(ready)
                self._ready[context] = ready
                try:
                    await self._pubsub.subscribe(channel)
                except BaseException:
                    self._counts.release([context])
                    self._pending[channel].remove(ready)
                    self._ready.pop(context, None)
                    raise
                self._start_reader()
            else:
                ready = self._ready.get(context)
        if ready is not None:
            # shield: one watcher's cancellation must not cancel the others' wait.
            await asyncio.shield(ready)

    async def unwatch(self, context: str) -> None:
        """Count one watcher less; unsubscribe when none is left."""
        async with self._lock:
            if self._counts.release([context]):
                self._ready.pop(context, None)
                await self._pubsub.unsubscribe(self.channel_of(context))

    # Life cycle --------------------------------------------------------------

    def watched(self) -> dict[str, int]:
        """Return the number of watchers of each watched context."""
        return self._counts.snapshot()

    async def ping(self) -> None:
        """Raise a RedisError unless Redis replies to PING."""
        await self._client.ping()

    async def close(self) -> None:
        """Stop reading and close both connections."""
        self._closed = True
        if self._reader is not None:
            self._reader.cancel()
            try:
                await self._reader
            except asyncio.CancelledError:
                pass
            self._reader = None
        for futures in self._pending.values():
            for future in futures:
                if not future.done():
                    future.set_exception(RedisConnectionError("the backplane was closed"))
        self._pending.clear()
        await self._pubsub.aclose()
        await self._client.aclose()

    # Reading -------------------------------------------------------------------

    def _start_reader(self) -> None:
        if self._reader is None and not self._closed:
            self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        while True:
            try:
                message = await self._pubsub.get_message(timeout=None)
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                logger.warning("reading from Redis failed: %s; retrying in %.1f s",
                               exc, RECONNECT_DELAY_SECONDS)
                await asyncio.sleep(RECONNECT_DELAY_SECONDS)
                continue
            except RedisError:
                logger.exception("unexpected Redis error in the backplane reader")
                await asyncio.sleep(RECONNECT_DELAY_SECONDS)
                continue
            if message is not None:
                await self._handle(message)

    async def _handle(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        channel = message.get("channel")
        if isinstance(channel, bytes):
            channel = channel.decode()
        if kind == "subscribe":
            pending = self._pending.get(channel)
            if pending:
                future = pending.popleft()
                if not future.done():
                    future.set_result(None)
                if not pending:
                    del self._pending[channel]
            return
        if kind != "message" or not isinstance(channel, str):
            return
        context = channel.removeprefix(self._channel_prefix)
        if context not in self._counts:
            return  # An event still in flight when the node stopped watching.
        try:
            event, data = decode(message["data"])
        except ValueError as exc:
            logger.warning("dropped a malformed message on %s: %s", channel, exc)
            return
        for receiver in list(self._receivers):
            try:
                result = receiver(context, event, data)
                if result is not None:
                    await result
            except Exception:
                logger.exception("receiver failed for event %s on %s", event, context)
