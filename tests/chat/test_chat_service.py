"""The chat service against a migrated SQLite file."""

from __future__ import annotations

import datetime
import threading

import pytest
from sqlmodel import Session, select

from kilo_web.chat import service
from kilo_web.chat.content import MAX_MESSAGE_CHARS, text_blocks
from kilo_web.chat.errors import (
    AlreadyExistsError,
    ConversationNotFoundError,
    EmptyMessageError,
    InstanceNotFoundError,
    InvalidIdError,
    InvalidLimitError,
    InvalidNameError,
    MessageTooLongError,
    NotAMemberError,
    UserNotFoundError,
)
from kilo_web.chat.models import Conversation, Message

UNKNOWN_USER_ID = 999_999


def _post(session, conversation_id, sender_id, text):
    return service.create_message(
        session, conversation_id=conversation_id, sender_id=sender_id, blocks=text_blocks(text)
    )


# Instances


def test_create_instance_adds_owner_as_member(session, people):
    instance = service.create_instance(session, owner_id=people.alice.id, label="  Lab  ")

    assert instance.label == "Lab"
    assert instance.owner_id == people.alice.id
    assert len(instance.id) == 32
    assert service.is_instance_member(session, instance.id, people.alice.id)
    assert not service.is_instance_member(session, instance.id, people.bob.id)


def test_create_instance_timestamp_is_aware_utc(session, people):
    before = datetime.datetime.now(datetime.timezone.utc)

    instance = service.create_instance(session, owner_id=people.alice.id, label="Lab")
    session.expire_all()
    stored = service.get_instance(session, instance.id)

    assert stored.created_at.tzinfo == datetime.timezone.utc
    assert before <= stored.created_at <= datetime.datetime.now(datetime.timezone.utc)


def test_create_instance_accepts_given_id(session, people):
    instance = service.create_instance(
        session, owner_id=people.alice.id, label="Lab", instance_id="Lab-42"
    )

    assert instance.id == "Lab-42"


@pytest.mark.parametrize(
    "bad_id", ["", "has space", "slash/inside", "dot.inside", "x" * 65, 42], ids=repr
)
def test_create_instance_rejects_bad_id(session, people, bad_id):
    with pytest.raises(InvalidIdError):
        service.create_instance(
            session, owner_id=people.alice.id, label="Lab", instance_id=bad_id
        )


@pytest.mark.parametrize("bad_label", ["", "   ", "x" * 201, None], ids=repr)
def test_create_instance_rejects_bad_label(session, people, bad_label):
    with pytest.raises(InvalidNameError):
        service.create_instance(session, owner_id=people.alice.id, label=bad_label)


def test_create_instance_rejects_duplicate_id(session, people, instance):
    with pytest.raises(AlreadyExistsError) as caught:
        service.create_instance(
            session, owner_id=people.bob.id, label="Again", instance_id=instance.id
        )

    assert instance.id in str(caught.value)


def test_create_instance_rejects_unknown_owner(session):
    with pytest.raises(UserNotFoundError):
        service.create_instance(session, owner_id=UNKNOWN_USER_ID, label="Lab")


def test_add_instance_member_is_idempotent(session, people, instance):
    assert service.add_instance_member(session, instance_id=instance.id, user_id=people.carol.id)
    assert not service.add_instance_member(
        session, instance_id=instance.id, user_id=people.carol.id
    )
    assert service.is_instance_member(session, instance.id, people.carol.id)


def test_add_instance_member_rejects_unknown_ids(session, people, instance):
    with pytest.raises(InstanceNotFoundError):
        service.add_instance_member(session, instance_id="nope", user_id=people.bob.id)
    with pytest.raises(UserNotFoundError):
        service.add_instance_member(session, instance_id=instance.id, user_id=UNKNOWN_USER_ID)


def test_list_instances_for_user(session, people, instance):
    other = service.create_instance(session, owner_id=people.bob.id, label="Another")

    assert [i.id for i in service.list_instances_for_user(session, people.bob.id)] == [
        other.id,
        instance.id,
    ]
    assert [i.id for i in service.list_instances_for_user(session, people.alice.id)] == [
        instance.id
    ]
    assert service.list_instances_for_user(session, people.carol.id) == []


def test_list_instance_members(session, people, instance):
    members = service.list_instance_members(session, instance.id)

    assert [m.display_name for m in members] == ["Alice", "Bob", "Kilo Bot"]
    with pytest.raises(InstanceNotFoundError):
        service.list_instance_members(session, "nope")


# Conversations


def test_create_conversation_adds_creator_and_members(session, people, instance):
    conversation = service.create_conversation(
        session,
        instance_id=instance.id,
        title=" Planning ",
        creator_id=people.alice.id,
        member_ids=[people.bob.id, people.alice.id, people.bob.id],
    )

    assert conversation.title == "Planning"
    assert conversation.instance_id == instance.id
    assert conversation.last_message_seq == 0
    assert [m.id for m in service.list_members(session, conversation.id)] == [
        people.alice.id,
        people.bob.id,
    ]


def test_create_conversation_adds_members_to_instance(session, people, instance):
    conversation = service.create_conversation(
        session,
        instance_id=instance.id,
        title="With Carol",
        creator_id=people.alice.id,
        member_ids=[people.carol.id],
    )

    assert service.is_conversation_member(session, conversation.id, people.carol.id)
    assert service.is_instance_member(session, instance.id, people.carol.id)


def test_create_conversation_requires_creator_in_instance(session, people, instance):
    with pytest.raises(NotAMemberError) as caught:
        service.create_conversation(
            session, instance_id=instance.id, title="Nope", creator_id=people.carol.id
        )

    assert instance.id in str(caught.value)
    assert session.exec(select(Conversation)).all() == []


def test_create_conversation_rejects_unknown_member(session, people, instance):
    with pytest.raises(UserNotFoundError):
        service.create_conversation(
            session,
            instance_id=instance.id,
            title="Ghosts",
            creator_id=people.alice.id,
            member_ids=[UNKNOWN_USER_ID],
        )

    assert session.exec(select(Conversation)).all() == []


def test_create_conversation_rejects_bad_input(session, people, instance):
    with pytest.raises(InstanceNotFoundError):
        service.create_conversation(
            session, instance_id="nope", title="T", creator_id=people.alice.id
        )
    with pytest.raises(InvalidNameError):
        service.create_conversation(
            session, instance_id=instance.id, title=" ", creator_id=people.alice.id
        )
    with pytest.raises(InvalidIdError):
        service.create_conversation(
            session,
            instance_id=instance.id,
            title="T",
            creator_id=people.alice.id,
            conversation_id="a/b",
        )


def test_create_conversation_rejects_duplicate_id(session, people, conversation):
    with pytest.raises(AlreadyExistsError):
        service.create_conversation(
            session,
            instance_id=conversation.instance_id,
            title="Again",
            creator_id=people.alice.id,
            conversation_id=conversation.id,
        )


def test_add_conversation_member_joins_instance(session, people, conversation):
    assert service.add_conversation_member(
        session, conversation_id=conversation.id, user_id=people.carol.id
    )

    assert service.is_conversation_member(session, conversation.id, people.carol.id)
    assert service.is_instance_member(session, conversation.instance_id, people.carol.id)
    assert not service.add_conversation_member(
        session, conversation_id=conversation.id, user_id=people.carol.id
    )


def test_add_conversation_member_rejects_unknown_ids(session, people, conversation):
    with pytest.raises(ConversationNotFoundError):
        service.add_conversation_member(session, conversation_id="nope", user_id=people.bob.id)
    with pytest.raises(UserNotFoundError):
        service.add_conversation_member(
            session, conversation_id=conversation.id, user_id=UNKNOWN_USER_ID
        )


def test_list_conversations_for_user(session, people, instance, conversation):
    other_instance = service.create_instance(session, owner_id=people.bob.id, label="Bob's")
    elsewhere = service.create_conversation(
        session, instance_id=other_instance.id, title="Alpha", creator_id=people.bob.id
    )

    all_for_bob = service.list_conversations_for_user(session, people.bob.id)
    in_instance = service.list_conversations_for_user(
        session, people.bob.id, instance_id=instance.id
    )

    assert [c.id for c in all_for_bob] == [elsewhere.id, conversation.id]
    assert [c.id for c in in_instance] == [conversation.id]
    assert service.list_conversations_for_user(session, people.carol.id) == []


def test_list_members_of_conversation(session, people, conversation):
    members = service.list_members(session, conversation.id)

    assert [(m.display_name, m.is_bot) for m in members] == [
        ("Alice", False),
        ("Bob", False),
        ("Kilo Bot", True),
    ]
    with pytest.raises(ConversationNotFoundError):
        service.list_members(session, "nope")


def test_require_conversation_member(session, people, conversation):
    service.require_conversation_member(session, conversation.id, people.bob.id)
    with pytest.raises(NotAMemberError):
        service.require_conversation_member(session, conversation.id, people.carol.id)


# Users


def test_find_user_by_username(session, people):
    assert service.find_user_by_username(session, "bob").id == people.bob.id
    assert service.find_user_by_username(session, "kilobot").id == people.bot.id
    assert service.find_user_by_username(session, "Bob") is None
    assert service.find_user_by_username(session, "nobody") is None


def test_get_user_rejects_unknown_id(session):
    with pytest.raises(UserNotFoundError) as caught:
        service.get_user(session, UNKNOWN_USER_ID)

    assert str(UNKNOWN_USER_ID) in str(caught.value)


# Messages


def test_create_message_numbers_messages(session, people, conversation):
    first = _post(session, conversation.id, people.alice.id, "one")
    second = _post(session, conversation.id, people.bot.id, "two")

    assert (first.seq, second.seq) == (1, 2)
    assert second.sender_display_name == "Kilo Bot"
    assert second.sender_is_bot
    assert second.instance_id == conversation.instance_id
    session.expire_all()
    assert service.get_conversation(session, conversation.id).last_message_seq == 2


def test_sequence_numbers_are_per_conversation(session, people, instance, conversation):
    other = service.create_conversation(
        session, instance_id=instance.id, title="Other", creator_id=people.alice.id
    )

    _post(session, conversation.id, people.alice.id, "a")
    _post(session, conversation.id, people.alice.id, "b")
    in_other = _post(session, other.id, people.alice.id, "c")

    assert in_other.seq == 1


def test_create_message_stores_blocks_and_utc_time(session, people, conversation):
    blocks = [{"type": "text", "text": "line one"}, {"type": "text", "text": "zwei €"}]
    before = datetime.datetime.now(datetime.timezone.utc)

    view = service.create_message(
        session, conversation_id=conversation.id, sender_id=people.bob.id, blocks=blocks
    )
    session.expire_all()
    stored = session.get(Message, view.id)

    assert stored.content == blocks
    assert stored.created_at.tzinfo == datetime.timezone.utc
    assert stored.created_at == view.created_at
    assert before <= view.created_at <= datetime.datetime.now(datetime.timezone.utc)


def test_create_message_rejects_non_member(session, people, conversation):
    with pytest.raises(NotAMemberError) as caught:
        _post(session, conversation.id, people.carol.id, "let me in")

    assert conversation.id in str(caught.value)
    assert session.exec(select(Message)).all() == []


def test_create_message_rejects_unknown_sender_and_conversation(session, people, conversation):
    with pytest.raises(UserNotFoundError):
        _post(session, conversation.id, UNKNOWN_USER_ID, "hi")
    with pytest.raises(ConversationNotFoundError):
        _post(session, "nope", people.alice.id, "hi")


def test_create_message_rejects_bad_content(session, people, conversation):
    with pytest.raises(EmptyMessageError):
        _post(session, conversation.id, people.alice.id, "  ")
    with pytest.raises(MessageTooLongError):
        _post(session, conversation.id, people.alice.id, "x" * (MAX_MESSAGE_CHARS + 1))

    session.expire_all()
    assert session.exec(select(Message)).all() == []
    assert service.get_conversation(session, conversation.id).last_message_seq == 0


def test_list_messages_returns_newest_page_ascending(session, people, conversation):
    for number in range(1, 8):
        _post(session, conversation.id, people.alice.id, f"m{number}")

    page = service.list_messages(session, conversation.id, limit=3)

    assert [m.seq for m in page] == [5, 6, 7]
    assert [m.blocks[0]["text"] for m in page] == ["m5", "m6", "m7"]
    assert all(m.created_at.tzinfo == datetime.timezone.utc for m in page)


def test_list_messages_pages_backwards_and_forwards(session, people, conversation):
    for number in range(1, 8):
        _post(session, conversation.id, people.alice.id, f"m{number}")

    older = service.list_messages(session, conversation.id, limit=3, before_seq=5)
    newer = service.list_messages(session, conversation.id, limit=3, after_seq=2)
    window = service.list_messages(session, conversation.id, limit=10, after_seq=2, before_seq=5)
    beyond = service.list_messages(session, conversation.id, after_seq=7)

    assert [m.seq for m in older] == [2, 3, 4]
    assert [m.seq for m in newer] == [3, 4, 5]
    assert [m.seq for m in window] == [3, 4]
    assert beyond == []


def test_list_messages_matches_created_views(session, people, conversation):
    posted = [_post(session, conversation.id, people.bob.id, "hello")]

    assert service.list_messages(session, conversation.id) == posted


def test_list_messages_checks_viewer(session, people, conversation):
    _post(session, conversation.id, people.alice.id, "secret")

    assert len(service.list_messages(session, conversation.id, viewer_id=people.bob.id)) == 1
    with pytest.raises(NotAMemberError):
        service.list_messages(session, conversation.id, viewer_id=people.carol.id)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"limit": 0},
        {"limit": service.MAX_PAGE_SIZE + 1},
        {"limit": "10"},
        {"limit": True},
        {"before_seq": -1},
        {"after_seq": 1.5},
    ],
    ids=repr,
)
def test_list_messages_rejects_bad_bounds(session, conversation, kwargs):
    with pytest.raises(InvalidLimitError):
        service.list_messages(session, conversation.id, **kwargs)


def test_list_messages_rejects_unknown_conversation(session):
    with pytest.raises(ConversationNotFoundError):
        service.list_messages(session, "nope")


def test_concurrent_posts_get_distinct_sequence_numbers(engine, people, conversation):
    posts_per_thread = 15
    thread_count = 3
    errors: list[BaseException] = []

    def post_many(sender_id: int) -> None:
        try:
            with Session(engine) as thread_session:
                for number in range(posts_per_thread):
                    _post(thread_session, conversation.id, sender_id, f"{sender_id}-{number}")
        except BaseException as error:
            errors.append(error)

    senders = [people.alice.id, people.bob.id, people.bot.id]
    threads = [threading.Thread(target=post_many, args=(senders[i],)) for i in range(thread_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert errors == []
    assert not any(thread.is_alive() for thread in threads)
    with Session(engine) as check_session:
        seqs = sorted(check_session.exec(select(Message.seq)).all())
        stored = service.get_conversation(check_session, conversation.id)
    total = posts_per_thread * thread_count
    assert seqs == list(range(1, total + 1))
    assert stored.last_message_seq == total
