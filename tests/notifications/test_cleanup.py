"""The persisted cleanup timer of push records (kilo_web.notifications.cleanup)."""

from __future__ import annotations

import datetime

import sqlalchemy as sa

from kilo_web.notifications import accounting
from kilo_web.notifications.cleanup import CleanupTimer, arm_cleanup, next_cleanup_at, run_cleanup
from kilo_web.notifications.dispatcher import load_message_context
from kilo_web.notifications.models import PushDelivery
from tests.notifications.conftest import TTL, ManualClock, post, wait_until

STEP = TTL / 4
"""Time between two messages under steady load: four per TTL."""


def _clock_before_messages() -> ManualClock:
    # Messages get real creation times; a clock that starts 12 hours earlier
    # keeps every message inside its claim window for the whole test.
    return ManualClock(datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=12))


def _records(session_factory) -> list[datetime.datetime]:
    with session_factory() as session:
        return sorted(session.execute(sa.select(PushDelivery.expires_at)).scalars())


def _armed(session_factory) -> datetime.datetime | None:
    with session_factory() as session:
        return next_cleanup_at(session)


async def _claim_new_message(session, session_factory, world, clock, timer=None) -> None:
    message_id = await post(session, world, world.general, world.alice)
    with session_factory() as claim_session:
        facts = load_message_context(claim_session, message_id).facts
        accounting.claim_delivery(claim_session, facts, world.bob, now=clock.now(), window=TTL)
    if timer is not None:
        timer.notify_armed()


def test_arm_never_moves_later(session):
    start = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)

    first = arm_cleanup(session, start + TTL, start)
    later = arm_cleanup(session, start + 2 * TTL, start)
    earlier = arm_cleanup(session, start + TTL / 2, start)
    session.commit()

    assert first == start + TTL
    assert later == start + TTL
    assert earlier == start + TTL / 2
    assert next_cleanup_at(session) == start + TTL / 2


def test_run_before_due_does_nothing(session, session_factory, world):
    start = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
    arm_cleanup(session, start + TTL, start)
    session.commit()

    result = run_cleanup(session, start + TTL / 2)

    assert result.ran is False
    assert result.next_run_at == start + TTL


async def test_run_disarms_when_store_is_empty(session, session_factory, world):
    clock = _clock_before_messages()
    await _claim_new_message(session, session_factory, world, clock)

    with session_factory() as cleanup_session:
        result = run_cleanup(cleanup_session, clock.now() + TTL)

    assert result.ran is True
    assert result.deleted == 1
    assert result.next_run_at is None
    assert _armed(session_factory) is None
    assert _records(session_factory) == []


async def test_steady_load_keeps_schedule_and_bound(session, session_factory, world):
    clock = _clock_before_messages()
    timer = CleanupTimer(session_factory, clock=clock, poll_seconds=10 * TTL.total_seconds())
    timer.start()
    try:
        first_write = clock.now()
        await _claim_new_message(session, session_factory, world, clock, timer)
        assert _armed(session_factory) == first_write + TTL

        max_records = 0
        for step in range(1, 41):
            clock.advance(STEP.total_seconds())
            await _claim_new_message(session, session_factory, world, clock, timer)
            now = clock.now()
            # The timer catches up: nothing expired is left and the next run is in the future.
            await wait_until(
                lambda: all(expiry > now for expiry in _records(session_factory))
                and (_armed(session_factory) or now + TTL) > now,
                message=f"cleanup at step {step}",
            )
            records = _records(session_factory)
            max_records = max(max_records, len(records))
            # Armed for the earliest remaining expiry: later writes never pushed it back.
            assert _armed(session_factory) == records[0]
            if step < 4:
                assert _armed(session_factory) == first_write + TTL
    finally:
        await timer.stop()

    assert timer.runs >= 36
    assert max_records <= 4


async def test_timer_survives_restart(session, session_factory, world):
    clock = _clock_before_messages()
    timer = CleanupTimer(session_factory, clock=clock, poll_seconds=10 * TTL.total_seconds())
    timer.start()
    await _claim_new_message(session, session_factory, world, clock, timer)
    armed = _armed(session_factory)
    await timer.stop()

    # The process is down while the run falls due.
    clock.advance((TTL + datetime.timedelta(minutes=5)).total_seconds())
    assert _records(session_factory) != []

    restarted = CleanupTimer(session_factory, clock=clock, poll_seconds=10 * TTL.total_seconds())
    restarted.start()
    try:
        await wait_until(lambda: restarted.runs == 1, message="cleanup after restart")
    finally:
        await restarted.stop()

    assert armed is not None
    assert _records(session_factory) == []
    assert _armed(session_factory) is None


async def test_restarted_timer_waits_for_persisted_time(session, session_factory, world):
    clock = _clock_before_messages()
    await _claim_new_message(session, session_factory, world, clock)
    clock.advance(STEP.total_seconds())
    await _claim_new_message(session, session_factory, world, clock)
    first_expiry, second_expiry = _records(session_factory)

    timer = CleanupTimer(session_factory, clock=clock, poll_seconds=10 * TTL.total_seconds())
    timer.start()
    try:
        await wait_until(lambda: clock.sleeping == 1, message="timer asleep")
        assert timer.runs == 0

        clock.advance((first_expiry - clock.now()).total_seconds())
        await wait_until(lambda: timer.runs == 1, message="first run")
        assert _records(session_factory) == [second_expiry]
        assert _armed(session_factory) == second_expiry

        clock.advance((second_expiry - clock.now()).total_seconds())
        await wait_until(lambda: timer.runs == 2, message="second run")
    finally:
        await timer.stop()

    assert _records(session_factory) == []
