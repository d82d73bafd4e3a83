"""Commands from the application to every event-service node, carried by the backplane.

The application publishes to ``CONTROL_CONTEXT`` like any other context.
Each node watches it from the moment it starts and acts on what arrives
instead of fanning it out. No client may subscribe to it.

``tokens.revoked`` ``{"userId": "7", "version": 3}``
    Close the user's connections whose token version is below ``version``
    (close code 4003). Sent after ``token_version`` was raised in the
    database, so a client that reconnects with an old token is refused at
    the handshake as well.
"""

from __future__ import annotations

import logging

from kilo_web.event_service.backplane import Publisher

logger = logging.getLogger(__name__)

SYSTEM_PREFIX = "/_system"
"""Prefix of the contexts reserved for the nodes: the server rejects subscriptions to them."""

CONTROL_CONTEXT = f"{SYSTEM_PREFIX}/control"
TOKENS_REVOKED_EVENT = "tokens.revoked"


def is_system_context(context: str) -> bool:
    """Tell whether ``context`` is reserved for the nodes."""
    return context == SYSTEM_PREFIX or context.startswith(SYSTEM_PREFIX + "/")


async def announce_revocation(publisher: Publisher, user_id: str | int, version: int) -> None:
    """Tell every node to close the connections of ``user_id`` with a token older than ``version``."""
    await publisher.publish(
        CONTROL_CONTEXT, TOKENS_REVOKED_EVENT, {"userId": str(user_id), "version": version}
    )
    logger.info("announced token version %d for user %s", version, user_id)
