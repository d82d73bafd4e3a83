"""Exactly-once badge counting when a dispatch crashes, times out or runs again."""

from __future__ import annotations

import concurrent.futures

import pytest
import sqlalchemy as sa
from sqlmodel import Session

from kilo_web.chat import read_state
from kilo_web.chat.models import utc_now
from kilo_web.notifications import accounting
from kilo_web.notifications.accounting import DispatchStep
from kilo_web.notifications.devices import register_expo_device, register_webpush_device
from kilo_web.notifications.dispatcher import load_message_context
from kilo_web.notifications.models import DeliveryState, PushDelivery
from tests.notifications.conftest import TTL, badge_of, buckets_of, expo_token, post
from tests.notifications.push_servers import Fault


class SimulatedCrash(Exception):
    """Raised by a checkpoint to stop a dispatch as a process crash would."""


def crash_at(step: DispatchStep, recipient_id: int):
    def checkpoint(current: DispatchStep, message_id: int, recipient: int) -> None:
        if current is step and recipient == recipient_id:
            raise SimulatedCrash(f"crash {step.value} for message {message_id}")

    return checkpoint


def _record(session_factory, message_id, recipient_id):
    with session_factory() as session:
        return session.execute(
            sa.select(PushDelivery).where(
                PushDelivery.message_id == message_id, PushDelivery.recipient_id == recipient_id
            )
        ).scalar_one_or_none()


def _unread_total(session_factory, user_id):
    with session_factory() as session:
        return read_state.unread_total(session, user_id)


@pytest.mark.parametrize("step", list(DispatchStep), ids=[s.value for s in DispatchStep])
async def test_crash_then_retry_counts_once(step, session, session_factory, world, make_dispatcher, expo_server):
    register_expo_device(session, user_id=world.bob, token=expo_token("bob"))
    message_id = await post(session, world, world.general, world.alice)

    with pytest.raises(SimulatedCrash):
        await make_dispatcher(checkpoint=crash_at(step, world.bob)).send_push_for_conversation(message_id)
    report = await make_dispatcher().send_push_for_conversation(message_id)

    assert report.delivered == [world.bob]
    assert badge_of(session_factory, world.bob) == 1
    assert _unread_total(session_factory, world.bob) == 1
    record = _record(session_factory, message_id, world.bob)
    assert record.state == DeliveryState.DELIVERED.value
    assert record.badge == 1
    badges_sent = [m["badge"] for m in expo_server.accepted_messages()]
    sent_before_crash = 1 if step in (DispatchStep.AFTER_SEND, DispatchStep.BEFORE_DELIVERED) else 0
    assert badges_sent == [1] * (sent_before_crash + 1)
    assert report.counted == ([] if step is not DispatchStep.AFTER_CLAIM else [world.bob])


@pytest.mark.parametrize("step", list(DispatchStep), ids=[s.value for s in DispatchStep])
async def test_crash_between_messages_keeps_numbers(step, session, session_factory, world, make_dispatcher, expo_server):
    register_expo_device(session, user_id=world.bob, token=expo_token("bob"))
    first = await post(session, world, world.general, world.alice, "first")
    second = await post(session, world, world.random, world.carol, "second")

    with pytest.raises(SimulatedCrash):
        await make_dispatcher(checkpoint=crash_at(step, world.bob)).send_push_for_conversation(first)
    await make_dispatcher().send_push_for_conversation(second)
    await make_dispatcher().send_push_for_conversation(first)
    await make_dispatcher().send_push_for_conversation(first)

    assert badge_of(session_factory, world.bob) == 2
    assert _unread_total(session_factory, world.bob) == 2
    first_badges = [m["badge"] for m in expo_server.accepted_messages() if m["data"]["messageId"] == first]
    second_badges = [m["badge"] for m in expo_server.accepted_messages() if m["data"]["messageId"] == second]
    # A crash before the commit leaves nothing, so the second message is counted first.
    expected_first = 2 if step is DispatchStep.AFTER_CLAIM else 1
    assert set(first_badges) == {expected_first}
    assert second_badges == [3 - expected_first]


async def test_provider_timeout_after_accept_retries_same_badge(session, session_factory, world, make_dispatcher, expo_server):
    register_expo_device(session, user_id=world.bob, token=expo_token("bob"))
    expo_server.faults.append(Fault(stall=True))
    message_id = await post(session, world, world.general, world.alice)

    report = await make_dispatcher(max_attempts=3).send_push_for_conversation(message_id)

    assert report.delivered == [world.bob]
    # The stalled request was accepted by the provider, then the client timed out and retried.
    assert [m["badge"] for m in expo_server.accepted_messages()] == [1, 1]
    assert badge_of(session_factory, world.bob) == 1
    assert buckets_of(session_factory, world.bob) == {"instance:sandbox-1": 1}
    record = _record(session_factory, message_id, world.bob)
    assert record.attempts == 2
    assert record.state == DeliveryState.DELIVERED.value


async def test_webpush_timeout_after_accept_retries_same_badge(session, session_factory, world, make_dispatcher, webpush_server):
    subscription = webpush_server.subscribe()
    register_webpush_device(
        session, user_id=world.bob, endpoint=subscription.endpoint,
        p256dh=subscription.p256dh, auth=subscription.auth, allowed_origins=[webpush_server.origin],
    )
    webpush_server.faults.append(Fault(stall=True))
    message_id = await post(session, world, world.general, world.alice)

    report = await make_dispatcher(max_attempts=2).send_push_for_conversation(message_id)

    assert report.delivered == [world.bob]
    payloads = webpush_server.payloads_for(subscription)
    assert [p["badge"] for p in payloads] == [1, 1]
    # The same Topic lets the push service replace the first copy if it is still queued.
    topics = {d.headers.get("topic") for d in webpush_server.deliveries}
    assert topics == {f"m{message_id}"}
    assert badge_of(session_factory, world.bob) == 1


@pytest.mark.parametrize("status", [500, 502, 429])
async def test_provider_error_then_success(status, session, session_factory, world, make_dispatcher, expo_server):
    register_expo_device(session, user_id=world.bob, token=expo_token("bob"))
    expo_server.faults.append(Fault(status=status, retry_after="1"))
    message_id = await post(session, world, world.general, world.alice)

    report = await make_dispatcher(max_attempts=2).send_push_for_conversation(message_id)

    assert report.delivered == [world.bob]
    assert [s.status for s in expo_server.sends] == [status, 200]
    assert [m["badge"] for m in expo_server.accepted_messages()] == [1]
    assert badge_of(session_factory, world.bob) == 1


async def test_exhausted_retries_stay_pending_then_resend(session, session_factory, world, make_dispatcher, expo_server):
    register_expo_device(session, user_id=world.bob, token=expo_token("bob"))
    expo_server.faults.extend([Fault(status=503), Fault(status=503)])
    message_id = await post(session, world, world.general, world.alice)

    report = await make_dispatcher(max_attempts=2).send_push_for_conversation(message_id)

    assert report.failed == [world.bob]
    assert _record(session_factory, message_id, world.bob).state == DeliveryState.PENDING.value

    [resent] = await make_dispatcher().resend_pending()

    assert resent.delivered == [world.bob]
    assert [m["badge"] for m in expo_server.accepted_messages()] == [1]
    assert badge_of(session_factory, world.bob) == 1


async def test_rejected_push_is_not_retried(session, session_factory, world, make_dispatcher, expo_server):
    register_expo_device(session, user_id=world.bob, token=expo_token("bob"))
    expo_server.faults.append(Fault(status=400))
    message_id = await post(session, world, world.general, world.alice)

    report = await make_dispatcher(max_attempts=3).send_push_for_conversation(message_id)

    assert report.delivered == [world.bob]
    assert len(expo_server.sends) == 1


async def test_running_the_job_again_sends_nothing(session, session_factory, world, make_dispatcher, expo_server):
    register_expo_device(session, user_id=world.bob, token=expo_token("bob"))
    message_id = await post(session, world, world.general, world.alice)
    dispatcher = make_dispatcher()

    await dispatcher.send_push_for_conversation(message_id)
    again = await dispatcher.send_push_for_conversation(message_id)

    assert again.counted == []
    assert again.delivered == []
    assert len(expo_server.accepted_messages()) == 1
    assert badge_of(session_factory, world.bob) == 1


async def test_retry_after_read_is_skipped(session, session_factory, world, make_dispatcher, expo_server):
    register_expo_device(session, user_id=world.bob, token=expo_token("bob"))
    message_id = await post(session, world, world.general, world.alice)
    with pytest.raises(SimulatedCrash):
        await make_dispatcher(
            checkpoint=crash_at(DispatchStep.AFTER_INCREMENT, world.bob)
        ).send_push_for_conversation(message_id)

    with session_factory() as reader:
        await read_state.mark_read(reader, world.general, world.bob, dispatch_window=TTL)
    report = await make_dispatcher().send_push_for_conversation(message_id)

    assert report.skipped == [world.bob]
    assert expo_server.accepted_messages() == []
    assert badge_of(session_factory, world.bob) == 0
    assert _record(session_factory, message_id, world.bob).state == DeliveryState.SKIPPED.value


def _claim_in_thread(engine, message_id, recipient_id, now):
    with Session(engine) as session:
        facts = load_message_context(session, message_id).facts
        return accounting.claim_delivery(session, facts, recipient_id, now=now, window=TTL)


async def test_concurrent_claims_count_once(engine, session, session_factory, world):
    message_id = await post(session, world, world.general, world.alice)
    now = utc_now()
    with concurrent.futures.ThreadPoolExecutor(max_workers=6) as pool:
        claims = list(pool.map(lambda _: _claim_in_thread(engine, message_id, world.bob, now), range(6)))

    assert sum(claim.created for claim in claims) == 1
    assert {claim.badge for claim in claims} == {1}
    assert badge_of(session_factory, world.bob) == 1
