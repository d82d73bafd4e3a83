"""Process-wide services of the embedded app: notifications and presence lookups.

Built lazily on first use, because building the notifications service
reads the VAPID key, which set-up creates.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator, Iterable

import reflex as rx

from kilo_web.event_service.contexts import kiloclaw_conversation_presence_context
from kilo_web.chat.limits import SendLimiter, TypingLimiter
from kilo_web.event_service.cluster_presence import ClusterPresence
from kilo_web.event_service.embedded import (
    cluster_presence_from_settings,
    get_backplane,
    get_embedded_server,
)
from kilo_web.notifications.service import NotificationService
from kilo_web.notifications.vapid import application_server_key, load_vapid_key
from kilo_web.settings import get_settings


async def conversation_viewers(instance_id: str, conversation_id: str) -> set[int]:
    """Return the users who have the conversation open in a visible page.

    Conversation presence is held only while the page is visible. Users in
    their presence grace period do not count: they left the conversation,
    and a message sent now is unread for them. With Redis the connections
    of every node count, else those of the embedded event service.
    """
    context = kiloclaw_conversation_presence_context(instance_id, conversation_id)
    cluster = _presence_reader()
    users: Iterable[str]
    if cluster is not None:
        users = await cluster.viewers(context)
    else:
        server = get_embedded_server()
        users = server.viewing_users(context) if server is not None else []
    return {int(user) for user in users if user.isdigit()}


@functools.cache
def _presence_reader() -> ClusterPresence | None:
    """Return a reader of the presence that the nodes keep in Redis, when Redis is set."""
    # The node id names entries this process would write; a reader writes none.
    return cluster_presence_from_settings(get_settings(), node_id="app-reader")


@functools.cache
def notification_service() -> NotificationService:
    """Return this process's notifications service."""
    return NotificationService.from_settings(
        get_settings(),
        session_factory=rx.session,
        publisher=get_backplane(),
        viewers=conversation_viewers,
    )


@functools.cache
def send_limiter() -> SendLimiter:
    """Return this process's per-user message limit, shared by the API and the web UI."""
    return SendLimiter.from_settings(get_settings())


@functools.cache
def typing_limiter() -> TypingLimiter:
    """Return this process's typing-event limit, shared by the API and the web UI."""
    return TypingLimiter()


@functools.cache
def webpush_public_key() -> str:
    """Return the VAPID public key browsers subscribe with, or empty without Web Push."""
    settings = get_settings()
    if "webpush" not in settings.push_transports:
        return ""
    return application_server_key(load_vapid_key(settings.vapid_key_path))


@contextlib.asynccontextmanager
async def notifications_lifespan() -> AsyncIterator[None]:
    """Run the cleanup timer, the receipt poller and pending resends with the backend."""
    async with notification_service().lifespan():
        yield
