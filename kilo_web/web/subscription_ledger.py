"""Per-tab bookkeeping for subscription hook components, with no I/O.

A browser tab runs many hook components, and each asks the backend to hold a
context while it is mounted and active. ``SubscriptionLedger`` counts those
requests per context for one tab, so the subscription sink is called only
when a context goes 0 -> 1 or 1 -> 0.

Every request carries the *epoch* it was rendered with. The backend issues a
new epoch whenever the tab hydrates (a page load or a socket reconnect) and
forgets the counts of the old one at the same time, because the frontend
re-runs every mounted component's effect for the new epoch. Requests that
carry any other epoch are stale and ignored: that keeps the subscribe,
unsubscribe, subscribe of React StrictMode and the late cleanups of an old
epoch from corrupting the counts.

Invariants: every stored count is above zero; a release of a context that
is not held, or of another epoch, changes nothing.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Mapping

DEFAULT_MAX_CONTEXTS = 500
"""Default maximum number of distinct contexts one tab may hold at once."""


class Change(enum.Enum):
    """Outcome of one subscribe or unsubscribe request."""

    STARTED = "started"
    """The context went 0 -> 1: the sink must subscribe it."""
    STOPPED = "stopped"
    """The context went 1 -> 0: the sink must unsubscribe it."""
    COUNTED = "counted"
    """Another holder came or went; the sink is not called."""
    STALE_EPOCH = "stale_epoch"
    """The request carries an epoch other than the current one and is ignored."""
    NOT_HELD = "not_held"
    """An unsubscribe for a context with count 0 is ignored."""
    LIMIT_REACHED = "limit_reached"
    """The tab already holds the maximum number of contexts; the request is rejected."""


class SubscriptionLedger:
    """Count the subscription requests of one tab for its current epoch."""

    def __init__(
        self,
        epoch: int = 0,
        counts: Mapping[str, int] | None = None,
        *,
        max_contexts: int = DEFAULT_MAX_CONTEXTS,
    ) -> None:
        if max_contexts < 1:
            raise ValueError(f"max_contexts={max_contexts} must be at least 1")
        self.epoch = epoch
        self.max_contexts = max_contexts
        self._counts = {context: count for context, count in (counts or {}).items() if count > 0}

    @property
    def counts(self) -> dict[str, int]:
        """A copy of the counts: each held context mapped to its number of holders."""
        return dict(self._counts)

    def acquire(self, context: str, epoch: int) -> Change:
        """Record one more holder of ``context`` for ``epoch``."""
        if epoch != self.epoch:
            return Change.STALE_EPOCH
        count = self._counts.get(context, 0)
        if count == 0 and len(self._counts) >= self.max_contexts:
            return Change.LIMIT_REACHED
        self._counts[context] = count + 1
        return Change.STARTED if count == 0 else Change.COUNTED

    def release(self, context: str, epoch: int) -> Change:
        """Record one holder less of ``context`` for ``epoch``."""
        if epoch != self.epoch:
            return Change.STALE_EPOCH
        count = self._counts.get(context, 0)
        if count == 0:
            return Change.NOT_HELD
        if count == 1:
            del self._counts[context]
            return Change.STOPPED
        self._counts[context] = count - 1
        return Change.COUNTED

    def reset(self, epoch: int) -> list[str]:
        """Switch to ``epoch`` and forget every count; return the contexts that were held."""
        if epoch <= self.epoch:
            raise ValueError(f"new epoch {epoch} must be above the current epoch {self.epoch}")
        held = list(self._counts)
        self._counts = {}
        self.epoch = epoch
        return held


class EpochClock:
    """Issue epochs for one backend process.

    An epoch is the wall-clock time in milliseconds, raised where needed so
    that it is above every epoch this clock issued before and above the
    tab's previous epoch. A restarted backend therefore issues epochs that
    a page kept from the previous process does not hold, unless the wall
    clock went back by more than the old process's lifetime.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._last = 0

    def next_epoch(self, previous: int = 0) -> int:
        """Return a new epoch above ``previous`` and above every epoch issued so far."""
        epoch = max(int(self._clock() * 1000), self._last + 1, previous + 1)
        self._last = epoch
        return epoch
