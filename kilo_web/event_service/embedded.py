"""The event service inside the Reflex backend process (the embedded default).

The process has one backplane. The chat service publishes to it, and the
embedded server, started by the ``embedded_event_service`` lifespan task,
receives from it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from kilo_web.event_service.backplane import Backplane, InMemoryBackplane
from kilo_web.event_service.server import EventServiceServer
from kilo_web.settings import get_settings

logger = logging.getLogger(__name__)

_backplane: Backplane = InMemoryBackplane()


def get_backplane() -> Backplane:
    """Return the backplane this process publishes to."""
    # TODO: with KILO_EMBED_EVENT_SERVICE=0 the events published here reach a
    # separate event-service process only through a shared backplane (Redis
    # pub/sub), which does not exist yet.
    return _backplane


@contextlib.asynccontextmanager
async def embedded_event_service() -> AsyncIterator[EventServiceServer | None]:
    """Run the event service for the lifetime of the Reflex backend, if enabled."""
    settings = get_settings()
    if not settings.embed_event_service:
        logger.info("KILO_EMBED_EVENT_SERVICE=0: expecting the event service at %s",
                    settings.event_service_url)
        yield None
        return
    server = EventServiceServer(
        secret=settings.jwt_secret,
        host=settings.event_service_host,
        port=settings.event_service_port,
        backplane=_backplane,
        max_frame_bytes=settings.max_frame_bytes,
    )
    try:
        await server.start()
    except OSError as exc:
        raise RuntimeError(
            f"cannot start the embedded event service on {settings.event_service_host}:"
            f"{settings.event_service_port}: {exc}; free the port or set "
            "KILO_EVENT_SERVICE_PORT"
        ) from exc
    try:
        yield server
    finally:
        await server.close()
