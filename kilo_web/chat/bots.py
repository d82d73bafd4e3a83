"""Bot accounts that belong to an instance, and their API keys.

A bot is an account (``user_profile.is_bot``) with a ``bot`` row naming its
instance. It is a member of that instance and of every conversation in it,
including conversations created later. It signs in with an API key instead
of a password.

An API key reads ``kilo_bot_<key id>_<secret>``. The key id is public and
finds the row. Only the SHA-256 digest of the secret is stored, so a key is
shown once, when it is made, and cannot be read back. The secret carries 256
random bits, which is why a fast digest is enough where a password would need
a slow one.

Revoking a key marks it revoked and raises the bot's token version, so every
event-service token issued to the bot is rejected from then on. Clients using
another, still valid key fetch a fresh token and carry on. The caller then
announces the new version on the event service (``announce_revocation``),
which closes the bot's open connections at once.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import hmac
import logging
import re
import secrets

import sqlalchemy as sa
from sqlmodel import Session, select

from kilo_web.accounts.users import create_bot_user
from kilo_web.chat.errors import (
    InvalidApiKeyError,
    InvalidNameError,
    NotAllowedError,
    NotFoundError,
)
from kilo_web.chat.models import (
    ApiKey,
    Bot,
    Conversation,
    ConversationMember,
    Instance,
    InstanceMember,
    LABEL_MAX_LENGTH,
    LocalUser,
    UserProfile,
    utc_now,
)
from kilo_web.chat.service import get_instance
from kilo_web.chat.tokens import revoke_user_tokens

logger = logging.getLogger(__name__)

API_KEY_PREFIX = "kilo_bot_"
"""Every API key starts with this, so a key is easy to spot in a leaked file."""

_KEY_PATTERN = re.compile(r"kilo_bot_([0-9a-f]{16})_([A-Za-z0-9_-]{43})")

LAST_USED_RESOLUTION = dt.timedelta(minutes=1)
"""``last_used_at`` is written at most this often per key, so a busy bot does not write on every call."""


@dataclasses.dataclass(frozen=True, slots=True)
class BotView:
    """A bot as the API shows it."""

    id: int
    username: str
    display_name: str
    instance_id: str
    created_at: dt.datetime


@dataclasses.dataclass(frozen=True, slots=True)
class ApiKeyView:
    """An API key's public facts; the secret is never part of it."""

    id: str
    bot_id: int
    label: str
    created_at: dt.datetime
    last_used_at: dt.datetime | None
    revoked_at: dt.datetime | None

    @classmethod
    def of(cls, row: ApiKey) -> ApiKeyView:
        return cls(id=row.id, bot_id=row.bot_id, label=row.label, created_at=row.created_at,
                   last_used_at=row.last_used_at, revoked_at=row.revoked_at)


@dataclasses.dataclass(frozen=True, slots=True)
class BotCaller:
    """A request authenticated by an API key."""

    bot_id: int
    instance_id: str
    key_id: str


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


def _require_owner(session: Session, instance_id: str, user_id: int) -> Instance:
    instance = get_instance(session, instance_id)
    if instance.owner_id != user_id:
        raise NotAllowedError(
            f"only the owner of instance {instance_id!r} may manage its bots; "
            "ask the owner to do it"
        )
    return instance


def _bot_view(session: Session, bot: Bot) -> BotView:
    profile = session.get(UserProfile, bot.user_id)
    assert profile is not None  # the foreign key guarantees it
    local_user = session.get(LocalUser, profile.local_user_id)
    return BotView(
        id=bot.user_id,
        username=local_user.username if local_user is not None else "",
        display_name=profile.display_name,
        instance_id=bot.instance_id,
        created_at=bot.created_at,
    )


def get_bot(session: Session, bot_id: int) -> Bot:
    """Return the bot row of ``bot_id``, or raise NotFoundError."""
    bot = session.get(Bot, bot_id)
    if bot is None:
        raise NotFoundError(f"bot {bot_id} not found; list an instance's bots for their ids")
    return bot


def bot_of(session: Session, user_id: int) -> Bot | None:
    """Return the bot row of ``user_id``, or None for a person."""
    return session.get(Bot, user_id)


def instance_bot_ids(session: Session, instance_id: str) -> list[int]:
    """Return the ids of the bots that belong to ``instance_id``."""
    return list(session.exec(select(Bot.user_id).where(Bot.instance_id == instance_id)).all())


def attach_bot(
    session: Session, *, bot_id: int, instance_id: str, created_by: int | None = None
) -> BotView:
    """Make the existing bot account ``bot_id`` belong to ``instance_id``.

    Adds it to the instance and to every conversation in it. Raises
    NotFoundError for an unknown id, NotAllowedError for a person's
    account, and NotAllowedError when the bot already belongs elsewhere.
    """
    profile = session.get(UserProfile, bot_id)
    if profile is None:
        raise NotFoundError(f"user {bot_id} not found")
    if not profile.is_bot:
        raise NotAllowedError(
            f"user {bot_id} is a person, not a bot; add people to conversations instead"
        )
    get_instance(session, instance_id)
    existing = session.get(Bot, bot_id)
    if existing is not None:
        if existing.instance_id != instance_id:
            raise NotAllowedError(
                f"bot {bot_id} already belongs to instance {existing.instance_id!r}; "
                "a bot belongs to one instance"
            )
        return _bot_view(session, existing)

    bot = Bot(user_id=bot_id, instance_id=instance_id, created_by=created_by)
    session.add(bot)
    member = select(InstanceMember).where(
        InstanceMember.instance_id == instance_id, InstanceMember.user_id == bot_id
    )
    if session.exec(member).first() is None:
        session.add(InstanceMember(instance_id=instance_id, user_id=bot_id))
    joined = select(ConversationMember.conversation_id).where(ConversationMember.user_id == bot_id)
    missing = select(Conversation.id).where(
        Conversation.instance_id == instance_id, Conversation.id.not_in(joined)
    )
    for conversation_id in session.exec(missing).all():
        session.add(ConversationMember(conversation_id=conversation_id, user_id=bot_id))
    session.commit()
    session.refresh(bot)
    logger.info("bot %s now belongs to instance %s", bot_id, instance_id)
    return _bot_view(session, bot)


def create_bot(
    session: Session, *, instance_id: str, username: str, display_name: str, created_by: int
) -> BotView:
    """Create a bot in ``instance_id``; only the instance's owner may.

    Raises NotFoundError, NotAllowedError, InvalidUsernameError,
    InvalidNameError, or AlreadyExistsError when the username is taken.
    """
    _require_owner(session, instance_id, created_by)
    profile = create_bot_user(session, username=username, display_name=display_name)
    assert profile.id is not None
    return attach_bot(session, bot_id=profile.id, instance_id=instance_id, created_by=created_by)


def list_bots(session: Session, instance_id: str) -> list[BotView]:
    """Return the bots of ``instance_id``, oldest first."""
    rows = session.exec(
        select(Bot).where(Bot.instance_id == instance_id).order_by(Bot.created_at, Bot.user_id)
    ).all()
    return [_bot_view(session, bot) for bot in rows]


def create_api_key(
    session: Session, *, bot_id: int, created_by: int | None, label: str = ""
) -> tuple[ApiKeyView, str]:
    """Make a new API key for ``bot_id``; return its view and the key, which is shown once.

    With ``created_by`` set, that user must own the bot's instance (raises
    NotAllowedError); ``None`` is for operators' tools such as the seed.
    """
    bot = get_bot(session, bot_id)
    if created_by is not None:
        _require_owner(session, bot.instance_id, created_by)
    label = label.strip()
    if len(label) > LABEL_MAX_LENGTH:
        raise InvalidNameError(
            f"key label is {len(label)} characters long; the maximum is {LABEL_MAX_LENGTH}"
        )
    key_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    row = ApiKey(id=key_id, bot_id=bot_id, secret_sha256=_digest(secret), label=label,
                 created_by=created_by)
    session.add(row)
    session.commit()
    session.refresh(row)
    logger.info("created API key %s for bot %s", key_id, bot_id)
    return ApiKeyView.of(row), f"{API_KEY_PREFIX}{key_id}_{secret}"


def list_api_keys(session: Session, *, bot_id: int, user_id: int) -> list[ApiKeyView]:
    """Return the keys of ``bot_id``, revoked ones included; only for the instance's owner."""
    bot = get_bot(session, bot_id)
    _require_owner(session, bot.instance_id, user_id)
    rows = session.exec(
        select(ApiKey).where(ApiKey.bot_id == bot_id).order_by(ApiKey.created_at, ApiKey.id)
    ).all()
    return [ApiKeyView.of(row) for row in rows]


def revoke_api_key(
    session: Session, *, bot_id: int, key_id: str, user_id: int | None
) -> tuple[ApiKeyView, int]:
    """Revoke one key of ``bot_id``; return it and the bot's new token version.

    Revoking a revoked key changes nothing and returns the current version.
    ``user_id`` must own the bot's instance, or be None for operators' tools.
    """
    bot = get_bot(session, bot_id)
    if user_id is not None:
        _require_owner(session, bot.instance_id, user_id)
    row = session.get(ApiKey, key_id)
    if row is None or row.bot_id != bot_id:
        raise NotFoundError(f"API key {key_id!r} not found among the keys of bot {bot_id}")
    if row.revoked_at is None:
        row.revoked_at = utc_now()
        session.add(row)
        session.commit()
        version = revoke_user_tokens(session, bot_id)
        logger.info("revoked API key %s of bot %s", key_id, bot_id)
    else:
        profile = session.get(UserProfile, bot_id)
        version = profile.token_version if profile is not None else 0
    session.refresh(row)
    return ApiKeyView.of(row), version


def looks_like_api_key(value: str) -> bool:
    """Tell whether a bearer credential is meant as an API key rather than a session token."""
    return value.startswith(API_KEY_PREFIX)


def authenticate_api_key(session: Session, key: str) -> BotCaller:
    """Return the bot that ``key`` belongs to, or raise InvalidApiKeyError.

    The error message names the key id at most, never the secret.
    """
    match = _KEY_PATTERN.fullmatch(key)
    if match is None:
        raise InvalidApiKeyError(
            "the API key is malformed: expected kilo_bot_<16 hex digits>_<43 characters>; "
            "copy the whole key"
        )
    key_id, secret = match.groups()
    row = session.get(ApiKey, key_id)
    if row is None or not hmac.compare_digest(row.secret_sha256, _digest(secret)):
        raise InvalidApiKeyError(f"API key {key_id} is not valid; ask the instance owner for a key")
    if row.revoked_at is not None:
        raise InvalidApiKeyError(
            f"API key {key_id} was revoked at {row.revoked_at.isoformat()}; "
            "ask the instance owner for a new key"
        )
    bot = session.get(Bot, row.bot_id)
    if bot is None:
        raise InvalidApiKeyError(f"API key {key_id} belongs to no bot any more")
    now = utc_now()
    if row.last_used_at is None or now - row.last_used_at >= LAST_USED_RESOLUTION:
        session.execute(
            sa.update(ApiKey).where(ApiKey.id == key_id).values(last_used_at=now)
        )
        session.commit()
    return BotCaller(bot_id=bot.user_id, instance_id=bot.instance_id, key_id=key_id)
