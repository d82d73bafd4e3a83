"""Editing and deleting messages and typing events in the chat service, without sockets."""

from __future__ import annotations

import datetime
import logging

import pytest
import sqlalchemy as sa
from sqlmodel import Session

from kilo_web.chat import service
from kilo_web.chat.content import MAX_MESSAGE_CHARS, text_blocks
from kilo_web.chat.errors import (
    ConversationNotFoundError,
    EmptyMessageError,
    InvalidContentError,
    InvalidIdError,
    MessageDeletedError,
    MessageNotFoundError,
    MessageTooLongError,
    NotAMemberError,
    NotMessageSenderError,
)
from kilo_web.chat.limits import TypingLimiter
from kilo_web.chat.models import Message
from kilo_web.chat.publisher import MESSAGE_DELETED_EVENT, MESSAGE_UPDATED_EVENT, TYPING_EVENT
from tests.chat.test_chat_fanout import FailingPublisher, RecordingPublisher

CONTEXT = "/kiloclaw/sandbox-1/conv-1"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def _post(session, sender, text="original", conversation_id="conv-1"):
    return await service.post_message(
        session, conversation_id=conversation_id, sender_id=sender.id,
        blocks=text_blocks(text), publisher=RecordingPublisher(),
    )


async def _edit(session, message, user, content, publisher=None):
    return await service.edit_message(
        session, conversation_id=message.conversation_id, message_id=message.id,
        user_id=user.id, content=content, publisher=publisher or RecordingPublisher(),
    )


async def _delete(session, message, user, publisher=None):
    return await service.delete_message(
        session, conversation_id=message.conversation_id, message_id=message.id,
        user_id=user.id, publisher=publisher or RecordingPublisher(),
    )


def _stored(engine, message_id) -> Message:
    # A separate session reads only committed rows.
    with Session(engine) as other:
        row = other.get(Message, message_id)
        assert row is not None
        other.expunge(row)
        return row


# Editing


async def test_edit_stores_content_and_edited_at(engine, session, people, conversation):
    posted = await _post(session, people.bob)

    edited = await _edit(session, posted, people.bob, text_blocks("fixed"))

    assert edited.blocks == ({"type": "text", "text": "fixed"},)
    assert edited.edited_at is not None
    assert edited.edited_at >= posted.created_at
    assert edited.edited_at.utcoffset() == datetime.timedelta(0)
    assert edited.deleted_at is None
    assert edited.seq == posted.seq
    stored = _stored(engine, posted.id)
    assert stored.content == [{"type": "text", "text": "fixed"}]
    assert stored.edited_at == edited.edited_at


async def test_edit_message_publishes_updated_event(session, people, conversation):
    posted = await _post(session, people.bob)
    publisher = RecordingPublisher()

    edited = await _edit(session, posted, people.bob, text_blocks("fixed"), publisher)

    assert len(publisher.events) == 1
    context, event, data = publisher.events[0]
    assert context == CONTEXT
    assert event == MESSAGE_UPDATED_EVENT
    assert data == {
        "messageId": posted.id,
        "conversationId": "conv-1",
        "instanceId": "sandbox-1",
        "seq": 1,
        "senderId": people.bob.id,
        "senderDisplayName": "Bob",
        "senderIsBot": False,
        "blocks": [{"type": "text", "text": "fixed"}],
        "createdAt": posted.created_at.isoformat(),
        "clientMessageId": None,
        "editedAt": edited.edited_at.isoformat(),
        "deletedAt": None,
    }


async def test_edit_message_publishes_after_commit(engine, session, people, conversation):
    posted = await _post(session, people.bob)
    seen: list[list[dict]] = []

    class CommitCheckingPublisher:
        async def publish(self, context, event, data):
            seen.append(_stored(engine, posted.id).content)

    await _edit(session, posted, people.bob, text_blocks("committed"), CommitCheckingPublisher())

    assert seen == [[{"type": "text", "text": "committed"}]]


async def test_edit_message_accepts_plain_string(session, people, conversation):
    posted = await _post(session, people.bob)

    edited = await _edit(session, posted, people.bob, "plain text")

    assert edited.blocks == ({"type": "text", "text": "plain text"},)


async def test_edit_message_keeps_markdown_blocks(session, people, conversation):
    posted = await _post(session, people.bob)
    blocks = [{"type": "markdown", "text": "**bold**"}, {"type": "text", "text": "tail"}]

    edited = await _edit(session, posted, people.bob, blocks)

    assert list(edited.blocks) == blocks


async def test_edit_with_same_content_is_noop(engine, session, people, conversation):
    posted = await _post(session, people.bob, "same")
    publisher = RecordingPublisher()

    result = await _edit(session, posted, people.bob, "same", publisher)

    assert publisher.events == []
    assert result.edited_at is None
    assert _stored(engine, posted.id).edited_at is None


@pytest.mark.parametrize(
    ("content", "error"),
    [
        ("   ", EmptyMessageError),
        ([], EmptyMessageError),
        ("x" * (MAX_MESSAGE_CHARS + 1), MessageTooLongError),
        ([{"type": "image", "text": "x"}], InvalidContentError),
        (42, InvalidContentError),
    ],
    ids=["blank", "no-blocks", "too-long", "unknown-block", "not-a-list"],
)
async def test_edit_message_rejects_invalid_content(engine, session, people, conversation,
                                                    content, error):
    posted = await _post(session, people.bob)
    publisher = RecordingPublisher()

    with pytest.raises(error):
        await _edit(session, posted, people.bob, content, publisher)

    assert publisher.events == []
    assert _stored(engine, posted.id).content == [{"type": "text", "text": "original"}]


async def test_edit_by_other_member_rejected(engine, session, people, conversation):
    posted = await _post(session, people.bob)
    publisher = RecordingPublisher()

    with pytest.raises(NotMessageSenderError) as caught:
        await _edit(session, posted, people.alice, "hijacked", publisher)

    assert f"message {posted.id}" in str(caught.value)
    assert "only its sender may edit it" in str(caught.value)
    assert publisher.events == []
    assert _stored(engine, posted.id).content == [{"type": "text", "text": "original"}]


async def test_edit_message_by_non_member_is_rejected(session, people, conversation):
    posted = await _post(session, people.bob)

    with pytest.raises(NotAMemberError):
        await _edit(session, posted, people.carol, "outsider")


async def test_edit_message_unknown_id_is_not_found(session, people, conversation):
    posted = await _post(session, people.bob)

    for message_id in (posted.id + 1000, 0, -1, 2**40):
        with pytest.raises(MessageNotFoundError):
            await service.edit_message(
                session, conversation_id="conv-1", message_id=message_id, user_id=people.bob.id,
                content="x", publisher=RecordingPublisher(),
            )


async def test_edit_message_non_integer_id_is_invalid(session, people, conversation):
    for message_id in ("1", True, 1.0):
        with pytest.raises(InvalidIdError) as caught:
            await service.edit_message(
                session, conversation_id="conv-1", message_id=message_id, user_id=people.bob.id,
                content="x", publisher=RecordingPublisher(),
            )
        assert "message id must be an integer" in str(caught.value)


async def test_edit_in_wrong_conversation_not_found(session, people, conversation):
    other = service.create_conversation(
        session, instance_id="sandbox-1", title="Other", creator_id=people.alice.id,
        member_ids=[people.bob.id], conversation_id="conv-2",
    )
    posted = await _post(session, people.bob, conversation_id=other.id)

    with pytest.raises(MessageNotFoundError):
        await service.edit_message(
            session, conversation_id="conv-1", message_id=posted.id, user_id=people.bob.id,
            content="moved", publisher=RecordingPublisher(),
        )


async def test_edit_message_unknown_conversation_is_not_found(session, people, conversation):
    with pytest.raises(ConversationNotFoundError):
        await service.edit_message(
            session, conversation_id="nope", message_id=1, user_id=people.bob.id,
            content="x", publisher=RecordingPublisher(),
        )


async def test_edit_message_after_delete_is_rejected(engine, session, people, conversation):
    posted = await _post(session, people.bob)
    await _delete(session, posted, people.bob)
    publisher = RecordingPublisher()

    with pytest.raises(MessageDeletedError) as caught:
        await _edit(session, posted, people.bob, "revived", publisher)

    assert "send a new message instead" in str(caught.value)
    assert publisher.events == []
    assert _stored(engine, posted.id).content == []


async def test_edit_message_loses_to_newer_edit(engine, session, people, conversation):
    posted = await _post(session, people.bob)
    later = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)
    # Another worker's edit with a later timestamp committed after this one read the row.
    with Session(engine) as other:
        other.exec(sa.update(Message).where(Message.id == posted.id)
                   .values(content=[{"type": "text", "text": "newer"}], edited_at=later))
        other.commit()
    publisher = RecordingPublisher()

    result = await _edit(session, posted, people.bob, "older", publisher)

    assert publisher.events == []
    assert result.blocks == ({"type": "text", "text": "newer"},)
    assert result.edited_at == later
    assert _stored(engine, posted.id).content == [{"type": "text", "text": "newer"}]


async def test_edit_publish_failure_keeps_edit(engine, session, people,
                                                                conversation, caplog):
    posted = await _post(session, people.bob)
    caplog.set_level(logging.ERROR, logger="kilo_web.chat.service")

    edited = await _edit(session, posted, people.bob, "kept", FailingPublisher())

    assert edited.blocks == ({"type": "text", "text": "kept"},)
    assert _stored(engine, posted.id).content == [{"type": "text", "text": "kept"}]
    messages = [r.getMessage() for r in caplog.records if r.name == "kilo_web.chat.service"]
    assert len(messages) == 1
    assert MESSAGE_UPDATED_EVENT in messages[0]
    assert str(posted.id) in messages[0]


async def test_bot_edits_own_message(session, people, conversation):
    posted = await _post(session, people.bot, "beep")

    edited = await _edit(session, posted, people.bot, "boop")

    assert edited.blocks == ({"type": "text", "text": "boop"},)
    assert edited.sender_is_bot is True


# Deleting


async def test_delete_clears_content(engine, session, people,
                                                                 conversation):
    posted = await _post(session, people.bob, "secret")

    deleted = await _delete(session, posted, people.bob)

    assert deleted.deleted_at is not None
    assert deleted.deleted_at.utcoffset() == datetime.timedelta(0)
    assert deleted.is_deleted
    assert deleted.blocks == ()
    assert deleted.seq == posted.seq
    stored = _stored(engine, posted.id)
    assert stored.content == []
    assert stored.deleted_at == deleted.deleted_at


async def test_delete_message_publishes_deleted_event(session, people, conversation):
    posted = await _post(session, people.bob)
    publisher = RecordingPublisher()

    deleted = await _delete(session, posted, people.bob, publisher)

    assert publisher.events == [(CONTEXT, MESSAGE_DELETED_EVENT, {
        "id": posted.id,
        "messageId": posted.id,
        "conversationId": "conv-1",
        "instanceId": "sandbox-1",
        "seq": 1,
        "deletedAt": deleted.deleted_at.isoformat(),
    })]


async def test_delete_message_twice_publishes_once(session, people, conversation):
    posted = await _post(session, people.bob)
    publisher = RecordingPublisher()
    first = await _delete(session, posted, people.bob, publisher)

    second = await _delete(session, posted, people.bob, publisher)

    assert [event for _, event, _ in publisher.events] == [MESSAGE_DELETED_EVENT]
    assert second.deleted_at == first.deleted_at
    assert second.blocks == ()


async def test_delete_by_other_member_rejected(engine, session, people, conversation):
    posted = await _post(session, people.bob)
    publisher = RecordingPublisher()

    with pytest.raises(NotMessageSenderError) as caught:
        await _delete(session, posted, people.alice, publisher)

    assert "only its sender may delete it" in str(caught.value)
    assert publisher.events == []
    assert _stored(engine, posted.id).deleted_at is None


async def test_delete_message_by_non_member_is_rejected(session, people, conversation):
    posted = await _post(session, people.bob)

    with pytest.raises(NotAMemberError):
        await _delete(session, posted, people.carol)


async def test_delete_message_unknown_id_is_not_found(session, people, conversation):
    with pytest.raises(MessageNotFoundError):
        await service.delete_message(
            session, conversation_id="conv-1", message_id=12345, user_id=people.bob.id,
            publisher=RecordingPublisher(),
        )


async def test_list_messages_shows_deleted_without_content(session, people, conversation):
    first = await _post(session, people.bob, "one")
    second = await _post(session, people.alice, "two")
    third = await _post(session, people.bob, "three")
    await _delete(session, second, people.alice)
    await _edit(session, third, people.bob, "three, edited")

    newest = service.list_messages(session, "conv-1")
    back = service.list_messages(session, "conv-1", before_seq=3, limit=1)
    forward = service.list_messages(session, "conv-1", after_seq=first.seq)

    assert [m.seq for m in newest] == [1, 2, 3]
    assert newest[1].blocks == ()
    assert newest[1].deleted_at is not None
    assert newest[1].to_event_data()["blocks"] == []
    assert newest[0].blocks == ({"type": "text", "text": "one"},)
    assert newest[0].edited_at is None
    assert newest[2].edited_at is not None
    assert newest[2].blocks == ({"type": "text", "text": "three, edited"},)
    assert [(m.seq, m.blocks) for m in back] == [(2, ())]
    assert [m.id for m in forward] == [second.id, third.id]
    assert forward[0].is_deleted


async def test_repeat_post_returns_deleted_message(session, people, conversation):
    posted = await service.post_message(
        session, conversation_id="conv-1", sender_id=people.bob.id,
        blocks=text_blocks("once"), publisher=RecordingPublisher(), client_message_id="c-1",
    )
    await _delete(session, posted, people.bob)
    publisher = RecordingPublisher()

    repeat = await service.post_message(
        session, conversation_id="conv-1", sender_id=people.bob.id,
        blocks=text_blocks("once"), publisher=publisher, client_message_id="c-1",
    )

    assert repeat.repeated
    assert repeat.id == posted.id
    assert repeat.is_deleted
    assert publisher.events == []


async def test_delete_then_post_keeps_seq_dense(session, people, conversation):
    posted = await _post(session, people.bob)
    await _delete(session, posted, people.bob)

    after = await _post(session, people.bob, "next")

    assert after.seq == posted.seq + 1


# Typing


async def test_publish_typing_publishes_ephemeral_event(engine, session, people, conversation):
    publisher = RecordingPublisher()

    published = await service.publish_typing(
        session, conversation_id="conv-1", user_id=people.bob.id, publisher=publisher,
    )

    assert published is True
    assert publisher.events == [(CONTEXT, TYPING_EVENT, {
        "conversationId": "conv-1",
        "userId": people.bob.id,
        "displayName": "Bob",
    })]
    with Session(engine) as other:
        assert other.exec(sa.select(sa.func.count()).select_from(Message)).one()[0] == 0


async def test_publish_typing_by_non_member_is_rejected(session, people, conversation):
    publisher = RecordingPublisher()

    with pytest.raises(NotAMemberError):
        await service.publish_typing(
            session, conversation_id="conv-1", user_id=people.carol.id, publisher=publisher,
        )

    assert publisher.events == []


async def test_publish_typing_unknown_conversation_is_not_found(session, people, conversation):
    with pytest.raises(ConversationNotFoundError):
        await service.publish_typing(
            session, conversation_id="missing", user_id=people.bob.id,
            publisher=RecordingPublisher(),
        )


async def test_publish_typing_drops_repeats(session, people, conversation):
    clock = Clock()
    limiter = TypingLimiter(interval_seconds=2.0, clock=clock)
    publisher = RecordingPublisher()

    async def typing(user) -> bool:
        return await service.publish_typing(
            session, conversation_id="conv-1", user_id=user.id, publisher=publisher,
            limiter=limiter,
        )

    results = [await typing(people.bob), await typing(people.bob), await typing(people.alice)]
    clock.now = 2.0
    results.append(await typing(people.bob))

    assert results == [True, False, True, True]
    assert [data["userId"] for _, _, data in publisher.events] == [
        people.bob.id, people.alice.id, people.bob.id,
    ]


async def test_publish_typing_failure_is_logged(session, people, conversation, caplog):
    caplog.set_level(logging.WARNING, logger="kilo_web.chat.service")

    published = await service.publish_typing(
        session, conversation_id="conv-1", user_id=people.bob.id, publisher=FailingPublisher(),
    )

    assert published is False
    assert f"failed to publish typing of user {people.bob.id} in conversation conv-1" in caplog.text


# The typing limiter


def test_typing_limiter_is_per_user_and_conversation():
    clock = Clock()
    limiter = TypingLimiter(interval_seconds=2.0, clock=clock)

    assert limiter.allow(1, "a") is True
    assert limiter.allow(1, "a") is False
    assert limiter.allow(1, "b") is True
    assert limiter.allow(2, "a") is True
    clock.now = 1.99
    assert limiter.allow(1, "a") is False
    clock.now = 2.0
    assert limiter.allow(1, "a") is True


def test_typing_limiter_forgets_only_idle_pairs(monkeypatch):
    monkeypatch.setattr("kilo_web.chat.limits.PRUNE_ABOVE", 2)
    clock = Clock()
    limiter = TypingLimiter(interval_seconds=2.0, clock=clock)
    limiter.allow(1, "a")
    clock.now = 1.0
    limiter.allow(2, "a")
    clock.now = 2.5  # (1, "a") is idle; (2, "a") allowed 1.5 s ago is not.

    limiter.allow(3, "a")

    assert set(limiter._last_allowed) == {(2, "a"), (3, "a")}
    assert limiter.allow(2, "a") is False


@pytest.mark.parametrize("interval", [0, -1.0])
def test_typing_limiter_rejects_non_positive_interval(interval):
    with pytest.raises(ValueError, match="interval_seconds must be above 0"):
        TypingLimiter(interval_seconds=interval)
