"""Read positions and unread counts (kilo_web.chat.read_state)."""

from __future__ import annotations

import datetime

import pytest
import sqlalchemy as sa
from sqlmodel import Session

from kilo_web.chat import read_state, service
from kilo_web.chat.content import text_blocks
from kilo_web.chat.errors import ConversationNotFoundError, InvalidLimitError, NotAMemberError
from kilo_web.chat.models import ConversationMember
from kilo_web.event_service.contexts import user_context

WINDOW = datetime.timedelta(hours=1)


class RecordingPublisher:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict]] = []

    async def publish(self, context: str, event: str, data: dict) -> None:
        self.events.append((context, event, data))


async def _post(session: Session, conversation_id: str, sender_id: int, count: int = 1) -> None:
    for index in range(count):
        await service.post_message(
            session,
            conversation_id=conversation_id,
            sender_id=sender_id,
            blocks=text_blocks(f"message {index}"),
            publisher=RecordingPublisher(),
        )


@pytest.fixture
def second_conversation(session, people, instance, conversation):
    """A second conversation of the same instance with alice and bob."""
    return service.create_conversation(
        session,
        instance_id=instance.id,
        title="Second",
        creator_id=people.alice.id,
        member_ids=[people.bob.id],
        conversation_id="conv-2",
    )


async def test_reading_one_conversation_keeps_others(session, people, conversation, second_conversation):
    bob = people.bob.id
    await _post(session, "conv-1", people.alice.id, 2)
    await _post(session, "conv-2", people.alice.id, 3)
    publisher = RecordingPublisher()

    result = await read_state.mark_read(session, "conv-1", bob, publisher=publisher, dispatch_window=WINDOW)

    assert result.changed is True
    assert read_state.unread_counts(session, bob) == {"conv-1": 0, "conv-2": 3}
    assert read_state.unread_total(session, bob) == 3
    assert result.summary.total == 3
    assert publisher.events[-1][0] == user_context(bob)
    assert publisher.events[-1][1] == read_state.UNREAD_CHANGED_EVENT
    assert publisher.events[-1][2]["conversations"] == {"conv-1": 0, "conv-2": 3}
    assert publisher.events[-1][2]["total"] == 3


async def test_mark_all_read_clears_everything(session, people, conversation, second_conversation):
    bob = people.bob.id
    await _post(session, "conv-1", people.alice.id, 2)
    await _post(session, "conv-2", people.alice.id, 3)

    result = await read_state.mark_all_read(session, bob, dispatch_window=WINDOW)

    assert result.changed is True
    assert read_state.unread_counts(session, bob) == {"conv-1": 0, "conv-2": 0}
    assert read_state.read_position(session, "conv-2", bob) == 3


async def test_mark_read_never_moves_backwards(session, people, conversation):
    bob = people.bob.id
    await _post(session, "conv-1", people.alice.id, 5)

    await read_state.mark_read(session, "conv-1", bob, 4, dispatch_window=WINDOW)
    publisher = RecordingPublisher()
    result = await read_state.mark_read(session, "conv-1", bob, 2, publisher=publisher, dispatch_window=WINDOW)

    assert result.changed is False
    assert publisher.events == []
    assert read_state.read_position(session, "conv-1", bob) == 4
    assert read_state.unread_counts(session, bob)["conv-1"] == 1


async def test_mark_read_caps_at_newest_message(session, people, conversation):
    bob = people.bob.id
    await _post(session, "conv-1", people.alice.id, 2)

    await read_state.mark_read(session, "conv-1", bob, 99, dispatch_window=WINDOW)
    await _post(session, "conv-1", people.alice.id, 1)

    assert read_state.read_position(session, "conv-1", bob) == 2
    assert read_state.unread_counts(session, bob)["conv-1"] == 1


async def test_unread_excludes_own_messages(session, people, conversation):
    await _post(session, "conv-1", people.alice.id, 2)
    await _post(session, "conv-1", people.bob.id, 1)

    assert read_state.unread_counts(session, people.alice.id) == {"conv-1": 1}
    assert read_state.unread_counts(session, people.bob.id) == {"conv-1": 2}


async def test_unread_ignores_messages_before_joining(session, people, conversation):
    await _post(session, "conv-1", people.alice.id, 3)

    service.add_conversation_member(session, conversation_id="conv-1", user_id=people.carol.id)
    await _post(session, "conv-1", people.alice.id, 1)

    assert read_state.unread_counts(session, people.carol.id) == {"conv-1": 1}


async def test_unread_drops_conversations_left(session, people, conversation):
    await _post(session, "conv-1", people.alice.id, 3)

    session.execute(
        sa.delete(ConversationMember).where(
            ConversationMember.conversation_id == "conv-1",
            ConversationMember.user_id == people.bob.id,
        )
    )
    session.commit()

    assert read_state.unread_counts(session, people.bob.id) == {}
    assert read_state.unread_total(session, people.bob.id) == 0


async def test_mark_read_rejects_bad_input(session, people, conversation):
    with pytest.raises(InvalidLimitError):
        await read_state.mark_read(session, "conv-1", people.bob.id, -1)
    with pytest.raises(InvalidLimitError):
        await read_state.mark_read(session, "conv-1", people.bob.id, True)
    with pytest.raises(NotAMemberError):
        await read_state.mark_read(session, "conv-1", people.carol.id)
    with pytest.raises(ConversationNotFoundError):
        await read_state.mark_read(session, "missing", people.bob.id)


async def test_mark_read_without_messages_changes_nothing(session, people, conversation):
    publisher = RecordingPublisher()

    result = await read_state.mark_read(session, "conv-1", people.bob.id, publisher=publisher, dispatch_window=WINDOW)

    assert result.changed is False
    assert publisher.events == []
    assert result.summary.counts == {"conv-1": 0}


async def test_failed_publish_keeps_read_position(session, people, conversation):
    class FailingPublisher:
        async def publish(self, context, event, data):
            raise ConnectionError("backplane unreachable")

    await _post(session, "conv-1", people.alice.id, 2)

    result = await read_state.mark_read(
        session, "conv-1", people.bob.id, publisher=FailingPublisher(), dispatch_window=WINDOW
    )

    assert result.changed is True
    assert read_state.read_position(session, "conv-1", people.bob.id) == 2
