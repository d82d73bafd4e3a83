"""Property: over random posts, dispatch crashes and retries, reads and membership changes,
every badge bucket equals the unread messages it covers and no message raises a badge twice."""

from __future__ import annotations

import asyncio
import shutil
import uuid
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlmodel import Session

from kilo_web.chat import read_state, service
from kilo_web.chat.content import text_blocks
from kilo_web.chat.database import make_engine, upgrade_database
from kilo_web.chat.models import ConversationMember, utc_now
from kilo_web.notifications import accounting
from kilo_web.notifications.accounting import DispatchStep
from kilo_web.notifications.badges import bucket_for_conversation
from kilo_web.notifications.devices import register_expo_device
from kilo_web.notifications.dispatcher import PushDispatcher
from kilo_web.notifications.expo import ExpoTransport
from kilo_web.notifications.models import DeviceKind
from tests.notifications.conftest import TTL, RecordingPublisher, expo_token, insert_user
from tests.notifications.push_servers import ExpoServer

HUMANS = 3
CONVERSATIONS = [("i-one", "c-a"), ("i-one", "c-b"), ("i-two", "c-c")]


class SimulatedCrash(Exception):
    pass


users = st.integers(0, HUMANS)  # index HUMANS is the bot
conversations = st.integers(0, len(CONVERSATIONS) - 1)
operations = st.one_of(
    st.tuples(st.just("post"), conversations, users),
    st.tuples(st.just("dispatch"), st.integers(0, 50),
              st.sampled_from([None, *DispatchStep]), st.integers(0, HUMANS - 1)),
    st.tuples(st.just("read"), st.integers(0, HUMANS - 1), conversations,
              st.one_of(st.none(), st.integers(0, 12))),
    st.tuples(st.just("read_all"), st.integers(0, HUMANS - 1)),
    st.tuples(st.just("join"), st.integers(0, HUMANS - 1), conversations),
    st.tuples(st.just("leave"), st.integers(0, HUMANS - 1), conversations),
    st.tuples(st.just("view"), st.integers(0, HUMANS - 1), conversations, st.booleans()),
)


def run_scenario(engine: sa.Engine, expo: ExpoServer, ops: list[tuple[Any, ...]]) -> None:
    asyncio.run(_scenario(engine, expo, ops))


async def _scenario(engine: sa.Engine, expo: ExpoServer, ops: list[tuple[Any, ...]]) -> None:
    session_factory: Callable[[], Session] = lambda: Session(engine)  # noqa: E731
    run_id = uuid.uuid4().hex[:8]
    with session_factory() as session:
        humans = [insert_user(session, f"user{i}-{run_id}") for i in range(HUMANS)]
        bot = insert_user(session, f"bot-{run_id}", is_bot=True)
        people = humans + [bot]
        for instance_id in {i for i, _ in CONVERSATIONS}:
            service.create_instance(session, owner_id=humans[0], label=instance_id,
                                    instance_id=f"{instance_id}-{run_id}")
        for instance_id, conversation_id in CONVERSATIONS:
            service.create_conversation(
                session, instance_id=f"{instance_id}-{run_id}", title=conversation_id,
                creator_id=humans[0], member_ids=people[1:],
                conversation_id=f"{conversation_id}-{run_id}",
            )
        for index, user_id in enumerate(humans):
            register_expo_device(session, user_id=user_id, token=expo_token(f"{run_id}-{index}"))
    conversation_ids = [f"{c}-{run_id}" for _, c in CONVERSATIONS]
    token_owner = {expo_token(f"{run_id}-{i}"): user_id for i, user_id in enumerate(humans)}

    viewing: dict[str, set[int]] = defaultdict(set)

    async def viewers(instance_id: str, conversation_id: str) -> set[int]:
        return set(viewing[conversation_id])

    transport = ExpoTransport(api_url=expo.api_url, timeout=5.0)
    messages: list[int] = []
    increments: dict[tuple[int, int], int] = defaultdict(int)
    try:
        for op in ops:
            await _apply(op, session_factory, transport, viewers, viewing, humans, people,
                         conversation_ids, messages, increments)
            _check_buckets_match_definition(session_factory, humans)
        # Quiescence: every message's dispatch runs to completion once more.
        for message_id in messages:
            await _dispatcher(session_factory, transport, viewers).send_push_for_conversation(message_id)
        _check_buckets_match_definition(session_factory, humans)
        _check_badge_equals_unread(session_factory, humans)
    finally:
        await transport.aclose()

    assert all(count <= 1 for count in increments.values()), dict(increments)
    _check_same_number_per_message(expo, token_owner)


def _dispatcher(session_factory, transport, viewers, checkpoint=None) -> PushDispatcher:
    return PushDispatcher(
        session_factory=session_factory, transports={DeviceKind.EXPO: transport}, window=TTL,
        viewers=viewers, publisher=RecordingPublisher(), max_attempts=1, checkpoint=checkpoint,
    )


def _badges(session_factory, humans) -> dict[int, int]:
    with session_factory() as session:
        return {u: accounting.device_badge(session, u) for u in humans}


async def _apply(op, session_factory, transport, viewers, viewing, humans, people,
                 conversation_ids, messages, increments) -> None:
    kind = op[0]
    with session_factory() as session:
        if kind == "post":
            conversation_id, sender = conversation_ids[op[1]], people[op[2]]
            if service.is_conversation_member(session, conversation_id, sender):
                view = await service.post_message(
                    session, conversation_id=conversation_id, sender_id=sender,
                    blocks=text_blocks("x"), publisher=RecordingPublisher(),
                )
                messages.append(view.id)
        elif kind == "dispatch" and messages:
            message_id = messages[op[1] % len(messages)]
            step, crash_user = op[2], humans[op[3]]

            def checkpoint(current, message, recipient):
                if current is step and recipient == crash_user:
                    raise SimulatedCrash(current.value)

            before = _badges(session_factory, humans)
            try:
                await _dispatcher(session_factory, transport, viewers, checkpoint).send_push_for_conversation(message_id)
            except SimulatedCrash:
                pass
            after = _badges(session_factory, humans)
            for user_id in humans:
                delta = after[user_id] - before[user_id]
                assert delta <= 1, f"message {message_id} raised user {user_id} by {delta}"
                increments[(message_id, user_id)] += max(delta, 0)
        elif kind == "read":
            user_id, conversation_id, up_to = humans[op[1]], conversation_ids[op[2]], op[3]
            if service.is_conversation_member(session, conversation_id, user_id):
                await read_state.mark_read(session, conversation_id, user_id, up_to, dispatch_window=TTL)
        elif kind == "read_all":
            await read_state.mark_all_read(session, humans[op[1]], dispatch_window=TTL)
        elif kind == "join":
            service.add_conversation_member(session, conversation_id=conversation_ids[op[2]],
                                            user_id=humans[op[1]])
        elif kind == "leave":
            user_id, conversation_id = humans[op[1]], conversation_ids[op[2]]
            session.execute(sa.delete(ConversationMember).where(
                ConversationMember.conversation_id == conversation_id,
                ConversationMember.user_id == user_id,
            ))
            session.commit()
            await read_state.refresh_unread(session, user_id, dispatch_window=TTL)
            viewing[conversation_id].discard(user_id)
        elif kind == "view":
            user_id, conversation_id, open_now = humans[op[1]], conversation_ids[op[2]], op[3]
            if open_now and service.is_conversation_member(session, conversation_id, user_id):
                viewing[conversation_id].add(user_id)
            else:
                viewing[conversation_id].discard(user_id)


def _check_buckets_match_definition(session_factory, humans) -> None:
    """The stored buckets equal the counted unread messages, after every operation."""
    with session_factory() as session:
        for user_id in humans:
            stored = accounting.bucket_counts(session, user_id)
            expected = {b: n for b, n in accounting.counted_unread_by_bucket(
                session, user_id, now=utc_now(), window=TTL).items() if n}
            assert stored == expected, f"user {user_id}"


def _check_badge_equals_unread(session_factory, humans) -> None:
    """Once every dispatch completed, each bucket equals the unread count of its conversations."""
    with session_factory() as session:
        for user_id in humans:
            unread_by_bucket: dict[str, int] = defaultdict(int)
            rows = session.execute(read_state.unread_messages_query(user_id)).all()
            for conversation_id, instance_id, count in rows:
                if count:
                    unread_by_bucket[bucket_for_conversation(instance_id, conversation_id)] += count
            assert accounting.bucket_counts(session, user_id) == dict(unread_by_bucket)
            assert accounting.device_badge(session, user_id) == read_state.unread_total(session, user_id)


def _check_same_number_per_message(expo: ExpoServer, token_owner: dict[str, int]) -> None:
    numbers: dict[tuple[int, int], set[int]] = defaultdict(set)
    for message in expo.accepted_messages():
        if message["to"] in token_owner and message["data"].get("type") == "message":
            numbers[(message["data"]["messageId"], token_owner[message["to"]])].add(message["badge"])
    assert all(len(badges) == 1 for badges in numbers.values()), dict(numbers)


@pytest.fixture(scope="module")
def template_database(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("badge-template") / "template.db"
    upgrade_database(f"sqlite:///{path}")
    return path


@pytest.fixture(scope="module")
def shared_expo_server():
    server = ExpoServer()
    server.start()
    yield server
    server.stop()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(operations, min_size=1, max_size=30))
def test_badge_equals_unread_property(ops, template_database, shared_expo_server, tmp_path_factory):
    path = tmp_path_factory.mktemp("badge-property") / "kilo_web.db"
    shutil.copy(template_database, path)
    engine = make_engine(f"sqlite:///{path}")
    try:
        run_scenario(engine, shared_expo_server, ops)
    finally:
        engine.dispose()
        path.unlink()
