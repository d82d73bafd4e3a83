"""A whole chat stack on loopback sockets for bot tests.

The HTTP API (uvicorn) and the event service run in the test's event loop
and share the process backplane, as in the Reflex backend: a message
posted over HTTP reaches subscribers over the event service.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import pytest_asyncio
import uvicorn
from sqlmodel import Session

from kilo_web.accounts.users import create_bot_user
from kilo_web.bots.api_client import ChatApiClient
from kilo_web.bots.demo import DemoBot
from kilo_web.chat import bots, service
from kilo_web.chat.api import create_api
from kilo_web.chat.models import Conversation, Instance, UserProfile
from kilo_web.event_service import EventServiceClient, EventServiceServer
from kilo_web.event_service.client import SUBSCRIBED
from kilo_web.event_service.contexts import (
    kiloclaw_conversation_context,
    kiloclaw_instance_presence_context,
)
from kilo_web.event_service.embedded import get_backplane, server_from_settings
from kilo_web.event_service.protocol import Event
from kilo_web.settings import Settings
from tests.chat.conftest import insert_user, login_session

SECRET = "bot-test-secret-" + "b" * 48
TIMEOUT = 10.0
"""Seconds any single wait in these tests may take before it fails."""


async def eventually(predicate: Callable[[], Any], *, description: str, timeout: float = TIMEOUT) -> None:
    """Poll ``predicate`` until it is true; fail after ``timeout`` seconds naming ``description``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {description}")
        await asyncio.sleep(0.01)


class Inbox:
    """Events one SDK client received, with a wait for the first that matches."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.client: EventServiceClient | None = None
        self._changed = asyncio.Condition()

    async def record(self, event: Event) -> None:
        async with self._changed:
            self.events.append(event)
            self._changed.notify_all()

    async def wait_for(self, predicate: Callable[[Event], bool], *, description: str,
                       timeout: float = TIMEOUT) -> Event:
        """Return the first recorded event that matches; fail after ``timeout`` seconds."""

        def found() -> Event | None:
            return next((event for event in self.events if predicate(event)), None)

        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(lambda: found() is not None), timeout)
            except TimeoutError:
                raise AssertionError(f"timed out after {timeout} s waiting for {description}; "
                                     f"received {[e.event for e in self.events]}") from None
            event = found()
        assert event is not None
        return event

    def messages(self, conversation_id: str | None = None) -> list[dict[str, Any]]:
        return [event.data for event in self.events if event.event == "message.created"
                and (conversation_id is None or event.data["conversationId"] == conversation_id)]


@dataclasses.dataclass
class ChatStack:
    """Running servers and the rows the tests act on."""

    settings: Settings
    api_url: str
    event_service: EventServiceServer
    session: Session
    alice: UserProfile
    bot: UserProfile
    instance: Instance
    conversation: Conversation
    api_key: str
    alice_headers: dict[str, str]

    @property
    def conversation_context(self) -> str:
        return kiloclaw_conversation_context(self.instance.id, self.conversation.id)

    @property
    def presence_context(self) -> str:
        return kiloclaw_instance_presence_context(self.instance.id)

    def demo_bot(self, *, api_key: str | None = None, **overrides: Any) -> DemoBot:
        """Build a demo bot with fast retries; the caller runs it and closes its API client."""
        api = ChatApiClient(self.api_url, api_key or self.api_key, retry_min_seconds=0.02,
                            retry_max_seconds=0.2)
        options: dict[str, Any] = {"reconnect_min_seconds": 0.02, "reconnect_max_seconds": 0.2,
                                   "rng": random.Random(4)}
        options.update(overrides)
        return DemoBot(api, self.event_service.url, **options)

    def person_client(self, headers: dict[str, str], inbox: Inbox) -> EventServiceClient:
        """Build an SDK client for a person whose tokens come from ``POST /api/token``."""

        async def get_token() -> str:
            async with httpx.AsyncClient(base_url=self.api_url, headers=headers) as http:
                response = await http.post("/api/token")
                response.raise_for_status()
                return response.json()["token"]

        client = EventServiceClient(self.event_service.url, get_token,
                                    reconnect_min_seconds=0.02, reconnect_max_seconds=0.2,
                                    name="person")
        client.on("*", inbox.record)
        client.on(SUBSCRIBED, inbox.record)
        inbox.client = client
        return client

    async def post(self, conversation_id: str, text: str, *, client_message_id: str | None = None,
                   headers: dict[str, str] | None = None) -> httpx.Response:
        """Post ``text`` as alice (or with ``headers``) over HTTP."""
        body: dict[str, Any] = {"text": text}
        if client_message_id is not None:
            body["clientMessageId"] = client_message_id
        async with httpx.AsyncClient(base_url=self.api_url,
                                     headers=headers or self.alice_headers) as http:
            return await http.post(f"/api/conversations/{conversation_id}/messages", json=body)

    async def messages(self, conversation_id: str) -> list[dict[str, Any]]:
        """Return every message of a conversation, read over HTTP as alice."""
        async with httpx.AsyncClient(base_url=self.api_url, headers=self.alice_headers) as http:
            response = await http.get(f"/api/conversations/{conversation_id}/messages",
                                      params={"limit": 200})
        response.raise_for_status()
        return response.json()["messages"]


async def start_api(
    settings: Settings, *, port: int = 0
) -> tuple[uvicorn.Server, asyncio.Task[None], str]:
    """Serve the HTTP API on loopback in this event loop; return server, task and URL.

    Port 0 picks a free port.
    """
    server = uvicorn.Server(uvicorn.Config(create_api(settings), host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve())
    await eventually(lambda: server.started or task.done(), description="uvicorn to start")
    assert not task.done(), "uvicorn exited during start-up"
    port = server.servers[0].sockets[0].getsockname()[1]
    return server, task, f"http://127.0.0.1:{port}"


async def stop_api(server: uvicorn.Server, task: asyncio.Task[None]) -> None:
    server.should_exit = True
    await asyncio.wait_for(task, TIMEOUT)


@pytest.fixture
def settings(database_url, tmp_path) -> Settings:
    return Settings(data_dir=tmp_path, database_url=database_url, jwt_secret=SECRET,
                    reconnect_min_seconds=0.02, reconnect_max_seconds=0.2,
                    presence_grace_seconds=0.1)


@pytest_asyncio.fixture
async def event_service(settings) -> AsyncIterator[EventServiceServer]:
    """The event service on a free loopback port, fed by the process backplane."""
    server = server_from_settings(settings, backplane=get_backplane(), host="127.0.0.1", port=0)
    await server.start()
    yield server
    await server.close()


@pytest_asyncio.fixture
async def stack(settings, session, event_service) -> AsyncIterator[ChatStack]:
    """alice, a bot with an API key, instance "Sandbox" and conversation "General"."""
    alice = insert_user(session, "alice")
    bot = create_bot_user(session, username="kilobot", display_name="Kilo Bot")
    instance = service.create_instance(session, owner_id=alice.id, label="Sandbox",
                                       instance_id="sandbox-1")
    bots.attach_bot(session, bot_id=bot.id, instance_id=instance.id)
    conversation = service.create_conversation(session, instance_id=instance.id, title="General",
                                               creator_id=alice.id, conversation_id="conv-1")
    _, api_key = bots.create_api_key(session, bot_id=bot.id, created_by=None, label="tests")
    session_id = login_session(session, alice.local_user_id, expires_in=dt.timedelta(days=1))

    settings = dataclasses.replace(settings, event_service_url=event_service.url)
    server, task, api_url = await start_api(settings)
    try:
        yield ChatStack(
            settings=settings, api_url=api_url, event_service=event_service, session=session,
            alice=alice, bot=bot, instance=instance, conversation=conversation,
            api_key=api_key, alice_headers={"Authorization": f"Bearer {session_id}"},
        )
    finally:
        await stop_api(server, task)


@pytest_asyncio.fixture
async def running_bot(stack) -> AsyncIterator[DemoBot]:
    """The demo bot running as a task until the test ends."""
    bot = stack.demo_bot()
    task = asyncio.create_task(bot.run())
    yield bot
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await bot.api.aclose()


@pytest_asyncio.fixture
async def alice_inbox(stack) -> AsyncIterator[Inbox]:
    """alice's SDK client, subscribed to the conversation and the instance's presence."""
    inbox = Inbox()
    client = stack.person_client(stack.alice_headers, inbox)
    await client.subscribe([stack.conversation_context, stack.presence_context])
    await client.connect()
    await inbox.wait_for(lambda e: e.event == SUBSCRIBED and e.context == stack.conversation_context,
                         description="alice's subscription")
    yield inbox
    await client.close()


def bot_is_present(bot_id: int) -> Callable[[Event], bool]:
    """Return a test for a presence event that shows ``bot_id`` present."""

    def predicate(event: Event) -> bool:
        if event.event == "presence.state":
            return str(bot_id) in [user["userId"] for user in event.data["users"]]
        return event.event == "presence.join" and event.data["userId"] == str(bot_id)

    return predicate


def replies_to(messages: list[dict[str, Any]], message_id: int) -> list[dict[str, Any]]:
    """Return the replies to ``message_id``."""
    return [m for m in messages if m.get("clientMessageId") == f"reply-{message_id}"]
