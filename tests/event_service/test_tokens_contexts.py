"""Token minting and verification, context builders, and reconnect backoff."""

import datetime as dt

import pytest

from kilo_web.event_service import contexts
from kilo_web.event_service.client import backoff_delay
from kilo_web.event_service.tokens import InvalidToken, decode_token, issue_token

SECRET = "s" * 48


def test_issue_token_claims_round_trip():
    now = dt.datetime.now(dt.UTC)
    token, expires_at = issue_token(SECRET, "42", token_source="mobile", version=3, now=now)
    claims = decode_token(SECRET, token)
    assert claims.user_id == "42"
    assert claims.token_source == "mobile"
    assert claims.version == 3
    assert claims.expires_at == expires_at
    assert dt.timedelta(minutes=59) < expires_at - now <= dt.timedelta(hours=1)


def test_decode_rejects_expired():
    past = dt.datetime.now(dt.UTC) - dt.timedelta(hours=3)
    token, _ = issue_token(SECRET, "1", now=past)
    with pytest.raises(InvalidToken, match="expired"):
        decode_token(SECRET, token)


def test_decode_rejects_other_secret():
    token, _ = issue_token("o" * 48, "1")
    with pytest.raises(InvalidToken, match="invalid"):
        decode_token(SECRET, token)


def test_context_builders_compose():
    assert contexts.kiloclaw_instance_context("s1") == "/kiloclaw/s1"
    assert contexts.kiloclaw_conversation_context("s1", "c1") == "/kiloclaw/s1/c1"
    assert contexts.kiloclaw_instance_presence_context("s1") == "/presence/kiloclaw/s1"
    assert contexts.kiloclaw_conversation_presence_context("s1", "c1") == "/presence/kiloclaw/s1/c1"
    assert contexts.platform_presence_context() == "/presence/platform"
    assert contexts.is_presence_context("/presence/kiloclaw/s1")
    assert not contexts.is_presence_context("/presences")


@pytest.mark.parametrize("bad", ["", "a/b", "a b", "x" * 65, "é"])
def test_context_builders_reject_bad_segment(bad):
    with pytest.raises(contexts.InvalidContextError, match="sandbox id"):
        contexts.kiloclaw_instance_context(bad)


def test_backoff_delay_is_capped_and_jittered():
    delays = [backoff_delay(attempt, minimum=0.5, maximum=30) for attempt in range(40)]
    assert all(0 <= delay <= 30 for delay in delays)
    assert all(delay <= 0.5 * 2**attempt for attempt, delay in enumerate(delays))
    assert len(set(delays)) > 1
