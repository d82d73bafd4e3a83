"""The deployment of docs/deploy.md on one machine: PostgreSQL, Redis, two event-service
nodes and two app backends in production mode behind a load balancer.

The commands are the documented ones. The load balancer is a TCP proxy that
the test steers, so the test decides which backend worker serves a tab. It
signs alice and bob in on different workers and checks that they chat live.
Then it drains bob's worker, so that his tab reconnects to the other one,
and checks again.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from tests.conftest import POSTGRES_ADMIN_URL
from tests.event_service.test_main import wait_for_port
from tests.helpers import ProxyThread, free_port

from .conftest import PROJECT_DIR, wait_for
from .test_chat_e2e import TOOLS_BIN, _answers, log_in, message_texts, send

START_TIMEOUT = 420.0
DEMO_PASSWORD = "demo-password"
_OPENED = re.compile(r"^(\S+ \S+) \[(\d+)\] INFO kilo_web\.web\.tab_connections: .*"
                     r"opened an event-service connection for user (\d+)", re.MULTILINE)


class SteeredProxy(ProxyThread):
    """The load balancer: a proxy whose next connections go to the backend the test chose."""

    def __init__(self, backend_ports: list[int]) -> None:
        super().__init__(backend_ports[0])
        self.backend_ports = backend_ports

    @property
    def port(self) -> int:
        return self.proxy.port

    def steer(self, backend: int, *, drain: bool = False) -> None:
        """Send new connections to ``backend``; with ``drain``, cut those to the others."""
        target = self.backend_ports[backend]

        def apply() -> None:
            self.proxy.target_port = target
            if drain:
                self.proxy.cut(keep_port=target)

        self.call(apply)


class Deployment:
    """Everything docs/deploy.md starts, on loopback ports, in a temporary folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.database = f"kilo_web_deploy_{uuid.uuid4().hex[:10]}"
        self.proxy = SteeredProxy([free_port(), free_port()])
        self.node_ports = [free_port(), free_port()]
        database_url = make_url(POSTGRES_ADMIN_URL).set(database=self.database)
        self.environment = {
            **os.environ,
            "PATH": f"{PROJECT_DIR / '.venv' / 'bin'}{os.pathsep}{TOOLS_BIN}{os.pathsep}"
            f"{os.environ.get('PATH', '')}",
            "REFLEX_USE_SYSTEM_BUN": "1",
            "REFLEX_TELEMETRY_ENABLED": "false",
            "KILO_DATA_DIR": str(root / "data"),
            "KILO_DATABASE_URL": database_url.render_as_string(hide_password=False),
            "KILO_JWT_SECRET": "deploy-test-secret-" + uuid.uuid4().hex,
            "KILO_REDIS_URL": "redis://127.0.0.1:6379/0",
            "KILO_REDIS_PREFIX": f"kilo-deploy-{uuid.uuid4().hex[:8]}:",
            "REFLEX_REDIS_URL": "redis://127.0.0.1:6379/1",
            "KILO_EMBED_EVENT_SERVICE": "0",
            "KILO_EVENT_SERVICE_URL": ",".join(f"ws://127.0.0.1:{p}" for p in self.node_ports),
            "GRANIAN_WORKERS": "1",
            # Pages connect back through the load balancer.
            "REFLEX_API_URL": self.url,
            "REFLEX_DEPLOY_URL": self.url,
            "KILO_DEMO_BOT": "0",
            "KILO_LOG_LEVEL": "INFO",
        }
        self.processes: list[subprocess.Popen[bytes]] = []
        self.app_logs = [root / f"app-{index + 1}.log" for index in range(2)]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.proxy.port}"

    def _run(self, *arguments: str) -> None:
        subprocess.run([sys.executable, *arguments], cwd=PROJECT_DIR, env=self.environment,
                       check=True, capture_output=True)

    def _spawn(self, command: list[str], log: Path,
               extra: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        with log.open("ab") as output:
            process = subprocess.Popen(command, cwd=PROJECT_DIR,
                                       env={**self.environment, **(extra or {})},
                                       stdout=output, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        self.processes.append(process)
        return process

    def start(self) -> None:
        admin = sa.create_engine(make_url(POSTGRES_ADMIN_URL), isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(sa.text(f'CREATE DATABASE "{self.database}"'))
        admin.dispose()
        # Set-up: migrations, the Web Push key and the demo data.
        self._run("-m", "alembic", "-c", "alembic.ini", "upgrade", "head")
        self._run("-m", "kilo_web.notifications.vapid")
        self._run("-m", "kilo_web.seed")
        for index, port in enumerate(self.node_ports):
            process = self._spawn(
                [sys.executable, "-m", "kilo_web.event_service", "--host", "127.0.0.1",
                 "--port", str(port), "--node-id", f"node-{index + 1}"],
                self.root / f"node-{index + 1}.log",
            )
            wait_for_port(port, process)
        # One after the other: two builds at once would race on the project's reflex.lock.
        for index, (port, log) in enumerate(zip(self.proxy.backend_ports, self.app_logs)):
            app = self._spawn(
                [str(PROJECT_DIR / ".venv" / "bin" / "reflex"), "run", "--env", "prod",
                 "--backend-port", str(port), "--frontend-port", str(port)],
                log,
                {"REFLEX_WEB_WORKDIR": str(self.root / f"web-{index + 1}")},
            )
            wait_for(
                lambda: app.poll() is not None or (
                    _answers(f"http://127.0.0.1:{port}") and "app shell started" in _read(log)),
                timeout=START_TIMEOUT, interval=0.5,
                message=lambda: f"the app to serve; log tail:\n{self.log_tail()}",
            )
            assert app.poll() is None, f"the app exited; log tail:\n{self.log_tail()}"

    def log_tail(self, lines: int = 60) -> str:
        return "\n\n".join(
            "\n".join(_read(log).splitlines()[-lines:]) for log in self.app_logs)

    def tab_workers(self, user_id: int) -> list[int]:
        """Return the worker process of each tab connection opened for ``user_id``, oldest first."""
        opened = sorted(
            (stamp, int(pid))
            for log in self.app_logs
            for stamp, pid, user in _OPENED.findall(_read(log))
            if int(user) == user_id
        )
        return [pid for _, pid in opened]

    def stop(self) -> None:
        self.proxy.stop()
        for process in reversed(self.processes):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait(timeout=10)
        admin = sa.create_engine(make_url(POSTGRES_ADMIN_URL), isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)'))
        admin.dispose()


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


@pytest.fixture(scope="module")
def deployment(tmp_path_factory) -> Iterator[Deployment]:
    running = Deployment(tmp_path_factory.mktemp("deployment"))
    try:
        running.start()
        yield running
    finally:
        running.stop()


def _user_ids(deployment: Deployment) -> dict[str, int]:
    engine = sa.create_engine(deployment.environment["KILO_DATABASE_URL"])
    with engine.connect() as connection:
        rows = connection.execute(sa.text(
            "SELECT localuser.username, user_profile.id FROM user_profile "
            "JOIN localuser ON localuser.id = user_profile.local_user_id"
        )).all()
    engine.dispose()
    return {username: profile_id for username, profile_id in rows}


def _sign_in(deployment, browser, username: str, user_id: int, backend: int):
    """Sign ``username`` in through ``backend``; return the context, page and worker pid."""
    deployment.proxy.steer(backend)
    before = len(deployment.tab_workers(user_id))
    context = browser.new_context()
    page = context.new_page()
    log_in(page, deployment.url, username, DEMO_PASSWORD)
    page.wait_for_selector("#conversation-title:has-text('Welcome')", timeout=30_000)
    wait_for(lambda: len(deployment.tab_workers(user_id)) > before, timeout=30,
             message=lambda: f"{username}'s tab connection in the log")
    return context, page, deployment.tab_workers(user_id)[-1]


def test_two_workers_serve_a_live_chat(deployment, browser):
    users = _user_ids(deployment)
    alice_context, alice_page, alice_worker = _sign_in(
        deployment, browser, "alice", users["alice"], backend=0)
    bob_context = None
    try:
        bob_context, bob_page, bob_worker = _sign_in(
            deployment, browser, "bob", users["bob"], backend=1)
        assert alice_worker != bob_worker

        send(alice_page, "Hello Bob, from another worker")
        bob_page.wait_for_selector(".message-text:has-text('from another worker')",
                                   timeout=20_000)
        send(bob_page, "Hi Alice, same here")
        alice_page.wait_for_selector(".message-text:has-text('same here')", timeout=20_000)

        # The load balancer drains bob's worker: his tab reconnects to alice's worker
        # and subscribes again there.
        before = len(deployment.tab_workers(users["bob"]))
        deployment.proxy.steer(0, drain=True)
        wait_for(lambda: alice_worker in deployment.tab_workers(users["bob"])[before:],
                 timeout=30, message=lambda: "bob's tab connection on alice's worker")

        send(alice_page, "Still there after your move?")
        bob_page.wait_for_selector(".message-text:has-text('after your move')", timeout=20_000)
        assert message_texts(bob_page).count("Still there after your move?") == 1
        send(bob_page, "Yes, on your worker now")
        alice_page.wait_for_selector(".message-text:has-text('on your worker now')",
                                     timeout=20_000)
    except Exception:
        print(deployment.log_tail(120))
        raise
    finally:
        alice_context.close()
        if bob_context is not None:
            bob_context.close()
