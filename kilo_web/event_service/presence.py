"""Presence bookkeeping: who holds each presence context, per user.

Presence is kept per connection and reported per user. A user joins a
presence context when their first connection subscribes to it and leaves
when their last connection is gone, but only after a grace period: a
reload, a quick reconnect or a page hidden and shown again within it
produces no event at all.

``PresenceTracker`` is pure. It takes the current time as an argument and
returns the diffs to publish; the server runs its timers and sends frames.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable
from typing import Generic, TypeVar

ConnectionId = TypeVar("ConnectionId", bound=Hashable)

JOIN = "presence.join"
LEAVE = "presence.leave"
STATE = "presence.state"


@dataclasses.dataclass(frozen=True, slots=True)
class PresenceDiff:
    """A user-level change on one presence context: ``presence.join`` or ``presence.leave``."""

    context: str
    event: str
    user_id: str


@dataclasses.dataclass(slots=True)
class _Entry(Generic[ConnectionId]):
    connections: set[ConnectionId]
    leave_at: float | None = None
    """When the user leaves unless a connection comes back; None while connected."""


class PresenceTracker(Generic[ConnectionId]):
    """Track which users are present on which presence contexts.

    Invariants: a user is listed on a context from their join until their
    leave; ``leave_at`` is set exactly when they have no connection left.
    """

    def __init__(self, *, grace_seconds: float) -> None:
        if grace_seconds < 0:
            raise ValueError(f"grace_seconds={grace_seconds} must not be negative")
        self.grace_seconds = grace_seconds
        self._contexts: dict[str, dict[str, _Entry[ConnectionId]]] = {}

    def track(self, context: str, connection: ConnectionId, user_id: str) -> PresenceDiff | None:
        """Count ``connection`` of ``user_id`` on ``context``; return a join if the user is new."""
        users = self._contexts.setdefault(context, {})
        entry = users.get(user_id)
        if entry is None:
            users[user_id] = _Entry(connections={connection})
            return PresenceDiff(context, JOIN, user_id)
        entry.connections.add(connection)
        entry.leave_at = None
        return None

    def untrack(
        self, context: str, connection: ConnectionId, user_id: str, *, now: float
    ) -> float | None:
        """Remove ``connection``; return the time the user leaves if it was their last one."""
        entry = self._contexts.get(context, {}).get(user_id)
        if entry is None or connection not in entry.connections:
            return None
        entry.connections.discard(connection)
        if entry.connections:
            return None
        entry.leave_at = now + self.grace_seconds
        return entry.leave_at

    def expire(self, *, now: float) -> list[PresenceDiff]:
        """Return the leaves whose grace period has passed, and forget those users."""
        leaves: list[PresenceDiff] = []
        for context, users in list(self._contexts.items()):
            for user_id, entry in list(users.items()):
                if entry.leave_at is not None and entry.leave_at <= now:
                    del users[user_id]
                    leaves.append(PresenceDiff(context, LEAVE, user_id))
            if not users:
                del self._contexts[context]
        return leaves

    def next_deadline(self) -> float | None:
        """Return the earliest pending leave time, or None."""
        deadlines = [
            entry.leave_at
            for users in self._contexts.values()
            for entry in users.values()
            if entry.leave_at is not None
        ]
        return min(deadlines, default=None)

    def users(self, context: str) -> list[str]:
        """Return the users present on ``context``, in join order."""
        return list(self._contexts.get(context, {}))

    def connections(self, context: str, user_id: str) -> frozenset[ConnectionId]:
        """Return the connections of ``user_id`` that hold ``context``."""
        entry = self._contexts.get(context, {}).get(user_id)
        return frozenset() if entry is None else frozenset(entry.connections)

    def is_present(self, context: str, user_id: str) -> bool:
        """Tell whether ``user_id`` is listed on ``context``, grace period included."""
        return user_id in self._contexts.get(context, {})
