"""Backplanes carry published events to the event-service nodes that need them.

A publisher (the chat service, a bot, a script) calls ``publish``; every
node that watches the context receives the event and fans it out to its
own connections. A node watches a context while at least one of its
connections subscribes to it, and watches are counted, so several nodes may share
one backplane. ``InMemoryBackplane`` serves the single-process deployment;
``redis_backplane.RedisBackplane`` implements the same interface for
several nodes.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from kilo_web.event_service.refcount import SubscriptionCounts

logger = logging.getLogger(__name__)

Receiver = Callable[[str, str, dict[str, Any]], Awaitable[None] | None]
"""A node's callback: ``receiver(context, event, data)``."""


class Publisher(Protocol):
    """Anything that can publish an event to a context."""

    async def publish(self, context: str, event: str, data: dict[str, Any]) -> None:
        """Deliver ``event`` with ``data`` to every subscriber of ``context``."""


class Backplane(Publisher, Protocol):
    """A publisher that event-service nodes receive from."""

    def add_receiver(self, receiver: Receiver) -> Callable[[], None]:
        """Register a node's receiver; return a function that removes it."""

    async def watch(self, context: str) -> None:
        """Count one more watcher of ``context``; deliver it here from when this returns."""

    async def unwatch(self, context: str) -> None:
        """Count one watcher less; stop delivering ``context`` when none is left."""


class InMemoryBackplane:
    """Deliver events to receivers in the same process, synchronously.

    ``publish`` returns once every receiver has taken the event, so when a
    caller's await returns, local subscribers have been sent the frame.
    """

    def __init__(self) -> None:
        self._receivers: list[Receiver] = []
        self._watched = SubscriptionCounts()

    def add_receiver(self, receiver: Receiver) -> Callable[[], None]:
        self._receivers.append(receiver)

        def remove() -> None:
            if receiver in self._receivers:
                self._receivers.remove(receiver)

        return remove

    async def watch(self, context: str) -> None:
        self._watched.acquire([context])

    async def unwatch(self, context: str) -> None:
        self._watched.release([context])

    async def publish(self, context: str, event: str, data: dict[str, Any]) -> None:
        if context not in self._watched:
            return
        for receiver in list(self._receivers):
            try:
                result = receiver(context, event, data)
                if result is not None:
                    await result
            except Exception:
                # One broken receiver must not stop delivery to the others.
                logger.exception("receiver failed for event %s on %s", event, context)
