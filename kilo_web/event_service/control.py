"""Commands from the application to every event-service node, carried by the backplane.

The application publishes to ``CONTROL_CONTEXT`` like any other context.
Each node watches it from the moment it starts and acts on what arrives
instead of fanning it out. No client may subscribe to it.

``tokens.revoked`` ``{"userId": "7", "version": 3}``
    Close the user's connections whose token version is below ``version``
    (close code 4003). Sent after ``token_version`` was raised in the
    database, so a client that reconnects with an old token is refused at
    the handshake as well.

``access.revoked`` ``{"userId": "7", "contexts": ["/kiloclaw/s1/c1", ...]}``
    Drop the user's subscriptions to ``contexts`` on every connection, as an
    unsubscribe would, and send those connections the event
    ``access.revoked`` ``{"contexts": [...]}`` on ``/users/{id}``. Sent after
    the user lost the right to the contexts in the database (they left a
    conversation), so a new subscribe is refused as well.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable
from typing import Any

from kilo_web.event_service.backplane import Publisher
from kilo_web.event_service.contexts import InvalidContextError, validate_context
from kilo_web.event_service.protocol import ACCESS_REVOKED_EVENT, MAX_CONTEXTS_PER_FRAME

logger = logging.getLogger(__name__)

SYSTEM_PREFIX = "/_system"
"""Prefix of the contexts reserved for the nodes: the server rejects subscriptions to them."""

CONTROL_CONTEXT = f"{SYSTEM_PREFIX}/control"
TOKENS_REVOKED_EVENT = "tokens.revoked"
ACCESS_REVOKED_COMMAND = ACCESS_REVOKED_EVENT
"""The command has the name of the event that the nodes then send to the user's connections."""


class InvalidCommandError(ValueError):
    """Raised when a control command's data is malformed."""


@dataclasses.dataclass(frozen=True, slots=True)
class AccessRevoked:
    """An ``access.revoked`` command: ``user_id`` may no longer hold ``contexts``."""

    user_id: str
    contexts: tuple[str, ...]

    @classmethod
    def parse(cls, data: dict[str, Any]) -> AccessRevoked:
        """Validate the command's data; raise InvalidCommandError naming the bad field."""
        user_id, contexts = data.get("userId"), data.get("contexts")
        if not isinstance(user_id, str) or not user_id:
            raise InvalidCommandError(f"'userId' must be a non-empty string, got {user_id!r}")
        if not isinstance(contexts, list) or not 1 <= len(contexts) <= MAX_CONTEXTS_PER_FRAME:
            raise InvalidCommandError(
                f"'contexts' must be a list of 1 to {MAX_CONTEXTS_PER_FRAME} contexts, "
                f"got {contexts!r:.200}"
            )
        try:
            valid = tuple(dict.fromkeys(validate_context(c) for c in contexts))
        except InvalidContextError as exc:
            raise InvalidCommandError(f"'contexts' contains an invalid context: {exc}") from exc
        return cls(user_id=user_id, contexts=valid)


def is_system_context(context: str) -> bool:
    """Tell whether ``context`` is reserved for the nodes."""
    return context == SYSTEM_PREFIX or context.startswith(SYSTEM_PREFIX + "/")


async def announce_revocation(publisher: Publisher, user_id: str | int, version: int) -> None:
    """Tell every node to close the connections of ``user_id`` with a token older than ``version``."""
    await publisher.publish(
        CONTROL_CONTEXT, TOKENS_REVOKED_EVENT, {"userId": str(user_id), "version": version}
    )
    logger.info("announced token version %d for user %s", version, user_id)


async def announce_access_revoked(
    publisher: Publisher, user_id: str | int, contexts: Iterable[str]
) -> None:
    """Tell every node to drop the subscriptions of ``user_id`` to ``contexts``.

    Raises InvalidContextError for a malformed context, before anything is
    published, and whatever the publisher raises.
    """
    revoked = [validate_context(context) for context in contexts]
    await publisher.publish(
        CONTROL_CONTEXT, ACCESS_REVOKED_COMMAND, {"userId": str(user_id), "contexts": revoked}
    )
    logger.info("announced that user %s lost access to %s", user_id, ", ".join(revoked))
