"""Access control seam of the event service.

The server asks an ``Authorizer`` three things: the current token version
of a user (to reject revoked tokens), which contexts a user may not
subscribe to, and which users a user may see on the platform presence
tier. ``kilo_web.chat.access.DatabaseAuthorizer`` answers from the chat
database; the server itself stays free of storage.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class Authorizer(Protocol):
    """Decide what an authenticated user may do on the event service."""

    async def token_version(self, user_id: str) -> int | None:
        """Return the user's current token version, or None if the user does not exist."""

    async def forbidden_contexts(self, user_id: str, contexts: Sequence[str]) -> list[str]:
        """Return the contexts of ``contexts`` that ``user_id`` may not subscribe to."""

    async def visible_users(self, user_id: str) -> frozenset[str]:
        """Return the users who share an instance or a conversation with ``user_id``."""
