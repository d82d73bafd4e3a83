"""Fixtures for web-layer tests: a real event service on a loopback port."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_asyncio

from kilo_web.event_service import EventServiceServer
from kilo_web.event_service.protocol import ClientFrame
from tests.helpers import RuleAuthorizer

JWT_SECRET = "web-test-secret-" + "x" * 40


async def eventually(
    predicate: Callable[[], Any],
    *,
    timeout: float = 5.0,
    message: str | Callable[[], str] = "condition",
) -> None:
    """Poll ``predicate`` until it is true; fail after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            text = message() if callable(message) else message
            raise AssertionError(f"timed out after {timeout} s waiting for {text}")
        await asyncio.sleep(0.005)


class FrameLog:
    """Every client frame the server accepted, in arrival order."""

    def __init__(self) -> None:
        self.frames: list[tuple[int, ClientFrame]] = []

    def __call__(self, connection_id: int, frame: ClientFrame) -> None:
        self.frames.append((connection_id, frame))

    def contexts(self, frame_type: str) -> list[tuple[str, ...]]:
        """Return the contexts of each frame of ``frame_type`` (``context.subscribe``, ...)."""
        return [frame.contexts for _, frame in self.frames if frame.type == frame_type]


@pytest.fixture
def frame_log() -> FrameLog:
    return FrameLog()


@pytest_asyncio.fixture
async def server(frame_log: FrameLog) -> AsyncIterator[EventServiceServer]:
    async with EventServiceServer(
        secret=JWT_SECRET,
        authorizer=RuleAuthorizer(),
        host="127.0.0.1",
        port=0,
        frame_observer=frame_log,
    ) as running:
        yield running
