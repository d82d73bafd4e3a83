"""SIGKILL the app backend while messages are posted and pushes dispatched, then start it again.

The backend is the real one (``reflex run --backend-only``) on a SQLite
file, with Expo pushes going to the loopback Expo server of the
notifications tests. A poster sends numbered messages through the HTTP API,
each with its own ``clientMessageId``, and retries every one until it is
acknowledged, as a client must across a crash. After the restart every
message is stored exactly once, the badge equals the unread count, and the
cleanup timer runs again.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from sqlmodel import Session

from kilo_web.chat import read_state
from kilo_web.notifications.accounting import device_badge
from tests.helpers import free_port
from tests.notifications.push_servers import ExpoServer

from .conftest import PROJECT_DIR, wait_for
from .test_chat_e2e import TOOLS_BIN, _answers

TOTAL = 40
DEMO_PASSWORD = "demo-password"


class Backend:
    """``reflex run --backend-only`` of kilo_web, startable again after a SIGKILL."""

    def __init__(self, root: Path, expo_url: str) -> None:
        self.root = root
        self.port = free_port()
        self.log = root / "backend.log"
        self.environment = {
            **os.environ,
            "PATH": f"{PROJECT_DIR / '.venv' / 'bin'}{os.pathsep}{TOOLS_BIN}{os.pathsep}"
            f"{os.environ.get('PATH', '')}",
            "REFLEX_USE_SYSTEM_BUN": "1",
            "REFLEX_TELEMETRY_ENABLED": "false",
            "REFLEX_WEB_WORKDIR": str(root / "web"),
            "KILO_DATA_DIR": str(root / "data"),
            "KILO_EVENT_SERVICE_PORT": str(free_port()),
            "KILO_PUSH_TRANSPORTS": "expo",
            "KILO_EXPO_API_URL": expo_url,
            "KILO_DEMO_BOT": "0",
            "KILO_MESSAGES_PER_MINUTE": "6000",
            "KILO_MESSAGE_BURST": "1000",
            "KILO_LOG_LEVEL": "INFO",
        }
        self.environment.pop("KILO_DATABASE_URL", None)
        self.environment.pop("KILO_REDIS_URL", None)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def database_url(self) -> str:
        return f"sqlite:///{self.root / 'data' / 'kilo_web.db'}"

    def set_up(self) -> None:
        for command in (["-m", "alembic", "-c", "alembic.ini", "upgrade", "head"],
                        ["-m", "kilo_web.seed"]):
            subprocess.run([sys.executable, *command], cwd=PROJECT_DIR, env=self.environment,
                           check=True, capture_output=True)

    def start(self) -> None:
        with self.log.open("ab") as output:
            self.process = subprocess.Popen(
                [str(PROJECT_DIR / ".venv" / "bin" / "reflex"), "run", "--backend-only",
                 "--backend-port", str(self.port)],
                cwd=PROJECT_DIR, env=self.environment, stdout=output, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for(lambda: self.process.poll() is not None or _answers(f"{self.url}/ping"),
                 timeout=300, interval=0.25, message=lambda: f"the backend; log:\n{self.tail()}")
        assert self.process.poll() is None, self.tail()

    def kill(self) -> None:
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)

    def tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""


@pytest.fixture
def backend(tmp_path) -> Iterator[tuple[Backend, ExpoServer]]:
    expo = ExpoServer()
    expo.start()
    running = Backend(tmp_path, expo.api_url)
    try:
        running.set_up()
        running.start()
        yield running, expo
    finally:
        running.stop()
        expo.stop()


def _session_token(backend: Backend, username: str) -> str:
    """Sign ``username`` in the way the web app does and return the session token."""
    import datetime as dt
    import secrets

    from reflex_local_auth.auth_session import LocalAuthSession
    from reflex_local_auth.user import LocalUser

    engine = sa.create_engine(backend.database_url)
    with Session(engine) as session:
        user = session.exec(sa.select(LocalUser).where(LocalUser.username == username)).scalar()
        token = secrets.token_hex(16)
        session.add(LocalAuthSession(user_id=user.id, session_id=token,
                                     expiration=dt.datetime.now(dt.UTC) + dt.timedelta(days=1)))
        session.commit()
    engine.dispose()
    return token


def test_sigkill_during_posts_loses_and_doubles_nothing(backend):
    app, expo = backend
    alice = {"Authorization": f"Bearer {_session_token(app, 'alice')}"}
    bob = {"Authorization": f"Bearer {_session_token(app, 'bob')}"}
    device = httpx.post(f"{app.url}/api/devices", headers=bob,
                        json={"kind": "expo", "token": "ExponentPushToken[bob-phone]"})
    assert device.status_code == 201
    conversations = httpx.get(f"{app.url}/api/conversations", headers=bob).json()
    welcome = conversations["conversations"][0]["id"]
    url = f"{app.url}/api/conversations/{welcome}/messages"
    acknowledged: list[int] = []
    attempts = {"failed": 0}

    def poster() -> None:
        for n in range(TOTAL):
            body = {"text": f"crash test {n}", "clientMessageId": f"crash-{n}"}
            while True:
                try:
                    response = httpx.post(url, headers=alice, json=body, timeout=5)
                    if response.status_code in (200, 201):
                        acknowledged.append(n)
                        break
                except httpx.HTTPError:
                    pass
                attempts["failed"] += 1
                time.sleep(0.05)  # A client's retry pause, not a wait for the test.

    thread = threading.Thread(target=poster, daemon=True)
    thread.start()
    wait_for(lambda: len(acknowledged) >= TOTAL // 2, timeout=60,
             message=lambda: f"half the messages ({len(acknowledged)} so far)")
    app.kill()
    killed_at_count = len(acknowledged)
    app.start()
    thread.join(timeout=120)
    assert not thread.is_alive(), "the poster never finished"
    assert killed_at_count < TOTAL
    assert attempts["failed"] >= 1, "the kill should have failed at least one post"

    engine = sa.create_engine(app.database_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(sa.text(
                "SELECT client_message_id, seq FROM message WHERE conversation_id = :c "
                "AND client_message_id LIKE 'crash-%' ORDER BY seq"), {"c": welcome}).all()
        ids = [row[0] for row in rows]
        assert sorted(ids, key=lambda i: int(i.split("-")[1])) == [f"crash-{n}" for n in
                                                                   range(TOTAL)]
        assert len(set(ids)) == TOTAL
        seqs = [row[1] for row in rows]
        assert seqs == sorted(seqs)
        assert len(set(seqs)) == TOTAL

        def settled() -> bool:
            with Session(engine) as session:
                unread = read_state.unread_summary(session, int(_profile_id(engine, "bob")))
                return device_badge(session, unread.user_id) == unread.total
        wait_for(settled, timeout=60, message=lambda: "bob's badge to equal his unread count")
        with Session(engine) as session:
            unread = read_state.unread_summary(session, int(_profile_id(engine, "bob")))
        assert unread.total >= TOTAL
    finally:
        engine.dispose()
    # The timer started with each of the two backends.
    log = app.log.read_text(errors="replace")
    assert log.count("push delivery cleanup timer started") >= 2


def _profile_id(engine: sa.Engine, username: str) -> int:
    with engine.connect() as connection:
        return connection.execute(sa.text(
            "SELECT user_profile.id FROM user_profile JOIN localuser "
            "ON localuser.id = user_profile.local_user_id WHERE localuser.username = :u"),
            {"u": username}).scalar()
