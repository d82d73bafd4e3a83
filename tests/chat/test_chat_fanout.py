"""Publishing ``message.created`` after a message commits."""

from __future__ import annotations

import asyncio
import datetime
import logging
from typing import Any

import pytest
from sqlmodel import Session, select

from kilo_web.chat import service
from kilo_web.chat.content import text_blocks
from kilo_web.chat.errors import EmptyMessageError, NotAMemberError
from kilo_web.chat.models import Message
from kilo_web.chat.publisher import MESSAGE_CREATED_EVENT, Publisher


class RecordingPublisher:
    """Records every publish and, on request, what the database held at that moment."""

    def __init__(self, engine=None) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []
        self.committed_ids_at_publish: list[list[int]] = []
        self._engine = engine

    async def publish(self, context: str, event: str, data: dict[str, Any]) -> None:
        self.events.append((context, event, data))
        if self._engine is not None:
            # A separate connection reads only committed rows.
            with Session(self._engine) as other_session:
                ids = list(other_session.exec(select(Message.id)).all())
            self.committed_ids_at_publish.append(ids)


class FailingPublisher:
    """A publisher whose backplane is down."""

    def __init__(self) -> None:
        self.calls = 0

    async def publish(self, context: str, event: str, data: dict[str, Any]) -> None:
        self.calls += 1
        raise ConnectionError("backplane unreachable")


def test_publishers_satisfy_protocol():
    assert isinstance(RecordingPublisher(), Publisher)
    assert isinstance(FailingPublisher(), Publisher)


async def test_post_message_publishes_created_event(session, people, conversation):
    publisher = RecordingPublisher()

    view = await service.post_message(
        session,
        conversation_id=conversation.id,
        sender_id=people.bob.id,
        blocks=text_blocks("hello"),
        publisher=publisher,
    )

    assert len(publisher.events) == 1
    context, event, data = publisher.events[0]
    assert context == "/kiloclaw/sandbox-1/conv-1"
    assert event == MESSAGE_CREATED_EVENT
    assert data == {
        "messageId": view.id,
        "conversationId": "conv-1",
        "instanceId": "sandbox-1",
        "seq": 1,
        "senderId": people.bob.id,
        "senderDisplayName": "Bob",
        "senderIsBot": False,
        "blocks": [{"type": "text", "text": "hello"}],
        "createdAt": view.created_at.isoformat(),
        "clientMessageId": None,
        "editedAt": None,
        "deletedAt": None,
    }


async def test_event_timestamp_is_iso_utc(session, people, conversation):
    publisher = RecordingPublisher()

    await service.post_message(
        session,
        conversation_id=conversation.id,
        sender_id=people.bot.id,
        blocks=text_blocks("beep"),
        publisher=publisher,
    )

    created_at = datetime.datetime.fromisoformat(publisher.events[0][2]["createdAt"])
    assert created_at.utcoffset() == datetime.timedelta(0)
    assert publisher.events[0][2]["senderIsBot"] is True


async def test_publish_happens_after_commit(engine, session, people, conversation):
    publisher = RecordingPublisher(engine)

    view = await service.post_message(
        session,
        conversation_id=conversation.id,
        sender_id=people.alice.id,
        blocks=text_blocks("committed first"),
        publisher=publisher,
    )

    assert publisher.committed_ids_at_publish == [[view.id]]


async def test_publish_failure_keeps_message_and_logs(
    engine, session, people, conversation, caplog
):
    publisher = FailingPublisher()
    caplog.set_level(logging.ERROR, logger="kilo_web.chat.service")

    view = await service.post_message(
        session,
        conversation_id=conversation.id,
        sender_id=people.alice.id,
        blocks=text_blocks("still saved"),
        publisher=publisher,
    )

    assert publisher.calls == 1
    with Session(engine) as other_session:
        stored = other_session.get(Message, view.id)
    assert stored is not None
    assert stored.content == [{"type": "text", "text": "still saved"}]

    records = [r for r in caplog.records if r.name == "kilo_web.chat.service"]
    assert len(records) == 1
    message = records[0].getMessage()
    assert str(view.id) in message
    assert "conv-1" in message
    assert "sandbox-1" in message
    assert MESSAGE_CREATED_EVENT in message
    assert records[0].exc_info is not None
    assert isinstance(records[0].exc_info[1], ConnectionError)


async def test_next_post_works_after_publish_failure(session, people, conversation):
    await service.post_message(
        session,
        conversation_id=conversation.id,
        sender_id=people.alice.id,
        blocks=text_blocks("one"),
        publisher=FailingPublisher(),
    )
    publisher = RecordingPublisher()

    view = await service.post_message(
        session,
        conversation_id=conversation.id,
        sender_id=people.alice.id,
        blocks=text_blocks("two"),
        publisher=publisher,
    )

    assert view.seq == 2
    assert publisher.events[0][2]["seq"] == 2


@pytest.mark.parametrize(
    ("sender", "text", "error"),
    [("alice", " ", EmptyMessageError), ("carol", "hi", NotAMemberError)],
    ids=["empty", "non-member"],
)
async def test_rejected_post_publishes_nothing(session, people, conversation, sender, text, error):
    publisher = RecordingPublisher()

    with pytest.raises(error):
        await service.post_message(
            session,
            conversation_id=conversation.id,
            sender_id=getattr(people, sender).id,
            blocks=text_blocks(text),
            publisher=publisher,
        )

    assert publisher.events == []
    assert session.exec(select(Message)).all() == []


async def test_cancellation_during_publish_propagates(session, people, conversation):
    class CancelledPublisher:
        async def publish(self, context, event, data):
            raise asyncio.CancelledError()

    with pytest.raises(asyncio.CancelledError):
        await service.post_message(
            session,
            conversation_id=conversation.id,
            sender_id=people.alice.id,
            blocks=text_blocks("cancelled"),
            publisher=CancelledPublisher(),
        )

    assert len(session.exec(select(Message)).all()) == 1
