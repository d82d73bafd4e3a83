"""Token buckets for rate limits: event-service frames and chat messages."""

from __future__ import annotations


class TokenBucket:
    """Allow ``rate`` actions per second on average and bursts of ``burst``.

    Pure: the caller passes the current time, so tests need no clock.
    """

    __slots__ = ("rate", "burst", "_tokens", "_updated")

    def __init__(self, rate: float, burst: float, *, now: float) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"invalid token bucket: rate={rate} must be > 0 and burst={burst} >= 1")
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._updated = now

    def take(self, *, now: float, cost: float = 1) -> bool:
        """Spend ``cost`` tokens if there are that many; return whether the action is allowed."""
        elapsed = max(0.0, now - self._updated)
        self._tokens = min(self.burst, self._tokens + elapsed * self.rate)
        self._updated = now
        if self._tokens >= cost:
            self._tokens -= cost
            return True
        return False

    def retry_after(self, *, now: float) -> float:
        """Return the seconds until the next token, 0 if one is there now."""
        tokens = min(self.burst, self._tokens + max(0.0, now - self._updated) * self.rate)
        return 0.0 if tokens >= 1 else (1 - tokens) / self.rate

    def is_full(self, *, now: float) -> bool:
        """Tell whether the bucket has refilled completely, so forgetting it changes nothing."""
        return self._tokens + max(0.0, now - self._updated) * self.rate >= self.burst
