"""The event service inside the Reflex backend process (the embedded default).

The process has one backplane. The chat service publishes to it, and the
embedded server, started by the ``embedded_event_service`` lifespan task,
receives from it. With KILO_REDIS_URL set it is the Redis backplane, which
also reaches event-service nodes in other processes.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

import redis.asyncio as redis

from kilo_web.chat.access import DatabaseAuthorizer
from kilo_web.chat.database import make_engine
from kilo_web.event_service.backplane import Backplane, InMemoryBackplane
from kilo_web.event_service.cluster_presence import ClusterPresence
from kilo_web.event_service.redis_backplane import RedisBackplane
from kilo_web.event_service.server import EventServiceServer
from kilo_web.settings import Settings, get_settings

logger = logging.getLogger(__name__)

_backplane: Backplane | None = None


def get_backplane() -> Backplane:
    """Return the backplane this process publishes to: Redis when KILO_REDIS_URL is set."""
    global _backplane
    if _backplane is None:
        settings = get_settings()
        if settings.redis_url:
            _backplane = RedisBackplane(settings.redis_url, prefix=settings.redis_prefix)
            logger.info("publishing through the Redis backplane (prefix %s)", settings.redis_prefix)
        else:
            _backplane = InMemoryBackplane()
    return _backplane


def cluster_presence_from_settings(
    settings: Settings, node_id: str | None = None
) -> ClusterPresence | None:
    """Return the Redis presence of this node when KILO_REDIS_URL is set, else None."""
    if not settings.redis_url:
        return None
    return ClusterPresence(
        redis.Redis.from_url(settings.redis_url),
        node_id=node_id or settings.node_id,
        prefix=settings.redis_prefix,
        ttl_seconds=settings.presence_ttl_seconds,
    )


def server_from_settings(
    settings: Settings,
    *,
    backplane: Backplane,
    host: str | None = None,
    port: int | None = None,
    node_id: str | None = None,
) -> EventServiceServer:
    """Build an event service configured by ``settings``, authorizing from the chat database."""
    return EventServiceServer(
        secret=settings.jwt_secret,
        authorizer=DatabaseAuthorizer(make_engine(settings.database_url)),
        host=host or settings.event_service_host,
        port=settings.event_service_port if port is None else port,
        backplane=backplane,
        max_frame_bytes=settings.max_frame_bytes,
        max_frames_per_second=settings.max_frames_per_second,
        frame_burst=int(settings.max_frames_per_second * 4),
        presence_grace_seconds=settings.presence_grace_seconds,
        history_size=settings.history_size,
        ping_interval=settings.ping_interval_seconds,
        ping_timeout=settings.ping_timeout_seconds,
        cluster=cluster_presence_from_settings(settings, node_id),
        max_buffered_bytes=settings.max_buffered_bytes,
        user_subscribe_rate=settings.user_subscribes_per_second,
        compression=settings.event_service_compression,
    )


_server: EventServiceServer | None = None


def get_embedded_server() -> EventServiceServer | None:
    """Return the event service running in this process, if there is one."""
    return _server


@contextlib.asynccontextmanager
async def embedded_event_service() -> AsyncIterator[EventServiceServer | None]:
    """Run the event service for the lifetime of the Reflex backend, if enabled."""
    settings = get_settings()
    if not settings.embed_event_service:
        logger.info("KILO_EMBED_EVENT_SERVICE=0: expecting the event service at %s",
                    settings.event_service_url)
        if not settings.redis_url:
            logger.warning("KILO_EMBED_EVENT_SERVICE=0 without KILO_REDIS_URL: this process "
                           "publishes to no event-service node, so nobody sees new messages "
                           "live; set KILO_REDIS_URL on the app and on the nodes")
        yield None
        return
    global _server
    server = server_from_settings(settings, backplane=get_backplane())
    try:
        await server.start()
    except OSError as exc:
        raise RuntimeError(
            f"cannot start the embedded event service on {settings.event_service_host}:"
            f"{settings.event_service_port}: {exc}; free the port or set "
            "KILO_EVENT_SERVICE_PORT"
        ) from exc
    _server = server
    try:
        yield server
    finally:
        _server = None
        await server.close()
