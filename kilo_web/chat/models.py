"""Database tables of the chat service.

Credentials live in reflex-local-auth's ``localuser`` table. Every account,
human or bot, has one ``user_profile`` row that points at its ``localuser``
row, and the chat tables refer to users by ``user_profile.id``. Bots get a
disabled ``localuser`` row, so they share one username namespace with people
and cannot sign in through the login form.

The schema is created by the Alembic migrations in ``alembic/versions``; a
change here needs a new migration (the migration tests compare the two).
"""

from __future__ import annotations

import datetime
import logging
from typing import Any

import sqlalchemy as sa
from reflex_local_auth.user import LocalUser
from sqlmodel import Field, SQLModel

logger = logging.getLogger(__name__)

ID_MAX_LENGTH = 64
"""Maximum length of an instance or conversation id; equal to the context segment limit."""

CLIENT_MESSAGE_ID_MAX_LENGTH = 64
"""Maximum length of a client message id."""

LABEL_MAX_LENGTH = 200
"""Maximum length of an instance label or a conversation title, in characters."""

DISPLAY_NAME_MAX_LENGTH = 100
"""Maximum length of a display name, in characters."""

__all__ = [
    "Conversation",
    "ConversationMember",
    "Instance",
    "InstanceMember",
    "LocalUser",
    "ApiKey",
    "Bot",
    "Message",
    "UTCDateTime",
    "UserProfile",
    "utc_now",
]


def utc_now() -> datetime.datetime:
    """Return the current time as an aware UTC datetime."""
    return datetime.datetime.now(datetime.timezone.utc)


class UTCDateTime(sa.types.TypeDecorator[datetime.datetime]):
    """A timestamp stored in UTC and always read back as an aware UTC datetime.

    PostgreSQL keeps the offset (``timestamptz``) and returns aware values;
    SQLite has no timezone support, so values are stored as naive UTC there
    and marked as UTC again when read.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(
        self, value: datetime.datetime | None, dialect: sa.Dialect
    ) -> datetime.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(
                f"naive datetime {value.isoformat()} cannot be stored; pass an aware UTC datetime"
            )
        value = value.astimezone(datetime.timezone.utc)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(
        self, value: datetime.datetime | None, dialect: sa.Dialect
    ) -> datetime.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=datetime.timezone.utc)
        return value.astimezone(datetime.timezone.utc)


@sa.event.listens_for(sa.Engine, "connect")
def _configure_sqlite(dbapi_connection: Any, connection_record: Any) -> None:
    """Turn on foreign keys and write-ahead logging on each new SQLite connection.

    SQLite leaves foreign-key enforcement off on every connection. In WAL
    mode a commit syncs one log file instead of a journal and the database
    (a small commit took 0.27 ms instead of 1.08 ms on the development
    machine), and readers do not wait for a writer. ``synchronous`` stays
    FULL, so a commit survives a power loss as well as a crash.
    """
    # The listener fires for every engine in the process. The driver's module
    # ("sqlite3", or SQLAlchemy's aiosqlite adapter) tells SQLite connections apart.
    module_name = type(dbapi_connection).__module__
    if "sqlite" not in module_name:
        return
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA foreign_keys=ON")
        try:
            # The mode is stored in the file, so only the first connection changes it.
            cursor.execute("PRAGMA journal_mode=WAL")
        except Exception as exc:  # The driver's OperationalError; a busy file keeps its mode.
            logger.warning("could not switch the SQLite database to WAL mode: %s", exc)
    finally:
        cursor.close()


class UserProfile(SQLModel, table=True):
    """The chat identity of one account: display name and whether it is a bot."""

    __tablename__ = "user_profile"
    __table_args__ = (
        sa.UniqueConstraint("local_user_id", name="uq_user_profile_local_user_id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    local_user_id: int = Field(foreign_key="localuser.id", ondelete="CASCADE", nullable=False)
    display_name: str = Field(sa_type=sa.String(DISPLAY_NAME_MAX_LENGTH), nullable=False)
    is_bot: bool = Field(default=False, sa_column_kwargs={"server_default": sa.false()})
    token_version: int = Field(default=0, sa_column_kwargs={"server_default": sa.text("0")})
    """Event-service tokens with a lower ``version`` claim are rejected."""
    created_at: datetime.datetime = Field(
        default_factory=utc_now, sa_type=UTCDateTime, nullable=False
    )


class Instance(SQLModel, table=True):
    """A kiloclaw sandbox: the space that conversations belong to."""

    __tablename__ = "instance"

    id: str = Field(sa_type=sa.String(ID_MAX_LENGTH), primary_key=True)
    label: str = Field(sa_type=sa.String(LABEL_MAX_LENGTH), nullable=False)
    owner_id: int = Field(foreign_key="user_profile.id", nullable=False, index=True)
    created_at: datetime.datetime = Field(
        default_factory=utc_now, sa_type=UTCDateTime, nullable=False
    )


class InstanceMember(SQLModel, table=True):
    """Membership of one user in one instance."""

    __tablename__ = "instance_member"

    instance_id: str = Field(
        sa_type=sa.String(ID_MAX_LENGTH),
        foreign_key="instance.id",
        ondelete="CASCADE",
        primary_key=True,
    )
    user_id: int = Field(
        foreign_key="user_profile.id", ondelete="CASCADE", primary_key=True, index=True
    )
    joined_at: datetime.datetime = Field(
        default_factory=utc_now, sa_type=UTCDateTime, nullable=False
    )


class Conversation(SQLModel, table=True):
    """A conversation inside an instance.

    ``last_message_seq`` is the sequence number of the newest message. Posting
    increments it in the same transaction as the insert, so numbers are dense
    and unique per conversation.
    """

    __tablename__ = "conversation"

    id: str = Field(sa_type=sa.String(ID_MAX_LENGTH), primary_key=True)
    instance_id: str = Field(
        sa_type=sa.String(ID_MAX_LENGTH),
        foreign_key="instance.id",
        ondelete="CASCADE",
        nullable=False,
        index=True,
    )
    title: str = Field(sa_type=sa.String(LABEL_MAX_LENGTH), nullable=False)
    last_message_seq: int = Field(default=0, sa_column_kwargs={"server_default": sa.text("0")})
    created_at: datetime.datetime = Field(
        default_factory=utc_now, sa_type=UTCDateTime, nullable=False
    )


class ConversationMember(SQLModel, table=True):
    """Membership of one user in one conversation; implies instance membership."""

    __tablename__ = "conversation_member"

    conversation_id: str = Field(
        sa_type=sa.String(ID_MAX_LENGTH),
        foreign_key="conversation.id",
        ondelete="CASCADE",
        primary_key=True,
    )
    user_id: int = Field(
        foreign_key="user_profile.id", ondelete="CASCADE", primary_key=True, index=True
    )
    joined_at: datetime.datetime = Field(
        default_factory=utc_now, sa_type=UTCDateTime, nullable=False
    )


class Message(SQLModel, table=True):
    """One message: its position in the conversation, its sender and its content blocks.

    Deleting a message is a soft delete: ``deleted_at`` is set and ``content``
    is emptied, while the row, its ``seq`` and its read-state accounting stay.
    """

    __tablename__ = "message"
    __table_args__ = (
        sa.UniqueConstraint("conversation_id", "seq", name="uq_message_conversation_seq"),
        sa.UniqueConstraint(
            "sender_id", "client_message_id", name="uq_message_sender_client_message_id"
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    conversation_id: str = Field(
        sa_type=sa.String(ID_MAX_LENGTH),
        foreign_key="conversation.id",
        ondelete="CASCADE",
        nullable=False,
    )
    seq: int = Field(nullable=False)
    sender_id: int = Field(foreign_key="user_profile.id", nullable=False, index=True)
    content: list[dict[str, Any]] = Field(sa_type=sa.JSON, nullable=False)
    client_message_id: str | None = Field(
        default=None, sa_type=sa.String(CLIENT_MESSAGE_ID_MAX_LENGTH), nullable=True
    )
    """The sender's own id for the message; a repeat post with it returns this message."""
    created_at: datetime.datetime = Field(
        default_factory=utc_now, sa_type=UTCDateTime, nullable=False
    )
    edited_at: datetime.datetime | None = Field(default=None, sa_type=UTCDateTime, nullable=True)
    """When the sender last changed the content; None for a message never edited."""
    deleted_at: datetime.datetime | None = Field(
        default=None, sa_type=UTCDateTime, nullable=True
    )
    """When the sender deleted the message; None while it is not deleted."""


class ConversationReadState(SQLModel, table=True):
    """How far one member has read one conversation.

    ``last_read_seq`` is the ``seq`` of the newest message the user has read
    and never decreases. A member without a row has read nothing since they
    joined: messages created before ``ConversationMember.joined_at`` are never
    unread. ``kilo_web.chat.read_state`` owns the reads and writes.
    """

    __tablename__ = "conversation_read_state"

    conversation_id: str = Field(
        sa_type=sa.String(ID_MAX_LENGTH),
        foreign_key="conversation.id",
        ondelete="CASCADE",
        primary_key=True,
    )
    user_id: int = Field(
        foreign_key="user_profile.id", ondelete="CASCADE", primary_key=True, index=True
    )
    last_read_seq: int = Field(default=0, sa_column_kwargs={"server_default": sa.text("0")})
    updated_at: datetime.datetime = Field(
        default_factory=utc_now, sa_type=UTCDateTime, nullable=False
    )


class Bot(SQLModel, table=True):
    """A bot account's place: the one instance it belongs to and who made it.

    ``user_id`` is the bot's ``user_profile`` row (``is_bot`` set). A bot is
    a member of its instance and of every conversation in it.
    """

    __tablename__ = "bot"

    user_id: int = Field(foreign_key="user_profile.id", ondelete="CASCADE", primary_key=True)
    instance_id: str = Field(
        sa_type=sa.String(ID_MAX_LENGTH),
        foreign_key="instance.id",
        ondelete="CASCADE",
        nullable=False,
        index=True,
    )
    created_by: int | None = Field(
        default=None, foreign_key="user_profile.id", ondelete="SET NULL", nullable=True
    )
    created_at: datetime.datetime = Field(
        default_factory=utc_now, sa_type=UTCDateTime, nullable=False
    )


class ApiKey(SQLModel, table=True):
    """A bot's API key. Only a SHA-256 digest of the secret part is stored.

    A key reads ``kilo_bot_<id>_<secret>``: the id finds the row, and the
    digest of the secret must match. ``revoked_at`` is set once and never
    cleared; a revoked key is refused from that moment on.
    """

    __tablename__ = "api_key"

    id: str = Field(sa_type=sa.String(ID_MAX_LENGTH), primary_key=True)
    bot_id: int = Field(
        foreign_key="user_profile.id", ondelete="CASCADE", nullable=False, index=True
    )
    secret_sha256: str = Field(sa_type=sa.String(64), nullable=False)
    label: str = Field(default="", sa_type=sa.String(LABEL_MAX_LENGTH), nullable=False)
    created_by: int | None = Field(
        default=None, foreign_key="user_profile.id", ondelete="SET NULL", nullable=True
    )
    created_at: datetime.datetime = Field(
        default_factory=utc_now, sa_type=UTCDateTime, nullable=False
    )
    last_used_at: datetime.datetime | None = Field(
        default=None, sa_type=UTCDateTime, nullable=True
    )
    revoked_at: datetime.datetime | None = Field(
        default=None, sa_type=UTCDateTime, nullable=True
    )
