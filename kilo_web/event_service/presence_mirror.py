"""A client's copy of one presence context, kept in order by the stream numbers.

The server sends ``presence.state`` (the full list, numbered with the
stream position it reflects) to each new subscriber, and ``presence.join``
and ``presence.leave`` diffs numbered by the context's stream. A mirror
applies the diffs newer than its state in order, drops older ones, and
buffers the diffs that arrive before the first state, and again after each
resubscribe. It is pure and round-trips through plain dicts, so a Reflex
state can keep it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from kilo_web.event_service.presence import JOIN, LEAVE, STATE


@dataclasses.dataclass
class PresenceMirror:
    """The users present on one context, as this client last saw them."""

    users: list[str] = dataclasses.field(default_factory=list)
    seq: int | None = None
    """Stream position of the newest state or diff applied; None while waiting for a state."""
    pending: list[tuple[int, str, str]] = dataclasses.field(default_factory=list)
    """Diffs (seq, event, user id) that arrived before the state."""

    def reset(self) -> None:
        """Wait for a new state: the subscription was (re)made. The old list stays shown."""
        self.seq = None
        self.pending = []

    def apply(self, event: str, data: dict[str, Any], seq: int | None) -> bool:
        """Apply one presence event; return whether ``users`` changed."""
        if event == STATE:
            before = list(self.users)
            self.users = [str(u["userId"]) for u in data.get("users", []) if "userId" in u]
            self.seq = seq if seq is not None else 0
            for number, name, user in sorted(self.pending):
                if number > self.seq:
                    self._apply_diff(name, user)
                    self.seq = number
            self.pending = []
            return self.users != before
        if event not in (JOIN, LEAVE) or "userId" not in data:
            return False
        user = str(data["userId"])
        if self.seq is None:
            self.pending.append((seq or 0, event, user))
            return False
        if seq is not None:
            if seq <= self.seq:
                return False  # Already part of the state this mirror holds.
            self.seq = seq
        return self._apply_diff(event, user)

    def _apply_diff(self, event: str, user: str) -> bool:
        if event == JOIN and user not in self.users:
            self.users.append(user)
            return True
        if event == LEAVE and user in self.users:
            self.users.remove(user)
            return True
        return False

    def to_dict(self) -> dict[str, Any]:
        """Return the mirror as plain JSON-friendly values."""
        return {"users": list(self.users), "seq": self.seq, "pending": [list(p) for p in self.pending]}

    @classmethod
    def from_dict(cls, value: dict[str, Any] | None) -> PresenceMirror:
        """Rebuild a mirror from ``to_dict`` output; None gives an empty one."""
        if not value:
            return cls()
        return cls(
            users=list(value.get("users", [])),
            seq=value.get("seq"),
            pending=[(int(n), str(e), str(u)) for n, e, u in value.get("pending", [])],
        )
