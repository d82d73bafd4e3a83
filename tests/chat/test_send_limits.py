"""The per-user message limit: the bucket arithmetic, then over HTTP."""

from __future__ import annotations


import httpx
import pytest

from kilo_web.chat.errors import RateLimitedError
from kilo_web.chat.limits import SendLimiter
from tests.chat.conftest import auth_headers


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_limiter_allows_burst_then_refills():
    clock = Clock()
    limiter = SendLimiter(per_minute=6, burst=3, clock=clock)
    for _ in range(3):
        limiter.check(1)

    with pytest.raises(RateLimitedError) as caught:
        limiter.check(1)
    assert caught.value.retry_after == pytest.approx(10.0)
    assert "wait 10 s" in str(caught.value)
    assert "more than 3 messages in a row or more than 6 a minute" in str(caught.value)
    limiter.check(2)  # Another user has an allowance of their own.

    clock.now = 10.0
    limiter.check(1)
    with pytest.raises(RateLimitedError):
        limiter.check(1)


def test_limiter_forgets_only_idle_users(monkeypatch):
    monkeypatch.setattr("kilo_web.chat.limits.PRUNE_ABOVE", 2)
    clock = Clock()
    limiter = SendLimiter(per_minute=60, burst=2, clock=clock)
    limiter.check(1)
    limiter.check(1)
    limiter.check(2)
    clock.now = 1.0  # User 2 has refilled; user 1 has one token of two.

    limiter.check(3)

    assert set(limiter._buckets) == {1, 3}
    limiter.check(1)
    with pytest.raises(RateLimitedError):
        limiter.check(1)


def test_http_post_over_limit_is_429_with_retry_after(api_url, session, people, conversation):
    headers = auth_headers(session, people.alice)
    url = f"{api_url}/api/conversations/{conversation.id}/messages"
    statuses = [httpx.post(url, headers=headers, json={"text": f"n{n}"}).status_code
                for n in range(21)]

    assert statuses == [201] * 20 + [429]
    refused = httpx.post(url, headers=headers, json={"text": "one more"})
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(refused.headers["Retry-After"]) <= 2
    other = httpx.post(url, headers=auth_headers(session, people.bob), json={"text": "bob"})
    assert other.status_code == 201
