"""Event-service tokens for chat users: issue with the current version, revoke by raising it."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging

from sqlmodel import Session

from kilo_web.chat.database import shared_engine
from kilo_web.chat.errors import UserNotFoundError
from kilo_web.chat.models import UserProfile
from kilo_web.event_service.tokens import issue_token
from kilo_web.settings import Settings

logger = logging.getLogger(__name__)


def _profile(session: Session, user_id: int) -> UserProfile:
    profile = session.get(UserProfile, user_id)
    if profile is None:
        raise UserNotFoundError(f"user {user_id} not found")
    return profile


def issue_user_token(
    session: Session, user_id: int, *, settings: Settings, token_source: str = "web"
) -> tuple[str, dt.datetime]:
    """Sign a token for ``user_id`` at their current version; return it with its expiry."""
    profile = _profile(session, user_id)
    return issue_token(
        settings.jwt_secret,
        str(user_id),
        token_source=token_source,
        version=profile.token_version,
        ttl_seconds=settings.token_ttl_seconds,
    )


def revoke_user_tokens(session: Session, user_id: int) -> int:
    """Raise the token version of ``user_id`` so every token issued so far is refused.

    Returns the new version. Open connections that use an older token are
    closed by ``EventServiceServer.revoke``, which the caller runs next.
    """
    profile = _profile(session, user_id)
    profile.token_version += 1
    session.add(profile)
    session.commit()
    logger.info("revoked the tokens of user %s (version now %d)", user_id, profile.token_version)
    return profile.token_version


async def token_for(user_id: str, settings: Settings, token_source: str = "web") -> str:
    """Issue a token for ``user_id`` off the event loop; the app shell's token source."""

    def issue() -> str:
        with Session(shared_engine(settings.database_url)) as session:
            token, _ = issue_user_token(
                session, int(user_id), settings=settings, token_source=token_source
            )
            return token

    return await asyncio.to_thread(issue)
