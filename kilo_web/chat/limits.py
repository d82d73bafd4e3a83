"""Per-user limits on posting messages and on typing events.

Posting, over HTTP and from the web UI alike: each user has a token bucket,
``per_minute`` messages a minute on average, with bursts of ``burst``.
Typing: at most one ``typing`` event per user and conversation every
``TYPING_INTERVAL_SECONDS``; the callers drop the rest without an error.
Both keep their state in the process, so with several workers each worker
counts on its own.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

from kilo_web.chat.errors import RateLimitedError
from kilo_web.event_service.limits import TokenBucket
from kilo_web.settings import Settings

logger = logging.getLogger(__name__)

PRUNE_ABOVE = 10_000
"""Number of buckets (or typing entries) above which idle ones are forgotten."""

TYPING_INTERVAL_SECONDS = 2.0
"""Shortest time between two published typing events of one user in one conversation."""


class SendLimiter:
    """Decide whether a user may post one more message now."""

    def __init__(
        self, *, per_minute: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.per_minute = per_minute
        self.burst = burst
        self._rate = per_minute / 60.0
        self._clock = clock
        self._buckets: dict[int, TokenBucket] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> SendLimiter:
        """Build the limiter that KILO_MESSAGES_PER_MINUTE and KILO_MESSAGE_BURST describe."""
        return cls(per_minute=settings.messages_per_minute, burst=settings.message_burst)

    def check(self, user_id: int) -> None:
        """Spend one message of ``user_id``'s allowance, or raise RateLimitedError."""
        now = self._clock()
        bucket = self._buckets.get(user_id)
        if bucket is None:
            if len(self._buckets) >= PRUNE_ABOVE:
                self._prune(now)
            bucket = self._buckets[user_id] = TokenBucket(self._rate, self.burst, now=now)
        if bucket.take(now=now):
            return
        wait = bucket.retry_after(now=now)
        logger.info("user %s is over the message rate limit; retry in %.1f s", user_id, wait)
        raise RateLimitedError(
            f"user {user_id} sent more than {self.burst} messages in a row or more than "
            f"{self.per_minute:g} a minute; wait {math.ceil(wait)} s and send again",
            retry_after=wait,
        )

    def _prune(self, now: float) -> None:
        for user_id, bucket in list(self._buckets.items()):
            if bucket.is_full(now=now):
                del self._buckets[user_id]


class TypingLimiter:
    """Decide whether a typing event of a user in a conversation is published now.

    Typing events carry no more than "still typing", so a call within
    ``interval_seconds`` of the last allowed one for the same pair adds
    nothing and is turned down without an error.
    """

    def __init__(
        self,
        *,
        interval_seconds: float = TYPING_INTERVAL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not interval_seconds > 0:
            raise ValueError(
                f"interval_seconds must be above 0, got {interval_seconds!r}"
            )
        self.interval_seconds = interval_seconds
        self._clock = clock
        self._last_allowed: dict[tuple[int, str], float] = {}

    def allow(self, user_id: int, conversation_id: str) -> bool:
        """Return True and note the time if the pair may publish now, else False."""
        now = self._clock()
        key = (user_id, conversation_id)
        last = self._last_allowed.get(key)
        if last is not None and now - last < self.interval_seconds:
            return False
        if last is None and len(self._last_allowed) >= PRUNE_ABOVE:
            self._prune(now)
        self._last_allowed[key] = now
        return True

    def _prune(self, now: float) -> None:
        for key, last in list(self._last_allowed.items()):
            if now - last >= self.interval_seconds:
                del self._last_allowed[key]
