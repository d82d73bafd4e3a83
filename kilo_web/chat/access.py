"""Who may subscribe to which event-service context, decided from the chat database.

=================================  ============================================
Context                            Who may subscribe
=================================  ============================================
``/kiloclaw/{s}``                  members of instance ``s``
``/kiloclaw/{s}/{c}``              members of conversation ``c`` of ``s``
``/presence`` + either of those    the same people as the context it mirrors
``/presence/platform``             every signed-in user (filtered per viewer)
``/users/{id}``                    user ``id`` only
anything else                      nobody
=================================  ============================================
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import sqlalchemy as sa
from sqlmodel import Session, select

from kilo_web.chat.models import Conversation, ConversationMember, InstanceMember, UserProfile
from kilo_web.event_service.contexts import PLATFORM_PRESENCE_CONTEXT, PRESENCE_PREFIX


def _profile_id(user_id: str) -> int | None:
    return int(user_id) if user_id.isdigit() else None


class DatabaseAuthorizer:
    """An event-service ``Authorizer`` over the chat tables.

    Queries run in a worker thread so the event service's loop never waits
    on the database.
    """

    def __init__(self, engine: sa.Engine) -> None:
        self._engine = engine

    async def token_version(self, user_id: str) -> int | None:
        return await asyncio.to_thread(self._token_version, user_id)

    async def forbidden_contexts(self, user_id: str, contexts: Sequence[str]) -> list[str]:
        return await asyncio.to_thread(self._forbidden_contexts, user_id, list(contexts))

    async def visible_users(self, user_id: str) -> frozenset[str]:
        return await asyncio.to_thread(self._visible_users, user_id)

    def _token_version(self, user_id: str) -> int | None:
        profile_id = _profile_id(user_id)
        if profile_id is None:
            return None
        with Session(self._engine) as session:
            profile = session.get(UserProfile, profile_id)
            return None if profile is None else profile.token_version

    def _forbidden_contexts(self, user_id: str, contexts: list[str]) -> list[str]:
        profile_id = _profile_id(user_id)
        if profile_id is None:
            return contexts
        with Session(self._engine) as session:
            return [c for c in contexts if not self._allowed(session, profile_id, c)]

    @staticmethod
    def _allowed(session: Session, profile_id: int, context: str) -> bool:
        if context == PLATFORM_PRESENCE_CONTEXT:
            return True
        if context.startswith(PRESENCE_PREFIX + "/"):
            context = context.removeprefix(PRESENCE_PREFIX)
        segments = context.split("/")[1:]
        if len(segments) == 2 and segments[0] == "users":
            return segments[1] == str(profile_id)
        if segments[0] != "kiloclaw" or len(segments) not in (2, 3):
            return False
        if len(segments) == 2:
            statement = select(InstanceMember).where(
                InstanceMember.instance_id == segments[1], InstanceMember.user_id == profile_id
            )
            return session.exec(statement).first() is not None
        statement = (
            select(ConversationMember)
            .join(Conversation, Conversation.id == ConversationMember.conversation_id)
            .where(
                Conversation.instance_id == segments[1],
                ConversationMember.conversation_id == segments[2],
                ConversationMember.user_id == profile_id,
            )
        )
        return session.exec(statement).first() is not None

    def _visible_users(self, user_id: str) -> frozenset[str]:
        profile_id = _profile_id(user_id)
        if profile_id is None:
            return frozenset()
        with Session(self._engine) as session:
            mine = select(InstanceMember.instance_id).where(InstanceMember.user_id == profile_id)
            by_instance = select(InstanceMember.user_id).where(InstanceMember.instance_id.in_(mine))
            # Adding someone to a conversation adds them to its instance, so the
            # instance co-members include every conversation co-member.
            users = session.exec(by_instance).all()
        return frozenset(str(user) for user in users)
