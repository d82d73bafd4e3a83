"""Fixtures for event-service tests: a real server on a loopback port."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import pytest_asyncio

from kilo_web.event_service import EventServiceClient, EventServiceServer, mint_token
from kilo_web.event_service import protocol
from tests.helpers import RuleAuthorizer

SECRET = "test-secret-" + "x" * 60


async def eventually(
    predicate: Callable[[], Any], *, timeout: float = 5.0, message: str = "condition"
) -> None:
    """Poll ``predicate`` until it is true; fail after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {message}")
        await asyncio.sleep(0.005)


@dataclasses.dataclass
class FrameLog:
    """Every client frame the server accepted, per connection id."""

    frames: list[tuple[int, protocol.ClientFrame]] = dataclasses.field(default_factory=list)

    def __call__(self, connection_id: int, frame: protocol.ClientFrame) -> None:
        self.frames.append((connection_id, frame))

    def of_type(self, frame_type: str, after: int = 0) -> list[tuple[str, ...]]:
        """Return the contexts of each frame of ``frame_type`` from connections above ``after``."""
        return [
            frame.contexts
            for connection_id, frame in self.frames
            if frame.type == frame_type and connection_id > after
        ]

    def subscribed(self, after: int = 0) -> list[tuple[str, ...]]:
        return self.of_type("context.subscribe", after)

    def unsubscribed(self, after: int = 0) -> list[tuple[str, ...]]:
        return self.of_type("context.unsubscribe", after)

    def last_connection(self) -> int:
        return max((connection_id for connection_id, _ in self.frames), default=0)


@pytest.fixture
def frame_log() -> FrameLog:
    return FrameLog()


@pytest.fixture
def authorizer() -> RuleAuthorizer:
    return RuleAuthorizer()


@pytest_asyncio.fixture
async def server(frame_log: FrameLog, authorizer: RuleAuthorizer) -> AsyncIterator[EventServiceServer]:
    async with EventServiceServer(
        secret=SECRET, authorizer=authorizer, frame_observer=frame_log, presence_grace_seconds=0.2,
    ) as running:
        yield running


class TokenSource:
    """An async token factory that counts its calls."""

    def __init__(self, user_id: str = "u1") -> None:
        self.user_id = user_id
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        return mint_token(SECRET, self.user_id)


@pytest_asyncio.fixture
async def make_client(
    server: EventServiceServer,
) -> AsyncIterator[Callable[..., Awaitable[EventServiceClient]]]:
    clients: list[EventServiceClient] = []

    async def factory(
        user_id: str = "u1", *, connect: bool = True, tokens: TokenSource | None = None
    ) -> EventServiceClient:
        client = EventServiceClient(
            server.url,
            tokens or TokenSource(user_id),
            reconnect_min_seconds=0.01,
            reconnect_max_seconds=0.05,
            name=f"test-{user_id}",
        )
        clients.append(client)
        if connect:
            await asyncio.wait_for(client.connect(), 5)
        return client

    yield factory
    for client in clients:
        await client.close()


class Inbox:
    """Collects events a handler receives and waits for a number of them."""

    def __init__(self) -> None:
        self.events: list[protocol.Event] = []

    def __call__(self, event: protocol.Event) -> None:
        self.events.append(event)

    async def wait_for_count(self, count: int, timeout: float = 5.0) -> None:
        await eventually(lambda: len(self.events) >= count, timeout=timeout,
                         message=f"{count} events (have {len(self.events)})")
