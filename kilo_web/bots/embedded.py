"""The demo bot inside the Reflex backend process, as a lifespan task.

With ``KILO_DEMO_BOT=1`` (the default) and an API key (KILO_BOT_API_KEY or
the key file the seed writes), the backend runs the demo bot as an asyncio
task. The bot calls the backend's own ``/api`` over loopback
(KILO_BOT_API_URL) and connects to the event service. The task starts while the
backend is still starting and does not accept requests yet, so the bot
retries its first calls with backoff; start-up never waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from kilo_web.bots.api_client import ApiError
from kilo_web.bots.demo import load_api_key, run_demo_bot
from kilo_web.bots.keys import KeyFileError
from kilo_web.settings import Settings, get_settings

logger = logging.getLogger(__name__)


def _log_end(task: asyncio.Task[None]) -> None:
    if task.cancelled():
        return
    error = task.exception()
    if isinstance(error, ApiError):
        logger.error("the demo bot stopped because the API rejected it: %s; create a new key "
                     "with 'python -m kilo_web.bots.keys create kilobot --force'", error)
    elif error is not None:
        logger.error("the demo bot stopped on an unexpected error", exc_info=error)


@contextlib.asynccontextmanager
async def demo_bot_lifespan(settings: Settings | None = None) -> AsyncIterator[asyncio.Task[None] | None]:
    """Run the demo bot while the backend runs, if enabled and a key exists; yield its task."""
    settings = settings or get_settings()
    if not settings.demo_bot:
        logger.info("KILO_DEMO_BOT=0: not starting the demo bot")
        yield None
        return
    try:
        api_key = load_api_key(settings)
    except KeyFileError as exc:
        logger.error("not starting the demo bot: %s", exc)
        yield None
        return
    if api_key is None:
        logger.info("not starting the demo bot: no API key in %s and KILO_BOT_API_KEY is unset; "
                    "create one with 'python -m kilo_web.bots.keys create kilobot'",
                    settings.bot_api_key_path)
        yield None
        return

    task = asyncio.create_task(run_demo_bot(settings, api_key=api_key), name="demo bot")
    task.add_done_callback(_log_end)
    logger.info("started the demo bot against %s and %s", settings.bot_api_base_url,
                settings.event_service_url)
    try:
        yield task
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        logger.info("stopped the demo bot")


def embedded_demo_bot() -> contextlib.AbstractAsyncContextManager[asyncio.Task[None] | None]:
    """Return the lifespan context that ``kilo_web.py`` registers: the demo bot with the process's settings."""
    return demo_bot_lifespan()
