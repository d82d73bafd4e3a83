"""Per-context event streams with a bounded history for recovery.

Every event a node delivers on a context gets the next number of that
context's stream. A stream has a random id, made when the node starts
watching the context. A client that resubscribes names the stream id and
the last number it saw. It then gets the events after that number
replayed, or learns that recovery failed (another stream, or events no
longer kept) and reloads from the source of truth.
"""

from __future__ import annotations

import collections
import secrets
from collections.abc import Callable


class ContextStream:
    """The numbered events of one context, keeping the newest ``max_events``."""

    __slots__ = ("id", "seq", "_events", "_max_events")

    def __init__(self, max_events: int) -> None:
        self.id = secrets.token_hex(6)
        self.seq = 0
        self._max_events = max_events
        # Made with the first event: an empty deque takes about 750 bytes, and
        # most contexts of idle connections (each user's own) see few events.
        self._events: collections.deque[tuple[int, str]] | None = None

    def append(self, encode: Callable[[int], str]) -> tuple[int, str]:
        """Number the next event, store the frame ``encode(seq)`` returns, and return both."""
        self.seq += 1
        frame = encode(self.seq)
        if self._events is None:
            self._events = collections.deque(maxlen=self._max_events)
        self._events.append((self.seq, frame))
        return self.seq, frame

    def since(self, stream_id: str, seq: int) -> list[str] | None:
        """Return the frames after ``seq``, or None if they cannot all be replayed."""
        if stream_id != self.id or seq < 0 or seq > self.seq:
            return None
        if seq == self.seq:
            return []
        events = self._events or ()
        oldest = events[0][0] if events else self.seq + 1
        if seq + 1 < oldest:
            return None
        return [frame for number, frame in events if number > seq]
