"""Fixtures for browser tests: a real event service, a Reflex app and Chromium.

- ``event_service`` runs ``EventServiceServer`` on a free loopback port in a
  thread of its own, and reads its per-user subscriptions for assertions.
- ``start_app`` starts a Reflex app with ``reflex.testing.AppHarness`` (the
  backend in a thread of this process, the dev frontend as a bun process),
  with the dev server pinned to 127.0.0.1.
- ``browser`` launches Debian's Chromium through Playwright; Playwright cannot
  download its own browsers on this machine.
- ``wait_for`` and ``holds_for`` poll a condition until a deadline; test
  modules get them as fixtures of the same names.

The frontend toolchain needs bun: ``.tools/node_modules/.bin/bun`` is put on
PATH with ``REFLEX_USE_SYSTEM_BUN=1``. The first harness of a run installs
the frontend packages with bun, so it needs the npm registry or a warm bun
cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from kilo_web.chat.database import upgrade_database
from kilo_web.event_service.protocol import ClientFrame
from kilo_web.event_service.server import EventServiceServer
from tests.helpers import RuleAuthorizer

PROJECT_DIR = Path(__file__).resolve().parents[2]

CHROMIUM_PATH = os.environ.get("KILO_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
BUN_BIN_DIR = PROJECT_DIR / ".tools" / "node_modules" / ".bin"
TEST_JWT_SECRET = "browser-test-secret-that-is-long-enough-for-hs256"

T = TypeVar("T")


def wait_for(
    predicate: Callable[[], T],
    timeout: float = 15.0,
    *,
    interval: float = 0.05,
    message: str | Callable[[], str] = "condition",
) -> T:
    """Poll ``predicate`` until it returns a truthy value and return that value.

    Raises AssertionError naming ``message`` (a string, or a callable that
    describes the last observed state) when ``timeout`` seconds pass first.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            raise AssertionError(f"timed out after {timeout} s waiting for {text}")
        time.sleep(interval)


def holds_for(
    predicate: Callable[[], bool], seconds: float, *, interval: float = 0.05
) -> bool:
    """Return True if ``predicate`` stays true for ``seconds``; False on its first failure."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not predicate():
            return False
        time.sleep(interval)
    return bool(predicate())


class RunningEventService:
    """An ``EventServiceServer`` served from a private event loop in a thread."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.frames: list[tuple[int, ClientFrame]] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="event-service", daemon=True)
        self._server = EventServiceServer(
            secret=secret,
            authorizer=RuleAuthorizer(),
            host="127.0.0.1",
            port=0,
            frame_observer=self._observe,
        )

    def _observe(self, connection_id: int, frame: ClientFrame) -> None:
        self.frames.append((connection_id, frame))

    def _call(self, function: Callable[[], T]) -> T:
        async def run() -> T:
            return function()

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout=10)

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._server.start(), self._loop).result(timeout=10)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._server.close(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    @property
    def url(self) -> str:
        """The ``ws://127.0.0.1:port`` URL of the server."""
        return self._server.url

    def subscriptions_of(self, user_id: str) -> dict[str, int]:
        """Each context ``user_id`` holds, mapped to the number of their connections holding it."""
        return self._call(lambda: self._server.subscriptions_of(user_id))

    def connection_count(self, user_id: str | None = None) -> int:
        """The number of open connections, of one user or of all."""
        return self._call(lambda: self._server.connection_count(user_id))

    def publish(self, context: str, event: str, data: dict[str, Any]) -> None:
        """Publish an event through the server's backplane and wait for the call to return."""
        asyncio.run_coroutine_threadsafe(
            self._server.publish(context, event, data), self._loop
        ).result(timeout=10)


@pytest.fixture(scope="session")
def event_service() -> Iterator[RunningEventService]:
    """A real event service on a free loopback port, shared by the session."""
    service = RunningEventService(TEST_JWT_SECRET)
    service.start()
    try:
        yield service
    finally:
        service.stop()


RXCONFIG_TEMPLATE = """\
import reflex as rx
from reflex_base.plugins.base import Plugin


class LoopbackDevServer(Plugin):
    # The dev script is "react-router dev --host", which binds every interface.
    def pre_compile(self, **context):
        context["add_modify_task"](
            "package.json",
            lambda text: text.replace(
                '"react-router dev --host"', '"react-router dev --host 127.0.0.1"'
            ),
        )


config = rx.Config(
    app_name={app_name!r},
    db_url={db_url!r},
    plugins=[rx.plugins.RadixThemesPlugin(), LoopbackDevServer()],
    disable_plugins=[rx.plugins.SitemapPlugin],
    telemetry_enabled=False,
)
"""


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def start_app(
    root: Path, app_source: Callable[[], None], *, environment: dict[str, str] | None = None
) -> Iterator[Any]:
    """Run the Reflex app whose module body is ``app_source`` and yield its AppHarness.

    ``environment`` is set in this process for the life of the app, so the
    app's backend (a thread of this process) reads it.

    The app gets a SQLite file migrated to the newest schema. Reflex compiles
    every state class imported in the process into the app, and other test
    modules may have imported the accounts' states, whose computed vars
    query the database on every hydrate.
    """
    from reflex.testing import AppHarness

    if shutil.which("bun", path=str(BUN_BIN_DIR)) is None:
        pytest.fail(f"bun is missing from {BUN_BIN_DIR}; install it with the project's setup")
    app_name = app_source.__name__.lower()
    root.mkdir(parents=True, exist_ok=True)
    data_dir = root / "data"
    database_url = f"sqlite:///{data_dir / 'kilo_web.db'}"
    upgrade_database(database_url)
    (root / "rxconfig.py").write_text(
        RXCONFIG_TEMPLATE.format(app_name=app_name, db_url=database_url)
    )
    # With rxconfig.py present, `reflex init` leaves the package folder to us.
    package_dir = root / app_name
    package_dir.mkdir(exist_ok=True)
    (package_dir / "__init__.py").touch()

    values = {
        "PATH": f"{BUN_BIN_DIR}{os.pathsep}{os.environ.get('PATH', '')}",
        "REFLEX_USE_SYSTEM_BUN": "1",
        "REFLEX_CHECK_LATEST_VERSION": "false",
        "REFLEX_TELEMETRY_ENABLED": "false",
        "KILO_DATA_DIR": str(data_dir),
        "KILO_DATABASE_URL": database_url,
        **(environment or {}),
    }
    with _environment(values), AppHarness.create(root=root, app_source=app_source) as harness:
        yield harness


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """Debian's Chromium, headless, driven by Playwright's sync API."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM_PATH).exists():
        pytest.fail(f"Chromium not found at {CHROMIUM_PATH}; set KILO_TEST_CHROMIUM")
    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM_PATH, args=CHROMIUM_ARGS)
        try:
            yield instance
        finally:
            instance.close()


@pytest.fixture(scope="session")
def reflex_app() -> Callable[..., contextlib.AbstractContextManager[Any]]:
    """``start_app``: ``with reflex_app(root, app_source, environment=...) as harness``."""
    return start_app


@pytest.fixture(name="wait_for", scope="session")
def wait_for_fixture() -> Callable[..., Any]:
    """The ``wait_for`` polling helper."""
    return wait_for


@pytest.fixture(name="holds_for", scope="session")
def holds_for_fixture() -> Callable[..., bool]:
    """The ``holds_for`` polling helper."""
    return holds_for
