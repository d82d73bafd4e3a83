"""The demo bot: replies to every person's message in the conversations of its instance.

It uses only what any outside program can use: the HTTP API, authenticated
with the bot's API key, and the event-service SDK (``EventServiceClient``),
authenticated with tokens from ``POST /api/token``. Run it on its own with::

    python -m kilo_web.bots.demo --api-url http://127.0.0.1:8000

or let the Reflex backend run it (``KILO_DEMO_BOT=1``, see ``embedded``).

What it does:

- It subscribes to its user context ``/users/{id}`` (where ``conversation.added``
  and ``conversation.removed`` arrive), to the instance's presence context (so
  members see it online) and to the context of each of its conversations.
  On ``conversation.removed`` it stops tracking that conversation.
- It replies to each ``message.created`` from a person with one Markdown
  block (see ``replies``), posted with ``clientMessageId``
  ``reply-<message id>``, so a retry or a restart never replies twice, and
  then marks the conversation read. Messages of bots, itself included, get
  no reply, so two bots cannot reply to each other forever.
- When the SDK reports that the events missed during a reconnect were not
  replayed (``context.subscribed`` with ``recovered`` false), it fetches the
  messages after the last seq it saw and replies to those.
- A reply that fails is retried later from its seq, and one bad message never
  stops the bot.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import datetime as dt
import logging
import random
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from kilo_web.bots import replies
from kilo_web.bots.api_client import ApiError, ApiUnavailableError, BotIdentity, ChatApiClient
from kilo_web.bots.keys import KeyFileError, read_api_key
from kilo_web.event_service import protocol
from kilo_web.event_service.client import (
    RECOVERY_FAILED,
    SUBSCRIBED,
    CredentialsRejected,
    EventServiceClient,
    backoff_delay,
)
from kilo_web.event_service.contexts import (
    kiloclaw_conversation_context,
    kiloclaw_instance_presence_context,
    user_context,
)
from kilo_web.event_service.protocol import Event
from kilo_web.settings import Settings, get_settings

logger = logging.getLogger(__name__)

MESSAGE_CREATED = "message.created"
CONVERSATION_ADDED = "conversation.added"
CONVERSATION_REMOVED = "conversation.removed"

CATCH_UP_PAGE_SIZE = 100
"""Messages fetched per page when catching up after a reconnect."""

ADDED_CATCH_UP_LIMIT = 20
"""Number of newest messages the bot replies to in a conversation it just joined.

Bots join every conversation of their instance when it is created, so these
are usually the few messages posted before the bot's subscription took
effect. The limit keeps a bot added to a long conversation from replying to
its whole history.
"""

STATS_WINDOW = 200
"""Newest messages ``stats`` counts senders in; the API's largest page."""

REPLIED_MEMORY = 10_000
"""Number of replied-to message ids the bot keeps; older ones rely on ``clientMessageId``."""

SUBSCRIBE_BATCH = protocol.MAX_CONTEXTS_PER_FRAME
"""Contexts per subscribe call; the server accepts at most this many per frame."""

FORBIDDEN_RESYNC_SECONDS = 30.0
"""Shortest time between two resynchronisations caused by ``forbidden`` errors."""


def reply_client_message_id(message_id: int | str) -> str:
    """Return the ``clientMessageId`` of the reply to ``message_id``: the same on every try."""
    return f"reply-{message_id}"


@dataclasses.dataclass
class ConversationState:
    """The bot's bookkeeping for one conversation.

    ``last_seen`` is the highest seq the bot saw (None until its first
    subscription was acknowledged). ``retry_after`` is the seq after which
    a failed reply waits to be retried.
    """

    id: str
    instance_id: str
    title: str
    joined_while_running: bool
    last_seen: int | None = None
    retry_after: int | None = None
    catch_up_queued: bool = False

    @property
    def context(self) -> str:
        return kiloclaw_conversation_context(self.instance_id, self.id)


Job = Callable[[], Awaitable[None]]


class DemoBot:
    """The demo bot over one API client and one event-service connection.

    ``run()`` works until it is cancelled. Event handlers only queue work;
    one worker task does the HTTP calls in arrival order, so the SDK's reader
    never waits on a slow API.
    """

    def __init__(
        self,
        api: ChatApiClient,
        event_service_url: str,
        *,
        reconnect_min_seconds: float = 0.5,
        reconnect_max_seconds: float = 30.0,
        rng: random.Random | None = None,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self.api = api
        self.event_service_url = event_service_url
        self._reconnect_min = reconnect_min_seconds
        self._reconnect_max = reconnect_max_seconds
        self._rng = rng or random.Random()
        self._clock = clock
        self.me: BotIdentity | None = None
        self.client: EventServiceClient | None = None
        self.conversations: dict[str, ConversationState] = {}
        self._by_context: dict[str, ConversationState] = {}
        self._replied: collections.OrderedDict[int, None] = collections.OrderedDict()
        self._jobs: asyncio.Queue[tuple[str, Job]] = asyncio.Queue()
        self._fatal: asyncio.Future[None] | None = None
        self._last_resync: float | None = None
        self._retry_handles: set[asyncio.TimerHandle] = set()
        self.replies_posted = 0
        """Replies this bot created (repeats that the API deduplicated excluded)."""

    # Life cycle ---------------------------------------------------------------

    async def run(self) -> None:
        """Sign in, subscribe and reply to messages until cancelled.

        Raises ApiError when the API rejects the key (also later, when the
        key is revoked) or when the account is not a bot. Transient failures
        are retried without end.
        """
        self._fatal = asyncio.get_running_loop().create_future()
        me = await self.api.me(attempts=None)
        if not me.is_bot or me.instance_id is None:
            raise ApiError("GET", "/api/me", 200, "not_a_bot",
                           f"the key belongs to {me.username!r}, which is not a bot of an instance")
        self.me = me
        logger.info("bot %s (user %s) starts in instance %s", me.username, me.id, me.instance_id)

        client = EventServiceClient(
            # Several nodes may be named, separated by commas, as in KILO_EVENT_SERVICE_URL.
            [url.strip() for url in self.event_service_url.split(",") if url.strip()],
            self._fetch_token,
            reconnect_min_seconds=self._reconnect_min,
            reconnect_max_seconds=self._reconnect_max,
            name=f"bot {me.username}",
        )
        self.client = client
        client.on(MESSAGE_CREATED, self._on_message_created)
        client.on(CONVERSATION_ADDED, self._on_conversation_added)
        client.on(CONVERSATION_REMOVED, self._on_conversation_removed)
        client.on(SUBSCRIBED, self._on_subscribed)
        client.on(RECOVERY_FAILED, self._on_recovery_failed)
        client.on_error(self._on_error)
        worker = asyncio.create_task(self._work(), name=f"bot {me.username} worker")
        worker.add_done_callback(self._worker_done)
        try:
            for conversation in await self.api.conversations(attempts=None):
                self._track(conversation, joined_while_running=False)
            # Held before the socket opens, so the first connect sends them all.
            await client.subscribe([user_context(me.id),
                                    kiloclaw_instance_presence_context(me.instance_id)])
            await self._subscribe_conversations(list(self.conversations.values()))
            await self._unless_fatal(client.connect())
            logger.info("bot %s is online with %d conversations", me.username,
                        len(self.conversations))
            await self._fatal
        finally:
            for handle in self._retry_handles:
                handle.cancel()
            worker.cancel()
            await asyncio.gather(worker, return_exceptions=True)
            await client.close()
            logger.info("bot %s stopped", me.username)

    async def _fetch_token(self) -> str:
        # The SDK calls this for every connect and before each token expires,
        # and retries with backoff when it raises anything but CredentialsRejected.
        try:
            return await self.api.token()
        except ApiError as exc:
            if exc.status in (401, 403):
                logger.error("the API rejected the bot's token request, so the bot stops: %s", exc)
                self._stop(exc)
                raise CredentialsRejected(str(exc)) from exc
            raise

    async def _unless_fatal(self, awaitable: Awaitable[None]) -> None:
        """Await ``awaitable``, but raise the fatal error instead if one comes first.

        A key revoked before the first connect makes every token request
        fail, so ``connect()`` alone would wait forever.
        """
        assert self._fatal is not None
        task = asyncio.ensure_future(awaitable)
        try:
            await asyncio.wait({task, self._fatal}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self._fatal.done():
            self._fatal.result()
        task.result()

    def _stop(self, error: BaseException) -> None:
        if self._fatal is not None and not self._fatal.done():
            self._fatal.set_exception(error)

    def _worker_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self._stop(task.exception())

    # Event handlers: they only queue work -------------------------------------

    def _on_message_created(self, event: Event) -> None:
        data = event.data
        self._queue(f"message {data.get('messageId')}", lambda: self.handle_message(data))

    def _on_conversation_added(self, event: Event) -> None:
        data = event.data
        self._queue(f"conversation {data.get('conversationId')} added",
                    lambda: self._join(data))

    def _on_conversation_removed(self, event: Event) -> None:
        data = event.data
        self._queue(f"conversation {data.get('conversationId')} removed",
                    lambda: self._leave(data))

    def _on_subscribed(self, event: Event) -> None:
        assert self.me is not None
        recovered = bool(event.data.get("recovered"))
        if event.context == user_context(self.me.id):
            # conversation.added events published before this subscription
            # took effect, or while the socket was down, are lost: list again.
            if not recovered:
                self._queue("conversation list", self._refresh_conversations)
            return
        state = self._by_context.get(event.context)
        if state is not None and not recovered:
            self._queue_catch_up(state)

    def _on_recovery_failed(self, event: Event) -> None:
        state = self._by_context.get(event.context)
        if state is not None:
            self._queue_catch_up(state)

    def _on_error(self, error: protocol.Error) -> None:
        if error.code != protocol.ErrorCode.FORBIDDEN.value:
            return
        # The SDK already sent the other contexts of the refused frame again.
        # Listing the conversations again drops the lost one from the bot's state.
        loop = asyncio.get_running_loop()
        if self._last_resync is not None and loop.time() - self._last_resync < FORBIDDEN_RESYNC_SECONDS:
            logger.warning("subscribe forbidden again within %.0f s; not resynchronising yet",
                           FORBIDDEN_RESYNC_SECONDS)
            return
        self._last_resync = loop.time()
        self._queue("resubscribe after forbidden", self._resubscribe)

    # The worker ---------------------------------------------------------------

    def _queue(self, description: str, job: Job) -> None:
        self._jobs.put_nowait((description, job))

    def _queue_catch_up(self, state: ConversationState) -> None:
        if state.catch_up_queued:
            return
        state.catch_up_queued = True
        self._queue(f"catch-up of conversation {state.id}", lambda: self._catch_up(state))

    async def _work(self) -> None:
        while True:
            description, job = await self._jobs.get()
            try:
                await job()
            except asyncio.CancelledError:
                raise
            except (ApiError, ApiUnavailableError) as exc:
                logger.warning("bot job %s failed: %s", description, exc)
            except Exception:
                # One bad message or reply must not stop the bot.
                logger.exception("bot job %s failed", description)

    # Conversations ------------------------------------------------------------

    def _track(self, conversation: dict[str, Any], *, joined_while_running: bool) -> ConversationState | None:
        conversation_id = str(conversation.get("id") or conversation.get("conversationId"))
        if conversation_id in self.conversations:
            return None
        state = ConversationState(
            id=conversation_id,
            instance_id=str(conversation["instanceId"]),
            title=str(conversation.get("title") or ""),
            joined_while_running=joined_while_running,
        )
        self.conversations[conversation_id] = state
        self._by_context[state.context] = state
        return state

    async def _subscribe_conversations(self, states: list[ConversationState]) -> None:
        assert self.client is not None
        contexts = [state.context for state in states]
        for start in range(0, len(contexts), SUBSCRIBE_BATCH):
            await self.client.subscribe(contexts[start : start + SUBSCRIBE_BATCH])

    async def _join(self, data: dict[str, Any]) -> None:
        state = self._track(data, joined_while_running=True)
        if state is None:
            return
        logger.info("bot joined conversation %s of instance %s", state.id, state.instance_id)
        await self._subscribe_conversations([state])

    async def _leave(self, data: dict[str, Any]) -> None:
        """Stop tracking a conversation the bot was removed from."""
        assert self.client is not None
        state = self.conversations.pop(str(data.get("conversationId")), None)
        if state is None:
            return
        self._by_context.pop(state.context, None)
        # If the server sent access.revoked, the SDK already dropped the context
        # and this changes nothing.
        await self.client.unsubscribe([state.context])
        logger.info("bot left conversation %s of instance %s", state.id, state.instance_id)

    async def _refresh_conversations(self) -> None:
        new = []
        for conversation in await self.api.conversations():
            state = self._track(conversation, joined_while_running=True)
            if state is not None:
                new.append(state)
        if new:
            logger.info("bot found %d conversations it had not subscribed to", len(new))
            await self._subscribe_conversations(new)

    async def _resubscribe(self) -> None:
        """Drop conversations the bot no longer belongs to and subscribe the others again."""
        assert self.client is not None
        listed = {str(c["id"]) for c in await self.api.conversations()}
        subscribed = list(self.conversations.values())
        await self.client.unsubscribe([state.context for state in subscribed])
        for state in subscribed:
            if state.id not in listed:
                logger.info("bot left conversation %s", state.id)
                del self.conversations[state.id]
                del self._by_context[state.context]
        await self._subscribe_conversations(list(self.conversations.values()))
        await self._refresh_conversations()

    # Messages -----------------------------------------------------------------

    def _see(self, state: ConversationState, seq: int) -> None:
        if state.last_seen is None or seq > state.last_seen:
            state.last_seen = seq

    async def _catch_up(self, state: ConversationState) -> None:
        """Reply to what the bot missed in ``state``'s conversation since it last saw it."""
        state.catch_up_queued = False
        if state.id not in self.conversations:
            return
        if state.last_seen is None:
            await self._start_conversation(state)
            return
        after = state.last_seen
        if state.retry_after is not None:
            after = min(after, state.retry_after)
            state.retry_after = None
        replied = 0
        while True:
            page = await self.api.messages(state.id, after=after, limit=CATCH_UP_PAGE_SIZE)
            for message in page:
                if await self.handle_message(message):
                    replied += 1
            if len(page) < CATCH_UP_PAGE_SIZE:
                break
            after = int(page[-1]["seq"])
        logger.info("bot caught up in conversation %s after seq %s: %d replies",
                    state.id, state.last_seen, replied)

    async def _start_conversation(self, state: ConversationState) -> None:
        """Set the first ``last_seen`` of a conversation after its first subscription."""
        if state.joined_while_running:
            # A conversation made after the bot started: reply to what was
            # posted before the subscription took effect.
            page = await self.api.messages(state.id, limit=ADDED_CATCH_UP_LIMIT)
            for message in page:
                await self.handle_message(message)
            if state.last_seen is None:
                state.last_seen = 0
            return
        # History from before the bot started gets no replies. Events that
        # arrive after this call get replies even when their seq is lower.
        page = await self.api.messages(state.id, limit=1)
        self._see(state, int(page[-1]["seq"]) if page else 0)

    async def handle_message(self, message: dict[str, Any]) -> bool:
        """Reply to one message unless a bot sent it or it has a reply; return True if a reply was posted.

        ``message`` is the data of ``message.created`` or a message of the API.
        A reply that the API deduplicated by its ``clientMessageId`` counts as posted.
        """
        assert self.me is not None
        conversation_id = str(message.get("conversationId"))
        message_id = message.get("messageId", message.get("id"))
        seq = message.get("seq")
        state = self.conversations.get(conversation_id)
        if state is None or not isinstance(message_id, int) or not isinstance(seq, int):
            logger.warning("bot ignored a message without a known conversation, id or seq: "
                           "conversation %s, message %s", conversation_id, message_id)
            return False
        if state.last_seen is None and not state.joined_while_running:
            state.last_seen = seq - 1
        self._see(state, seq)
        if message.get("senderIsBot") or message.get("senderId") == self.me.id:
            return False
        if message_id in self._replied:
            return False
        try:
            await self._reply(state, message, message_id)
        except ApiError as exc:
            # A rejected reply would be rejected again, so it is not retried.
            logger.warning("bot failed to reply to message %s in conversation %s: %s",
                           message_id, state.id, exc)
            return False
        except ApiUnavailableError as exc:
            self._schedule_retry(state, seq, exc)
            return False
        return True

    async def _reply(self, state: ConversationState, message: dict[str, Any], message_id: int) -> None:
        assert self.me is not None
        text = replies.message_text(message.get("blocks") or [])
        command = replies.parse_command(text)
        stats = await self._stats(state) if command.name == "stats" else None
        reply = replies.compose_reply(
            command,
            sender_name=str(message.get("senderDisplayName") or "there"),
            bot_name=self.me.display_name,
            now=self._clock(),
            rng=self._rng,
            stats=stats,
        )

        posted = await self.api.post_message(
            state.id, [replies.markdown_block(reply)],
            client_message_id=reply_client_message_id(message_id),
        )
        self._remember(message_id)
        # last_seen moves when the reply's own event arrives: a person's
        # message posted just before the reply may still be on its way.
        reply_seq = int(posted.message["seq"])

        if posted.created:
            self.replies_posted += 1
            logger.info("bot replied to message %s in conversation %s with message %s",
                        message_id, state.id, posted.message.get("id"))
        else:
            logger.info("bot had already replied to message %s in conversation %s",
                        message_id, state.id)

        try:
            await self.api.mark_read(state.id, reply_seq)
        except (ApiError, ApiUnavailableError) as exc:
            # The reply is posted, and the next reply moves the read position.
            logger.warning("bot could not mark conversation %s read up to %s: %s",
                           state.id, reply_seq, exc)

    async def _stats(self, state: ConversationState) -> replies.ConversationStats | None:
        try:
            recent = await self.api.messages(state.id, limit=STATS_WINDOW)
            members = await self.api.members(state.id)
        except (ApiError, ApiUnavailableError) as exc:
            logger.warning("bot could not fetch stats of conversation %s: %s", state.id, exc)
            return None
        bots = sum(1 for member in members if member.get("isBot"))
        return replies.ConversationStats(
            title=state.title,
            message_count=int(recent[-1]["seq"]) if recent else 0,
            people=len(members) - bots,
            bots=bots,
            recent_senders=replies.count_senders(recent),
            window=len(recent),
        )

    def _remember(self, message_id: int) -> None:
        self._replied[message_id] = None
        while len(self._replied) > REPLIED_MEMORY:
            self._replied.popitem(last=False)

    def _schedule_retry(self, state: ConversationState, seq: int, error: Exception) -> None:
        """Queue a catch-up from just before ``seq`` after a backoff delay."""
        retry_after = seq - 1
        if state.retry_after is None or retry_after < state.retry_after:
            state.retry_after = retry_after
        delay = backoff_delay(3, minimum=self._reconnect_min, maximum=self._reconnect_max)
        logger.warning("bot failed to reply to seq %s in conversation %s (%s); retrying in %.1f s",
                       seq, state.id, error, delay)
        loop = asyncio.get_running_loop()

        def fire() -> None:
            self._retry_handles.discard(handle)
            self._queue_catch_up(state)

        handle = loop.call_later(delay, fire)
        self._retry_handles.add(handle)


# Running it -------------------------------------------------------------------


def load_api_key(settings: Settings, key_file: Path | None = None) -> str | None:
    """Return the key from ``key_file``, KILO_BOT_API_KEY or the settings' key file; None if missing.

    Raises KeyFileError for a file that exists but contains no key.
    """
    if key_file is not None:
        return read_api_key(key_file)
    if settings.bot_api_key:
        return settings.bot_api_key
    return read_api_key(settings.bot_api_key_path)


async def run_demo_bot(
    settings: Settings,
    *,
    api_key: str,
    api_url: str | None = None,
    event_service_url: str | None = None,
) -> None:
    """Run the demo bot until cancelled, configured by ``settings`` and the overrides."""
    async with ChatApiClient(
        api_url or settings.bot_api_base_url,
        api_key,
        retry_min_seconds=settings.reconnect_min_seconds,
        retry_max_seconds=settings.reconnect_max_seconds,
    ) as api:
        bot = DemoBot(
            api,
            event_service_url or settings.event_service_url,
            reconnect_min_seconds=settings.reconnect_min_seconds,
            reconnect_max_seconds=settings.reconnect_max_seconds,
        )
        await bot.run()


def _parse_args(argv: list[str] | None, settings: Settings) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m kilo_web.bots.demo",
        description="Run kilo_web's demo bot against a running backend.",
    )
    parser.add_argument("--api-url", default=settings.bot_api_base_url,
                        help="base URL of the backend that serves /api (default: %(default)s, "
                             "from KILO_BOT_API_URL)")
    parser.add_argument("--key-file", type=Path, default=None,
                        help="file holding the bot's API key (default: KILO_BOT_API_KEY if set, "
                             f"else {settings.bot_api_key_path})")
    parser.add_argument("--event-service-url", default=settings.event_service_url,
                        help="WebSocket URL of the event service (default: %(default)s, "
                             "from KILO_EVENT_SERVICE_URL)")
    return parser.parse_args(argv)


async def _run_until_signal(coroutine: Awaitable[None]) -> None:
    task = asyncio.ensure_future(coroutine)
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signal_number, task.cancel)
    try:
        await task
    except asyncio.CancelledError:
        logger.info("stopping on a signal")
    finally:
        for signal_number in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signal_number)


def main(argv: list[str] | None = None) -> int:
    """Run the demo bot from the command line; return the process exit status."""
    settings = get_settings()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = _parse_args(argv, settings)
    try:
        api_key = load_api_key(settings, args.key_file)
    except KeyFileError as exc:
        logger.error("%s", exc)
        return 2
    if api_key is None:
        logger.error("no API key: %s does not exist and KILO_BOT_API_KEY is unset; create one "
                     "with 'python -m kilo_web.bots.keys create kilobot'",
                     args.key_file or settings.bot_api_key_path)
        return 2
    try:
        asyncio.run(_run_until_signal(run_demo_bot(
            settings, api_key=api_key, api_url=args.api_url,
            event_service_url=args.event_service_url,
        )))
    except ApiError as exc:
        logger.error("the API rejected the bot: %s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
