"""Chat operations: instances, conversations, members and messages.

Every function takes a ``sqlmodel.Session`` (``rx.session()`` in the Reflex
app) and refers to users by ``UserProfile.id``. Functions that write commit
their own transaction before they return, and roll it back on failure.

The coroutines publish to the conversation's context through a
``Publisher`` once their write is committed: ``post_message`` publishes
``message.created``, ``edit_message`` ``message.updated`` and
``delete_message`` ``message.deleted``. ``remove_conversation_member``
publishes ``member.removed`` there and ``conversation.removed`` on the
removed user's context. A failed publish is logged and never undoes the
write. ``publish_typing`` writes nothing and only publishes the
ephemeral ``typing`` event.

Editing, deleting and typing never touch read positions, unread counts or
badges, and never start a push: only ``post_message`` calls the
``after_publish`` hook of the notifications service.

NOTE: the database calls are synchronous, so inside the coroutines they
block the event loop for the duration of the write and commit.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import re
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlmodel import Session, select

from kilo_web.chat.content import text_blocks, validate_blocks
from kilo_web.chat.errors import (
    AlreadyExistsError,
    ConversationNotFoundError,
    InstanceNotFoundError,
    InvalidIdError,
    InvalidLimitError,
    InvalidNameError,
    MessageDeletedError,
    MessageNotFoundError,
    NotAllowedError,
    NotAMemberError,
    NotMessageSenderError,
    UserNotFoundError,
)
from kilo_web.chat.limits import TypingLimiter
from kilo_web.chat.models import (
    CLIENT_MESSAGE_ID_MAX_LENGTH,
    ID_MAX_LENGTH,
    LABEL_MAX_LENGTH,
    Bot,
    Conversation,
    ConversationMember,
    ConversationReadState,
    Instance,
    InstanceMember,
    LocalUser,
    Message,
    UserProfile,
    utc_now,
)
from kilo_web.chat.publisher import (
    CONVERSATION_ADDED_EVENT,
    CONVERSATION_REMOVED_EVENT,
    MEMBER_REMOVED_EVENT,
    MESSAGE_CREATED_EVENT,
    MESSAGE_DELETED_EVENT,
    MESSAGE_UPDATED_EVENT,
    TYPING_EVENT,
    Publisher,
)
from kilo_web.event_service.contexts import (
    kiloclaw_conversation_context,
    kiloclaw_conversation_presence_context,
    user_context,
)
from kilo_web.event_service.control import ACCESS_REVOKED_COMMAND, announce_access_revoked

if TYPE_CHECKING:
    from kilo_web.chat.read_state import UnreadChangeHook

logger = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE = 50
"""Number of messages ``list_messages`` returns when no limit is given."""

MAX_PAGE_SIZE = 200
"""Largest ``limit`` that ``list_messages`` accepts."""

_ID_PATTERN = re.compile(rf"[A-Za-z0-9-]{{1,{ID_MAX_LENGTH}}}")
_CLIENT_MESSAGE_ID = re.compile(rf"[A-Za-z0-9_.:-]{{1,{CLIENT_MESSAGE_ID_MAX_LENGTH}}}")

_MAX_MESSAGE_ID = 2**31 - 1
"""Largest message id: the range of the ``integer`` primary key on PostgreSQL."""


def _isoformat(value: datetime.datetime | None) -> str | None:
    return None if value is None else value.isoformat()


@dataclasses.dataclass(frozen=True, kw_only=True)
class MessageView:
    """A committed message with its sender's display name, detached from any session."""

    id: int
    conversation_id: str
    instance_id: str
    seq: int
    sender_id: int
    sender_display_name: str
    sender_is_bot: bool
    blocks: tuple[dict[str, str], ...]
    created_at: datetime.datetime
    client_message_id: str | None = None
    repeated: bool = False
    """True when ``post_message`` returned a message stored earlier under the same client id."""
    edited_at: datetime.datetime | None = None
    """When the sender last edited the message; None for a message never edited."""
    deleted_at: datetime.datetime | None = None
    """When the sender deleted the message; None while it is not deleted. A deleted
    message has no blocks."""

    @property
    def is_deleted(self) -> bool:
        return self.deleted_at is not None

    def to_event_data(self) -> dict[str, Any]:
        """Return the JSON payload of ``message.created`` and ``message.updated``."""
        return {
            "messageId": self.id,
            "conversationId": self.conversation_id,
            "instanceId": self.instance_id,
            "seq": self.seq,
            "senderId": self.sender_id,
            "senderDisplayName": self.sender_display_name,
            "senderIsBot": self.sender_is_bot,
            "blocks": [dict(block) for block in self.blocks],
            "createdAt": self.created_at.isoformat(),
            "clientMessageId": self.client_message_id,
            "editedAt": _isoformat(self.edited_at),
            "deletedAt": _isoformat(self.deleted_at),
        }

    def to_deleted_event_data(self) -> dict[str, Any]:
        """Return the JSON payload of ``message.deleted``."""
        return {
            "id": self.id,
            "messageId": self.id,
            "conversationId": self.conversation_id,
            "instanceId": self.instance_id,
            "seq": self.seq,
            "deletedAt": _isoformat(self.deleted_at),
        }


# Validation helpers


def new_id() -> str:
    """Return a fresh random id for an instance or conversation (32 hex digits)."""
    return uuid.uuid4().hex


def _check_id(kind: str, value: object) -> str:
    if not isinstance(value, str) or not _ID_PATTERN.fullmatch(value):
        raise InvalidIdError(
            f"invalid {kind} id {value!r}: use 1 to {ID_MAX_LENGTH} letters, digits or '-'"
        )
    return value


def _clean_label(kind: str, value: object) -> str:
    if not isinstance(value, str):
        raise InvalidNameError(f"{kind} must be a string, got {type(value).__name__}")
    cleaned = value.strip()
    if not cleaned:
        raise InvalidNameError(f"{kind} is empty; give it at least one visible character")
    if len(cleaned) > LABEL_MAX_LENGTH:
        raise InvalidNameError(
            f"{kind} is {len(cleaned)} characters long; the maximum is {LABEL_MAX_LENGTH}"
        )
    return cleaned


def _check_limit(limit: int) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise InvalidLimitError(f"limit must be an integer, got {type(limit).__name__}")
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise InvalidLimitError(f"limit {limit} is out of range; use 1 to {MAX_PAGE_SIZE}")
    return limit


def _check_seq_bound(name: str, value: int | None) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidLimitError(f"{name} must be a non-negative integer, got {value!r}")
    return value


# Lookups


def get_user(session: Session, user_id: int) -> UserProfile:
    """Return the profile with id ``user_id`` or raise UserNotFoundError."""
    profile = session.get(UserProfile, user_id)
    if profile is None:
        raise UserNotFoundError(f"user {user_id!r} not found")
    return profile


def find_user_by_username(session: Session, username: str) -> UserProfile | None:
    """Return the profile of the account named ``username`` (case-sensitive), or None."""
    if "\x00" in username:
        return None  # No username contains NUL, and PostgreSQL rejects it in a query.
    statement = (
        select(UserProfile)
        .join(LocalUser, LocalUser.id == UserProfile.local_user_id)
        .where(LocalUser.username == username)
    )
    return session.exec(statement).first()


def get_instance(session: Session, instance_id: str) -> Instance:
    """Return the instance with id ``instance_id`` or raise InstanceNotFoundError."""
    # No stored id breaks the pattern, so such a value is not sent to the database.
    if not isinstance(instance_id, str) or not _ID_PATTERN.fullmatch(instance_id):
        raise InstanceNotFoundError(f"instance {instance_id!r} not found")
    instance = session.get(Instance, instance_id)
    if instance is None:
        raise InstanceNotFoundError(f"instance {instance_id!r} not found")
    return instance


def get_conversation(session: Session, conversation_id: str) -> Conversation:
    """Return the conversation with id ``conversation_id`` or raise ConversationNotFoundError."""
    if not isinstance(conversation_id, str) or not _ID_PATTERN.fullmatch(conversation_id):
        raise ConversationNotFoundError(f"conversation {conversation_id!r} not found")
    conversation = session.get(Conversation, conversation_id)
    if conversation is None:
        raise ConversationNotFoundError(f"conversation {conversation_id!r} not found")
    return conversation


def is_instance_member(session: Session, instance_id: str, user_id: int) -> bool:
    """Tell whether ``user_id`` is a member of the instance ``instance_id``."""
    return session.get(InstanceMember, (instance_id, user_id)) is not None


def is_conversation_member(session: Session, conversation_id: str, user_id: int) -> bool:
    """Tell whether ``user_id`` is a member of the conversation ``conversation_id``."""
    return session.get(ConversationMember, (conversation_id, user_id)) is not None


def require_conversation_member(session: Session, conversation_id: str, user_id: int) -> None:
    """Raise NotAMemberError unless ``user_id`` is a member of the conversation."""
    if not is_conversation_member(session, conversation_id, user_id):
        raise NotAMemberError(
            f"user {user_id} is not a member of conversation {conversation_id!r}"
        )


def list_instances_for_user(session: Session, user_id: int) -> list[Instance]:
    """Return the instances ``user_id`` is a member of, ordered by label then id."""
    statement = (
        select(Instance)
        .join(InstanceMember, InstanceMember.instance_id == Instance.id)
        .where(InstanceMember.user_id == user_id)
        .order_by(Instance.label, Instance.id)
    )
    return list(session.exec(statement).all())


def list_conversations_for_user(
    session: Session, user_id: int, *, instance_id: str | None = None
) -> list[Conversation]:
    """Return the conversations ``user_id`` is a member of, ordered by title then id.

    With ``instance_id``, only the conversations of that instance.
    """
    statement = (
        select(Conversation)
        .join(ConversationMember, ConversationMember.conversation_id == Conversation.id)
        .where(ConversationMember.user_id == user_id)
    )
    if instance_id is not None:
        statement = statement.where(Conversation.instance_id == instance_id)
    statement = statement.order_by(Conversation.title, Conversation.id)
    return list(session.exec(statement).all())


def list_members(session: Session, conversation_id: str) -> list[UserProfile]:
    """Return the members of a conversation, ordered by display name then id.

    Raises ConversationNotFoundError for an unknown conversation.
    """
    get_conversation(session, conversation_id)
    statement = (
        select(UserProfile)
        .join(ConversationMember, ConversationMember.user_id == UserProfile.id)
        .where(ConversationMember.conversation_id == conversation_id)
        .order_by(UserProfile.display_name, UserProfile.id)
    )
    return list(session.exec(statement).all())


def list_instance_members(session: Session, instance_id: str) -> list[UserProfile]:
    """Return the members of an instance, ordered by display name then id.

    Raises InstanceNotFoundError for an unknown instance.
    """
    get_instance(session, instance_id)
    statement = (
        select(UserProfile)
        .join(InstanceMember, InstanceMember.user_id == UserProfile.id)
        .where(InstanceMember.instance_id == instance_id)
        .order_by(UserProfile.display_name, UserProfile.id)
    )
    return list(session.exec(statement).all())


# Writes


def _commit(session: Session, conflict_message: str) -> None:
    """Commit, turning a unique-key violation into AlreadyExistsError."""
    try:
        session.commit()
    except sa.exc.IntegrityError as error:
        session.rollback()
        raise AlreadyExistsError(conflict_message) from error
    except BaseException:
        session.rollback()
        raise


def create_instance(
    session: Session, *, owner_id: int, label: str, instance_id: str | None = None
) -> Instance:
    """Create an instance owned by ``owner_id`` and make the owner its first member.

    ``instance_id`` defaults to ``new_id()``. Raises InvalidIdError,
    InvalidNameError, UserNotFoundError, or AlreadyExistsError when the id is taken.
    """
    instance_id = _check_id("instance", instance_id if instance_id is not None else new_id())
    label = _clean_label("instance label", label)
    get_user(session, owner_id)
    if session.get(Instance, instance_id) is not None:
        raise AlreadyExistsError(f"instance {instance_id!r} already exists; choose another id")

    instance = Instance(id=instance_id, label=label, owner_id=owner_id)
    session.add(instance)
    session.add(InstanceMember(instance_id=instance_id, user_id=owner_id))
    _commit(session, f"instance {instance_id!r} already exists; choose another id")
    session.refresh(instance)
    logger.info("created instance %s owned by user %s", instance_id, owner_id)
    return instance


def add_instance_member(session: Session, *, instance_id: str, user_id: int) -> bool:
    """Add ``user_id`` to an instance; return False if they were already a member.

    Raises InstanceNotFoundError or UserNotFoundError for unknown ids.
    """
    get_instance(session, instance_id)
    get_user(session, user_id)
    if is_instance_member(session, instance_id, user_id):
        return False
    session.add(InstanceMember(instance_id=instance_id, user_id=user_id))
    try:
        session.commit()
    except sa.exc.IntegrityError:
        # A concurrent request added the same member between the check and the insert.
        session.rollback()
        return False
    logger.info("added user %s to instance %s", user_id, instance_id)
    return True


def create_conversation(
    session: Session,
    *,
    instance_id: str,
    title: str,
    creator_id: int,
    member_ids: Iterable[int] = (),
    conversation_id: str | None = None,
) -> Conversation:
    """Create a conversation in an instance, with the creator and ``member_ids`` as members.

    The instance's bots join it too. The creator must already be a member of
    the instance; the other members are added to the instance if they are
    not in it yet. Raises
    InvalidIdError, InvalidNameError, InstanceNotFoundError,
    UserNotFoundError, NotAMemberError, or AlreadyExistsError when the id is taken.
    """
    conversation_id = _check_id(
        "conversation", conversation_id if conversation_id is not None else new_id()
    )
    title = _clean_label("conversation title", title)
    get_instance(session, instance_id)
    get_user(session, creator_id)
    if not is_instance_member(session, instance_id, creator_id):
        raise NotAMemberError(
            f"user {creator_id} is not a member of instance {instance_id!r}; "
            "add them to the instance before they create a conversation"
        )
    if session.get(Conversation, conversation_id) is not None:
        raise AlreadyExistsError(
            f"conversation {conversation_id!r} already exists; choose another id"
        )

    all_member_ids = [creator_id]
    for member_id in member_ids:
        if member_id not in all_member_ids:
            get_user(session, member_id)
            all_member_ids.append(member_id)
    # The instance's bots take part in every conversation of their instance.
    for bot_id in session.exec(select(Bot.user_id).where(Bot.instance_id == instance_id)).all():
        if bot_id not in all_member_ids:
            all_member_ids.append(bot_id)

    conversation = Conversation(id=conversation_id, instance_id=instance_id, title=title)
    session.add(conversation)
    for member_id in all_member_ids:
        if not is_instance_member(session, instance_id, member_id):
            session.add(InstanceMember(instance_id=instance_id, user_id=member_id))
        session.add(ConversationMember(conversation_id=conversation_id, user_id=member_id))
    _commit(session, f"conversation {conversation_id!r} already exists; choose another id")
    session.refresh(conversation)
    logger.info(
        "created conversation %s in instance %s with %d members",
        conversation_id,
        instance_id,
        len(all_member_ids),
    )
    return conversation


def add_conversation_member(session: Session, *, conversation_id: str, user_id: int) -> bool:
    """Add ``user_id`` to a conversation and to its instance; return False if already a member.

    Raises ConversationNotFoundError or UserNotFoundError for unknown ids.
    """
    conversation = get_conversation(session, conversation_id)
    get_user(session, user_id)
    if is_conversation_member(session, conversation_id, user_id):
        return False

    if not is_instance_member(session, conversation.instance_id, user_id):
        session.add(InstanceMember(instance_id=conversation.instance_id, user_id=user_id))
    session.add(ConversationMember(conversation_id=conversation_id, user_id=user_id))
    try:
        session.commit()
    except sa.exc.IntegrityError:
        # A concurrent request added the same membership between the check and the insert.
        session.rollback()
        if is_conversation_member(session, conversation_id, user_id):
            return False
        raise
    logger.info("added user %s to conversation %s", user_id, conversation_id)
    return True


async def announce_conversation(
    publisher: Publisher, conversation: Conversation, user_ids: Iterable[int]
) -> None:
    """Publish ``conversation.added`` to the user context of each of ``user_ids``.

    Call it after the membership is committed, so clients (a bot, a second
    tab) learn of a conversation they now belong to without polling. A
    publish failure is logged and swallowed: the membership is kept, and
    clients see it the next time they list their conversations.
    """
    data = {
        "conversationId": conversation.id,
        "instanceId": conversation.instance_id,
        "title": conversation.title,
    }
    for user_id in user_ids:
        try:
            await publisher.publish(user_context(str(user_id)), CONVERSATION_ADDED_EVENT, data)
        except Exception:
            logger.exception("failed to announce conversation %s to user %s",
                             conversation.id, user_id)


def _check_may_remove(
    session: Session, conversation: Conversation, user_id: int, removed_by: int
) -> None:
    """Raise NotAllowedError unless ``removed_by`` may take ``user_id`` out of ``conversation``."""
    if removed_by != user_id:
        instance = get_instance(session, conversation.instance_id)
        if instance.owner_id != removed_by:
            raise NotAllowedError(
                f"user {removed_by} may not remove user {user_id} from conversation "
                f"{conversation.id!r}: only the owner of instance {instance.id!r} may remove "
                "other members, and every member may remove themselves"
            )
    bot = session.get(Bot, user_id)
    if bot is not None and bot.instance_id == conversation.instance_id:
        raise NotAllowedError(
            f"user {user_id} is a bot of instance {conversation.instance_id!r} and takes part "
            "in every conversation of it, so it cannot be removed from one; revoke its API "
            "keys to stop it"
        )


def _delete_membership(
    session: Session,
    conversation_id: str,
    user_id: int,
    *,
    now: datetime.datetime,
    dispatch_window: datetime.timedelta | None,
) -> bool:
    """Delete a membership and its read position, recount the user's badge; commit.

    Returns False, with nothing changed, when ``user_id`` was not a member
    because a concurrent removal committed first.
    """
    # accounting imports this module through read_state, so it is imported at call time.
    from kilo_web.notifications import accounting

    try:
        deleted = session.exec(
            sa.delete(ConversationMember).where(
                ConversationMember.conversation_id == conversation_id,
                ConversationMember.user_id == user_id,
            )
        ).rowcount
        if deleted == 0:
            session.rollback()
            return False
        session.exec(
            sa.delete(ConversationReadState).where(
                ConversationReadState.conversation_id == conversation_id,
                ConversationReadState.user_id == user_id,
            )
        )
        # In the same transaction, so the badge drops exactly when the membership goes.
        accounting.refresh_user_badges(session, user_id, now=now, window=dispatch_window)
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return True


async def remove_conversation_member(
    session: Session,
    *,
    conversation_id: str,
    user_id: int,
    removed_by: int,
    publisher: Publisher,
    on_unread_change: UnreadChangeHook | None = None,
    dispatch_window: datetime.timedelta | None = None,
) -> bool:
    """Take ``user_id`` out of a conversation, commit, then tell every node and client.

    Every member may remove themselves (leave). Only the owner of the
    conversation's instance may remove someone else. A bot of the
    conversation's instance cannot be removed, because bots take part in
    every conversation of their instance. The user stays a member of the
    instance.

    Removing a user who is not a member changes and publishes nothing, so
    the call is idempotent. It returns True when this call removed the user
    and False otherwise. The user's read position in the conversation is deleted
    and their badge buckets are recounted in the same transaction, so their
    badge drops by the conversation's counted unread messages exactly once.

    After the commit it publishes, in this order: ``access.revoked`` on the
    event service's control context, so every node drops the user's
    subscriptions to the conversation and its presence context; then
    ``member.removed`` on the conversation's context; then
    ``conversation.removed`` and ``unread.changed`` on the user's context.
    ``on_unread_change`` (the notifications service's badge push) is called
    when the badge number changed. ``dispatch_window`` is the push claim
    window, as in ``read_state.mark_read``. Publish and hook failures are
    logged and swallowed, because the removal is committed.

    Raises ConversationNotFoundError or UserNotFoundError for unknown ids
    and NotAllowedError for a removal the rules above reject, all before
    anything is written.
    """
    # Both import this module, so they are imported at call time.
    from kilo_web.chat import read_state
    from kilo_web.notifications import accounting

    conversation = get_conversation(session, conversation_id)
    instance_id = conversation.instance_id
    get_user(session, user_id)
    get_user(session, removed_by)
    _check_may_remove(session, conversation, user_id, removed_by)
    if not is_conversation_member(session, conversation_id, user_id):
        return False

    badge_before = accounting.device_badge(session, user_id)
    removed = _delete_membership(
        session, conversation_id, user_id, now=utc_now(), dispatch_window=dispatch_window
    )
    if not removed:
        return False
    if removed_by == user_id:
        logger.info("user %s left conversation %s", user_id, conversation_id)
    else:
        logger.info("user %s removed user %s from conversation %s",
                    removed_by, user_id, conversation_id)

    await _publish_removal(publisher, instance_id, conversation_id, user_id, removed_by)
    summary = read_state.unread_summary(session, user_id)
    await read_state.publish_unread_changed(publisher, summary)
    if on_unread_change is not None and summary.badge != badge_before:
        try:
            await on_unread_change(summary)
        except Exception:
            logger.exception("unread change hook failed for user %s after leaving "
                             "conversation %s", user_id, conversation_id)
    return True


async def _publish_removal(
    publisher: Publisher, instance_id: str, conversation_id: str, user_id: int, removed_by: int
) -> None:
    """Publish the control command and the events of a committed removal, in order."""
    context = kiloclaw_conversation_context(instance_id, conversation_id)
    revoked = [context, kiloclaw_conversation_presence_context(instance_id, conversation_id)]
    steps: list[tuple[str, Callable[[], Awaitable[None]]]] = [
        (ACCESS_REVOKED_COMMAND, lambda: announce_access_revoked(publisher, user_id, revoked)),
        (MEMBER_REMOVED_EVENT, lambda: publisher.publish(context, MEMBER_REMOVED_EVENT, {
            "conversationId": conversation_id,
            "instanceId": instance_id,
            "userId": user_id,
            "removedBy": removed_by,
        })),
        (CONVERSATION_REMOVED_EVENT, lambda: publisher.publish(
            user_context(user_id), CONVERSATION_REMOVED_EVENT,
            {"conversationId": conversation_id, "instanceId": instance_id},
        )),
    ]
    # The revocation goes first, so the removed user's connections are no
    # longer subscribed when member.removed reaches the conversation's context.
    for name, publish in steps:
        try:
            await publish()
        except Exception:
            # Any publisher failure is caught because the removal is committed.
            # Clients see it on their next load. A node that missed the revocation
            # keeps delivering to the user's open subscription until it closes.
            logger.exception("failed to publish %s for user %s leaving conversation %s",
                             name, user_id, conversation_id)


def conversation_member_ids(session: Session, conversation_id: str) -> list[int]:
    """Return the user ids of a conversation's members."""
    statement = select(ConversationMember.user_id).where(
        ConversationMember.conversation_id == conversation_id
    )
    return list(session.exec(statement).all())


def _check_client_message_id(value: str | None) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _CLIENT_MESSAGE_ID.fullmatch(value):
        raise InvalidIdError(
            f"invalid client message id {value!r}: use 1 to {CLIENT_MESSAGE_ID_MAX_LENGTH} "
            "letters, digits or _ . : -"
        )
    return value


def find_client_message(
    session: Session, *, sender_id: int, client_message_id: str
) -> MessageView | None:
    """Return the message ``sender_id`` posted with ``client_message_id``, or None."""
    row = session.exec(
        select(Message, UserProfile.display_name, UserProfile.is_bot, Conversation.instance_id)
        .join(UserProfile, UserProfile.id == Message.sender_id)
        .join(Conversation, Conversation.id == Message.conversation_id)
        .where(Message.sender_id == sender_id, Message.client_message_id == client_message_id)
    ).first()
    if row is None:
        return None
    message, display_name, is_bot, instance_id = row
    return _message_view(message, instance_id, display_name, is_bot)


def _message_view(message: Message, instance_id: str, display_name: str, is_bot: bool) -> MessageView:
    return MessageView(
        id=message.id,
        conversation_id=message.conversation_id,
        instance_id=instance_id,
        seq=message.seq,
        sender_id=message.sender_id,
        sender_display_name=display_name,
        sender_is_bot=is_bot,
        blocks=tuple(message.content),
        created_at=message.created_at,
        client_message_id=message.client_message_id,
        edited_at=message.edited_at,
        deleted_at=message.deleted_at,
    )


def create_message(
    session: Session,
    *,
    conversation_id: str,
    sender_id: int,
    blocks: Sequence[dict[str, Any]],
    client_message_id: str | None = None,
) -> MessageView:
    """Validate, store and commit a message without publishing it.

    Most callers want ``post_message``, which also fans the message out.
    Raises an InvalidContentError subclass for bad ``blocks``,
    ConversationNotFoundError, UserNotFoundError, or NotAMemberError when the
    sender is not a member of the conversation.
    """
    cleaned_blocks = validate_blocks(blocks)
    client_message_id = _check_client_message_id(client_message_id)
    conversation = get_conversation(session, conversation_id)
    instance_id = conversation.instance_id
    sender = get_user(session, sender_id)
    sender_display_name = sender.display_name
    sender_is_bot = sender.is_bot
    require_conversation_member(session, conversation_id, sender_id)

    try:
        # Incrementing the counter row takes a row lock on PostgreSQL and the
        # write lock on SQLite, so concurrent posts get distinct numbers.
        seq = session.exec(
            sa.update(Conversation)
            .where(Conversation.id == conversation_id)
            .values(last_message_seq=Conversation.last_message_seq + 1)
            .returning(Conversation.last_message_seq)
        ).scalar_one()
        message = Message(
            conversation_id=conversation_id,
            seq=seq,
            sender_id=sender_id,
            content=cleaned_blocks,
            client_message_id=client_message_id,
            created_at=utc_now(),
        )
        session.add(message)
        session.flush()
        view = MessageView(
            id=message.id,
            conversation_id=conversation_id,
            instance_id=instance_id,
            seq=seq,
            sender_id=sender_id,
            sender_display_name=sender_display_name,
            sender_is_bot=sender_is_bot,
            blocks=tuple(cleaned_blocks),
            created_at=message.created_at,
            client_message_id=client_message_id,
        )
        session.commit()
    except sa.exc.IntegrityError as error:
        session.rollback()
        if client_message_id is not None:
            raise AlreadyExistsError(
                f"client message id {client_message_id!r} was already used by user {sender_id}"
            ) from error
        raise
    except BaseException:
        session.rollback()
        raise
    logger.debug(
        "stored message %s (seq %s) in conversation %s from user %s",
        view.id,
        seq,
        conversation_id,
        sender_id,
    )
    return view


async def post_message(
    session: Session,
    *,
    conversation_id: str,
    sender_id: int,
    blocks: Sequence[dict[str, Any]],
    publisher: Publisher,
    after_publish: Callable[[MessageView], None] | None = None,
    client_message_id: str | None = None,
) -> MessageView:
    """Store a message, commit it, then publish ``message.created`` to its conversation.

    With ``client_message_id``, a repeat from the same sender returns the
    message stored first and publishes nothing, also when the repeats race.
    Raises InvalidInputError when the id was used for another conversation.

    Raises the same errors as ``create_message``, all before anything is
    written. A publish failure is logged with the message, conversation and
    instance ids and swallowed, because the message is already committed
    and subscribers can fetch it with ``list_messages``. ``after_publish``
    is called last, with the committed message. It must return at once, so
    the notifications service only starts its push dispatch there as a
    background task. An exception it raises is logged and swallowed.
    """
    if client_message_id is not None:
        _check_client_message_id(client_message_id)
        existing = find_client_message(
            session, sender_id=sender_id, client_message_id=client_message_id
        )
        if existing is not None:
            return _repeated(existing, conversation_id)
    try:
        view = create_message(
            session,
            conversation_id=conversation_id,
            sender_id=sender_id,
            blocks=blocks,
            client_message_id=client_message_id,
        )
    except AlreadyExistsError:
        # A concurrent repeat committed first, so return its message.
        existing = find_client_message(
            session, sender_id=sender_id, client_message_id=client_message_id or ""
        )
        if existing is None:
            raise
        return _repeated(existing, conversation_id)
    await _publish_committed(publisher, view, MESSAGE_CREATED_EVENT, view.to_event_data())
    if after_publish is not None:
        try:
            after_publish(view)
        except Exception:
            logger.exception("after-publish hook failed for message %s", view.id)
    return view


async def _publish_committed(
    publisher: Publisher, view: MessageView, event: str, data: dict[str, Any]
) -> None:
    """Publish ``event`` about a committed change of ``view`` to its conversation's context."""
    try:
        context = kiloclaw_conversation_context(view.instance_id, view.conversation_id)
        await publisher.publish(context, event, data)
    except Exception:
        # Any publisher failure is caught: the write has succeeded and must be
        # reported as such; cancellation (BaseException) still propagates.
        logger.exception(
            "failed to publish %s for message %s in conversation %s of instance %s",
            event,
            view.id,
            view.conversation_id,
            view.instance_id,
        )


def _repeated(existing: MessageView, conversation_id: str) -> MessageView:
    if existing.conversation_id != conversation_id:
        raise InvalidIdError(
            f"client message id {existing.client_message_id!r} was already used in another "
            "conversation; generate a new id for each message"
        )
    logger.info("repeat of client message %s returned message %s",
                existing.client_message_id, existing.id)
    return dataclasses.replace(existing, repeated=True)


def list_messages(
    session: Session,
    conversation_id: str,
    *,
    limit: int = DEFAULT_PAGE_SIZE,
    before_seq: int | None = None,
    after_seq: int | None = None,
    viewer_id: int | None = None,
) -> list[MessageView]:
    """Return up to ``limit`` messages of a conversation in ascending ``seq`` order.

    Without bounds it returns the newest page. ``before_seq`` pages back
    through history, to messages with a smaller seq. ``after_seq`` returns
    the oldest messages after a seq the caller already has, which is how a
    client catches up after a reconnect. With ``viewer_id``, raises NotAMemberError unless that
    user is a member. Raises InvalidLimitError for a bad limit or bound and
    ConversationNotFoundError for an unknown conversation.
    """
    limit = _check_limit(limit)
    before_seq = _check_seq_bound("before_seq", before_seq)
    after_seq = _check_seq_bound("after_seq", after_seq)
    conversation = get_conversation(session, conversation_id)
    if viewer_id is not None:
        require_conversation_member(session, conversation_id, viewer_id)

    statement = (
        select(Message, UserProfile.display_name, UserProfile.is_bot)
        .join(UserProfile, UserProfile.id == Message.sender_id)
        .where(Message.conversation_id == conversation_id)
    )
    if before_seq is not None:
        statement = statement.where(Message.seq < before_seq)
    if after_seq is not None:
        statement = statement.where(Message.seq > after_seq).order_by(Message.seq.asc())
    else:
        statement = statement.order_by(Message.seq.desc())
    rows = list(session.exec(statement.limit(limit)).all())
    if after_seq is None:
        rows.reverse()

    return [
        _message_view(message, conversation.instance_id, display_name, is_bot)
        for message, display_name, is_bot in rows
    ]


# Edits, deletes and typing


def get_message(
    session: Session, *, conversation_id: str, message_id: int, viewer_id: int | None = None
) -> MessageView:
    """Return one message of a conversation; a deleted one comes without blocks.

    With ``viewer_id``, raises NotAMemberError unless that user is a member.
    Raises ConversationNotFoundError, InvalidIdError for a message id that is
    not an integer, and MessageNotFoundError when the conversation has no
    such message.
    """
    conversation = get_conversation(session, conversation_id)
    if viewer_id is not None:
        require_conversation_member(session, conversation_id, viewer_id)
    message = _find_message(session, conversation_id, message_id)
    sender = get_user(session, message.sender_id)
    return _message_view(message, conversation.instance_id, sender.display_name, sender.is_bot)


def _find_message(session: Session, conversation_id: str, message_id: int) -> Message:
    if isinstance(message_id, bool) or not isinstance(message_id, int):
        raise InvalidIdError(
            f"message id must be an integer, got {type(message_id).__name__} {message_id!r}"
        )
    message = None
    # No stored id lies outside this range, and PostgreSQL rejects such a value in a query.
    if 1 <= message_id <= _MAX_MESSAGE_ID:
        message = session.get(Message, message_id, populate_existing=True)
    if message is None or message.conversation_id != conversation_id:
        raise MessageNotFoundError(
            f"message {message_id} not found in conversation {conversation_id!r}"
        )
    return message


def _own_message(
    session: Session, *, conversation_id: str, message_id: int, user_id: int, action: str
) -> MessageView:
    """Return a message that ``user_id`` sent, checking membership first."""
    get_conversation(session, conversation_id)
    require_conversation_member(session, conversation_id, user_id)
    view = get_message(session, conversation_id=conversation_id, message_id=message_id)
    if view.sender_id != user_id:
        raise NotMessageSenderError(
            f"message {message_id} was sent by user {view.sender_id}; only its sender may "
            f"{action} it"
        )
    return view


def _deleted_error(view: MessageView) -> MessageDeletedError:
    return MessageDeletedError(
        f"message {view.id} was deleted at {_isoformat(view.deleted_at)} and cannot be edited; "
        "send a new message instead"
    )


def _apply_update(session: Session, statement: sa.Update) -> int:
    """Execute a conditional update of one message row, commit, and return the rows changed."""
    try:
        # The caller re-reads the row after the commit, so the ORM need not
        # synchronise objects already in the session.
        result = session.exec(statement.execution_options(synchronize_session=False))
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return result.rowcount


async def edit_message(
    session: Session,
    *,
    conversation_id: str,
    message_id: int,
    user_id: int,
    content: str | Sequence[dict[str, Any]],
    publisher: Publisher,
) -> MessageView:
    """Replace the content of a message, commit, then publish ``message.updated``.

    ``content`` is a list of blocks, validated as in ``post_message``, or a
    string that becomes one text block. The event carries the whole message
    as ``message.created`` does, with ``editedAt`` set. Content equal to the
    stored content changes nothing and publishes nothing.

    Raises an InvalidContentError subclass for bad ``content``,
    ConversationNotFoundError, NotAMemberError, InvalidIdError,
    MessageNotFoundError, NotMessageSenderError when ``user_id`` did not send
    the message, and MessageDeletedError when it was deleted, all before
    anything is written. A publish failure is logged and swallowed, as in
    ``post_message``.
    """
    blocks = validate_blocks(text_blocks(content) if isinstance(content, str) else content)
    view = _own_message(
        session, conversation_id=conversation_id, message_id=message_id, user_id=user_id,
        action="edit",
    )
    if view.is_deleted:
        raise _deleted_error(view)
    if list(view.blocks) == blocks:
        return view

    edited_at = utc_now()
    # The conditions make the update lose to a delete, and to an edit with a
    # later timestamp, that committed after the read above. So the stored
    # content is always that of the newest editedAt a client has been sent.
    changed = _apply_update(
        session,
        sa.update(Message)
        .where(
            Message.id == view.id,
            Message.deleted_at.is_(None),
            sa.or_(Message.edited_at.is_(None), Message.edited_at < edited_at),
        )
        .values(content=blocks, edited_at=edited_at),
    )
    view = get_message(session, conversation_id=conversation_id, message_id=view.id)
    if not changed:
        if view.is_deleted:
            raise _deleted_error(view)
        logger.info("edit of message %s by user %s lost to a newer edit", view.id, user_id)
        return view

    logger.info("user %s edited message %s in conversation %s", user_id, view.id, conversation_id)
    await _publish_committed(publisher, view, MESSAGE_UPDATED_EVENT, view.to_event_data())
    return view


async def delete_message(
    session: Session,
    *,
    conversation_id: str,
    message_id: int,
    user_id: int,
    publisher: Publisher,
) -> MessageView:
    """Soft-delete a message, commit, then publish ``message.deleted``; return it as deleted.

    The row stays with its ``seq``, but its content is emptied, so history
    and paging return it with ``deleted_at`` set and no blocks. Deleting a
    message that is already deleted returns it and publishes nothing.

    Raises ConversationNotFoundError, NotAMemberError, InvalidIdError,
    MessageNotFoundError, or NotMessageSenderError when ``user_id`` did not
    send the message, all before anything is written. A publish failure is
    logged and swallowed, as in ``post_message``.
    """
    view = _own_message(
        session, conversation_id=conversation_id, message_id=message_id, user_id=user_id,
        action="delete",
    )
    if view.is_deleted:
        return view

    changed = _apply_update(
        session,
        sa.update(Message)
        .where(Message.id == view.id, Message.deleted_at.is_(None))
        .values(content=[], deleted_at=utc_now()),
    )
    view = get_message(session, conversation_id=conversation_id, message_id=view.id)
    if not changed:
        return view  # A concurrent delete committed first and published.

    logger.info("user %s deleted message %s in conversation %s", user_id, view.id, conversation_id)
    await _publish_committed(publisher, view, MESSAGE_DELETED_EVENT, view.to_deleted_event_data())
    return view


async def publish_typing(
    session: Session,
    *,
    conversation_id: str,
    user_id: int,
    publisher: Publisher,
    limiter: TypingLimiter | None = None,
) -> bool:
    """Publish the ephemeral ``typing`` event of ``user_id`` to a conversation's context.

    Writes nothing to the database. With ``limiter``, a call that comes
    sooner than the limiter's interval after the last published one for the
    same user and conversation publishes nothing. Returns True when the
    event was published.

    Raises ConversationNotFoundError, UserNotFoundError or NotAMemberError. A
    publish failure is logged and swallowed, because a lost typing event
    only hides an indicator for a moment.
    """
    conversation = get_conversation(session, conversation_id)
    profile = get_user(session, user_id)
    require_conversation_member(session, conversation_id, user_id)
    if limiter is not None and not limiter.allow(user_id, conversation_id):
        return False

    data = {
        "conversationId": conversation_id,
        "userId": user_id,
        "displayName": profile.display_name,
    }
    # The event service sends typing without a seq and keeps it in no
    # stream (protocol.EPHEMERAL_EVENTS), so it is never replayed.
    context = kiloclaw_conversation_context(conversation.instance_id, conversation_id)
    try:
        await publisher.publish(context, TYPING_EVENT, data)
    except Exception:
        # Any publisher failure is caught, for the reason in the docstring.
        logger.warning("failed to publish %s of user %s in conversation %s",
                       TYPING_EVENT, user_id, conversation_id, exc_info=True)
        return False
    return True
