"""Fixtures for the notifications tests: people, conversations, clocks and push servers."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import heapq
import itertools
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from reflex_local_auth.user import LocalUser
from sqlalchemy.engine import make_url
from sqlmodel import Session

from kilo_web.chat import service
from kilo_web.chat.content import text_blocks
from kilo_web.chat.models import UserProfile
from kilo_web.notifications.accounting import bucket_counts, device_badge
from kilo_web.notifications.dispatcher import PushDispatcher
from kilo_web.notifications.expo import ExpoTransport
from kilo_web.notifications.models import DeviceKind
from kilo_web.notifications.service import NotificationService
from kilo_web.notifications.vapid import ensure_vapid_key
from kilo_web.notifications.webpush import WebPushTransport
from tests.notifications.push_servers import ExpoServer, WebPushServer

TTL = datetime.timedelta(hours=1)
"""Push idempotency TTL (and claim window) used by these tests."""

POSTGRES_ADMIN_URL = os.environ.get(
    "KILO_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


# Time


class ManualClock:
    """A clock that moves only when ``advance`` is called; sleepers wake when their time comes."""

    def __init__(self, start: datetime.datetime | None = None) -> None:
        self._now = start or datetime.datetime.now(datetime.timezone.utc)
        self._sleepers: list[tuple[datetime.datetime, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def now(self) -> datetime.datetime:
        return self._now

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        deadline = self._now + datetime.timedelta(seconds=seconds)
        heapq.heappush(self._sleepers, (deadline, next(self._order), future))
        await future

    @property
    def sleeping(self) -> int:
        """Number of coroutines waiting in ``sleep``."""
        return sum(1 for _, _, future in self._sleepers if not future.done())

    def advance(self, seconds: float) -> None:
        self._now += datetime.timedelta(seconds=seconds)
        while self._sleepers and self._sleepers[0][0] <= self._now:
            _, _, future = heapq.heappop(self._sleepers)
            if not future.done():
                future.set_result(None)


async def wait_until(
    condition: Callable[[], bool], *, timeout: float = 10.0, message: str = "condition"
) -> None:
    """Yield to the event loop until ``condition()`` holds, failing after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {message}")
        await asyncio.sleep(0.005)


# People and conversations


def insert_user(session: Session, username: str, *, is_bot: bool = False) -> int:
    """Insert a ``localuser`` row and its profile; return the profile id."""
    local_user = LocalUser(username=username, password_hash=b"!test", enabled=not is_bot)
    session.add(local_user)
    session.flush()
    profile = UserProfile(
        local_user_id=local_user.id, display_name=username.capitalize(), is_bot=is_bot
    )
    session.add(profile)
    session.commit()
    return profile.id


@dataclasses.dataclass
class World:
    """alice, bob and the bot in "General"; alice, bob and carol in "Random"; all in one instance."""

    alice: int
    bob: int
    carol: int
    bot: int
    instance_id: str = "sandbox-1"
    general: str = "general"
    random: str = "random"


def build_world(session: Session) -> World:
    world = World(
        alice=insert_user(session, "alice"),
        bob=insert_user(session, "bob"),
        carol=insert_user(session, "carol"),
        bot=insert_user(session, "kilobot", is_bot=True),
    )
    service.create_instance(
        session, owner_id=world.alice, label="Sandbox", instance_id=world.instance_id
    )
    service.create_conversation(
        session,
        instance_id=world.instance_id,
        title="General",
        creator_id=world.alice,
        member_ids=[world.bob, world.bot],
        conversation_id=world.general,
    )
    service.create_conversation(
        session,
        instance_id=world.instance_id,
        title="Random",
        creator_id=world.alice,
        member_ids=[world.bob, world.carol],
        conversation_id=world.random,
    )
    return world


@pytest.fixture
def world(session: Session) -> World:
    return build_world(session)


@pytest.fixture
def session_factory(engine: sa.Engine) -> Callable[[], Session]:
    return lambda: Session(engine)


class RecordingPublisher:
    """A publisher that keeps every event, as the event service's backplane would deliver it."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []

    async def publish(self, context: str, event: str, data: dict[str, Any]) -> None:
        self.events.append((context, event, data))

    def for_context(self, context: str, event: str | None = None) -> list[dict[str, Any]]:
        return [d for c, e, d in self.events if c == context and (event is None or e == event)]


@pytest.fixture
def publisher() -> RecordingPublisher:
    return RecordingPublisher()


async def post(
    session: Session, world: World, conversation_id: str, sender_id: int, text: str = "hello"
) -> int:
    """Post a message through the chat service; return its id."""
    view = await service.post_message(
        session,
        conversation_id=conversation_id,
        sender_id=sender_id,
        blocks=text_blocks(text),
        publisher=RecordingPublisher(),
    )
    return view.id


def badge_of(session_factory: Callable[[], Session], user_id: int) -> int:
    with session_factory() as session:
        return device_badge(session, user_id)


def buckets_of(session_factory: Callable[[], Session], user_id: int) -> dict[str, int]:
    with session_factory() as session:
        return bucket_counts(session, user_id)


# Push servers and transports


@pytest.fixture
def expo_server() -> Iterator[ExpoServer]:
    server = ExpoServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def webpush_server() -> Iterator[WebPushServer]:
    server = WebPushServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def vapid_key_path(tmp_path: Path) -> Path:
    path = tmp_path / "vapid-private.pem"
    ensure_vapid_key(path)
    return path


CLIENT_TIMEOUT = 0.5
"""Push request timeout in these tests, in seconds; a stalled server outlasts it."""


@pytest.fixture
async def expo_transport(expo_server: ExpoServer) -> Any:
    transport = ExpoTransport(api_url=expo_server.api_url, timeout=CLIENT_TIMEOUT)
    yield transport
    await transport.aclose()


@pytest.fixture
async def webpush_transport(vapid_key_path: Path) -> Any:
    transport = WebPushTransport(
        vapid_key_path=vapid_key_path,
        subject="mailto:push-test@example.com",
        timeout=CLIENT_TIMEOUT,
        ttl_seconds=60,
    )
    yield transport
    await transport.aclose()


@pytest.fixture
def make_dispatcher(
    session_factory: Callable[[], Session],
    publisher: RecordingPublisher,
    expo_transport: ExpoTransport,
    webpush_transport: WebPushTransport,
) -> Callable[..., PushDispatcher]:
    """Build a dispatcher on the test database with both loopback transports."""

    def build(**overrides: Any) -> PushDispatcher:
        options: dict[str, Any] = {
            "session_factory": session_factory,
            "transports": {DeviceKind.EXPO: expo_transport, DeviceKind.WEBPUSH: webpush_transport},
            "window": TTL,
            "publisher": publisher,
            "max_attempts": 1,
            "retry_base_seconds": 0.0,
        }
        options.update(overrides)
        return PushDispatcher(**options)

    return build


def viewers_from(table: dict[str, set[int]]) -> Callable[[str, str], Awaitable[set[int]]]:
    """A viewer lookup over the test's own presence table, keyed by conversation id."""

    async def viewers(instance_id: str, conversation_id: str) -> set[int]:
        return set(table.get(conversation_id, set()))

    return viewers


def expo_token(name: str) -> str:
    return f"ExponentPushToken[{name}]"


# PostgreSQL


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """URL of a fresh PostgreSQL database, dropped after the test; skipped when none listens."""
    admin_url = make_url(POSTGRES_ADMIN_URL)
    host, port = admin_url.host or "127.0.0.1", admin_url.port or 5432
    try:
        with socket.create_connection((host, port), timeout=3):
            pass
    except OSError as error:
        pytest.skip(f"PostgreSQL is not reachable at {host}:{port}: {error}")
    database = f"kilo_web_notify_{uuid.uuid4().hex[:12]}"
    admin_engine = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin_engine.connect() as connection:
            connection.execute(sa.text(f'CREATE DATABASE "{database}"'))
        yield admin_url.set(database=database).render_as_string(hide_password=False)
    finally:
        with admin_engine.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
        admin_engine.dispose()


@pytest.fixture
def notifications(session_factory, publisher, expo_transport, webpush_transport):
    """A notifications service on the loopback push servers that tries each push once."""
    return NotificationService(
        session_factory=session_factory,
        transports={DeviceKind.EXPO: expo_transport, DeviceKind.WEBPUSH: webpush_transport},
        window=TTL,
        publisher=publisher,
        max_attempts=1,
        retry_base_seconds=0.0,
        receipt_delay=datetime.timedelta(0),
    )
