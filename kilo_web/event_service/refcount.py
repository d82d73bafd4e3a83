"""Pure subscription bookkeeping shared by the SDK and the server.

``SubscriptionCounts`` is the SDK's refcount: many consumers share one
socket, and only the transitions 0 -> 1 and 1 -> 0 reach the wire.
``SubscriptionTable`` is the server's view: which connections hold which
contexts, and which contexts the node as a whole gained or lost.
Neither does I/O, so both are tested without sockets.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import Generic, TypeVar


class SubscriptionCounts:
    """Map each context to the number of consumers holding it.

    Invariants: every stored count is above zero, and a release of a
    context that is not held changes nothing.
    """

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}

    def acquire(self, contexts: Iterable[str]) -> list[str]:
        """Count one more holder of each context; return those that went 0 -> 1."""
        started: list[str] = []
        for context in contexts:
            count = self._counts.get(context, 0)
            if count == 0:
                started.append(context)
            self._counts[context] = count + 1
        return started

    def release(self, contexts: Iterable[str]) -> list[str]:
        """Count one holder less of each context; return those that went 1 -> 0."""
        stopped: list[str] = []
        for context in contexts:
            count = self._counts.get(context, 0)
            if count == 0:
                continue
            if count == 1:
                del self._counts[context]
                stopped.append(context)
            else:
                self._counts[context] = count - 1
        return stopped

    def active(self) -> list[str]:
        """Return every context with a count above zero, in first-acquired order."""
        return list(self._counts)

    def snapshot(self) -> dict[str, int]:
        """Return a copy of the counts."""
        return dict(self._counts)

    def __contains__(self, context: object) -> bool:
        return context in self._counts

    def __len__(self) -> int:
        return len(self._counts)


ConnectionId = TypeVar("ConnectionId", bound=Hashable)


class SubscriptionTable(Generic[ConnectionId]):
    """The server's record of which connections subscribe to which contexts.

    Subscribing twice and unsubscribing an unknown context are no-ops for a
    connection. The node-level transitions it returns are what a backplane
    needs: a context is watched while any local connection holds it.
    """

    def __init__(self) -> None:
        self._by_context: dict[str, set[ConnectionId]] = {}
        self._by_connection: dict[ConnectionId, set[str]] = {}

    def subscribe(self, connection: ConnectionId, contexts: Iterable[str]) -> list[str]:
        """Add ``contexts`` to ``connection``; return the contexts the node newly holds."""
        held = self._by_connection.setdefault(connection, set())
        started: list[str] = []
        for context in contexts:
            if context in held:
                continue
            held.add(context)
            holders = self._by_context.get(context)
            if holders is None:
                holders = self._by_context[context] = set()
                started.append(context)
            holders.add(connection)
        return started

    def unsubscribe(self, connection: ConnectionId, contexts: Iterable[str]) -> list[str]:
        """Remove ``contexts`` from ``connection``; return those no connection holds now."""
        held = self._by_connection.get(connection)
        if not held:
            return []
        stopped: list[str] = []
        for context in contexts:
            if context not in held:
                continue
            held.discard(context)
            holders = self._by_context[context]
            holders.discard(connection)
            if not holders:
                del self._by_context[context]
                stopped.append(context)
        return stopped

    def drop(self, connection: ConnectionId) -> list[str]:
        """Forget ``connection``; return the contexts no connection holds now."""
        held = self._by_connection.pop(connection, set())
        self._by_connection[connection] = held
        stopped = self.unsubscribe(connection, list(held))
        del self._by_connection[connection]
        return stopped

    def contexts_of(self, connection: ConnectionId) -> frozenset[str]:
        """Return the contexts ``connection`` holds."""
        return frozenset(self._by_connection.get(connection, ()))

    def holders(self, context: str) -> frozenset[ConnectionId]:
        """Return the connections holding ``context``."""
        return frozenset(self._by_context.get(context, ()))

    def count_for(self, connection: ConnectionId) -> int:
        """Return how many contexts ``connection`` holds."""
        return len(self._by_connection.get(connection, ()))

    def contexts(self) -> list[str]:
        """Return every context some connection holds."""
        return list(self._by_context)
