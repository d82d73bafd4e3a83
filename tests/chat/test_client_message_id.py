"""post_message with a client message id: repeats return the first message."""

from __future__ import annotations

import asyncio
import threading

import pytest
from sqlmodel import Session, select

from kilo_web.chat import service
from kilo_web.chat.content import text_blocks
from kilo_web.chat.errors import InvalidIdError
from kilo_web.chat.models import Message

from .test_chat_fanout import RecordingPublisher


async def post(session, conversation, sender, text, client_message_id, publisher):
    return await service.post_message(
        session,
        conversation_id=conversation.id,
        sender_id=sender.id,
        blocks=text_blocks(text),
        publisher=publisher,
        client_message_id=client_message_id,
    )


async def test_repeat_returns_first_message(session, people, conversation):
    publisher = RecordingPublisher()
    first = await post(session, conversation, people.alice, "hello", "c-1", publisher)
    again = await post(session, conversation, people.alice, "hello again", "c-1", publisher)
    assert again.id == first.id
    assert again.blocks == first.blocks
    assert again.client_message_id == "c-1"
    assert len(publisher.events) == 1
    rows = session.exec(select(Message).where(Message.conversation_id == conversation.id)).all()
    assert len(rows) == 1


async def test_same_id_other_sender_is_new(session, people, conversation):
    publisher = RecordingPublisher()
    mine = await post(session, conversation, people.alice, "a", "shared", publisher)
    theirs = await post(session, conversation, people.bob, "b", "shared", publisher)
    assert mine.id != theirs.id
    assert len(publisher.events) == 2


async def test_id_reused_in_other_conversation_rejected(session, people, instance, conversation):
    other = service.create_conversation(
        session, instance_id=instance.id, title="Other", creator_id=people.alice.id
    )
    publisher = RecordingPublisher()
    await post(session, conversation, people.alice, "a", "c-9", publisher)
    with pytest.raises(InvalidIdError, match="another conversation"):
        await post(session, other, people.alice, "b", "c-9", publisher)
    assert len(publisher.events) == 1


@pytest.mark.parametrize("bad", ["", "x" * 65, "has space", "slash/no"])
async def test_invalid_client_message_id(session, people, conversation, bad):
    with pytest.raises(InvalidIdError, match="invalid client message id"):
        await post(session, conversation, people.alice, "a", bad, RecordingPublisher())


def test_concurrent_repeats_store_one(engine, people, conversation):
    results: list[int] = []
    publishers = [RecordingPublisher() for _ in range(6)]
    barrier = threading.Barrier(len(publishers))
    errors: list[BaseException] = []

    def worker(publisher: RecordingPublisher) -> None:
        try:
            with Session(engine) as own_session:
                barrier.wait(timeout=10)
                view = asyncio.run(post(own_session, conversation, people.alice, "once",
                                        "race-1", publisher))
                results.append(view.id)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(p,)) for p in publishers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    assert len(set(results)) == 1
    assert len(results) == len(publishers)
    assert sum(len(p.events) for p in publishers) == 1
