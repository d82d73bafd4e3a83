"""Chat path: HTTP post of a message until a subscribed SDK client receives it.

The server process runs what the Reflex backend runs for this path. That
is the HTTP API (``kilo_web.chat.api.create_api``) under uvicorn, the event
service on the process's backplane (``kilo_web.event_service.embedded``)
with the database authorizer, and the notifications service. Its
``after_publish`` hook dispatches a push for every message, to the loopback
Expo server of the notifications tests, which runs in the driver.

The client process posts as alice with a login session token and listens
as bob through ``EventServiceClient``, subscribed to the conversation but
not to its presence context, so bob counts as away and gets a push for
every message. Messages are posted one at a time; each latency is the
time from just before the POST to bob's handler call, on one clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
import os
import secrets
import shutil
import socket
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from bench.measure import CpuWindow, latency_summary_ms
from bench.servers import loopback_listener
from bench.workers import Worker, stop_all

logger = logging.getLogger(__name__)

POSTGRES_ADMIN_URL = os.environ.get(
    "KILO_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
BENCH_PASSWORD = "bench-password"


@dataclasses.dataclass
class ChatPlan:
    """Settings of one chat-path run."""

    messages: int = 200
    gap_seconds: float = 0.02
    """Pause between a message's arrival and the next post."""
    databases: tuple[str, ...] = ("sqlite", "postgresql")
    push_off_databases: tuple[str, ...] = ()
    """Databases also measured with push dispatch off, to show what it costs."""
    profile_seconds: float = 0.0
    """When above zero, profile the server on SQLite for this long after the measured runs."""


@dataclasses.dataclass
class ChatWorld:
    """The ids and credentials the client needs."""

    instance_id: str
    conversation_id: str
    alice_session: str
    bob_id: int


def prepare_database(database_url: str) -> ChatWorld:
    """Migrate the database and create alice, bob, an instance and a conversation.

    bob has an Expo push device, so every message alice posts is pushed to him.
    """
    from reflex_local_auth.auth_session import LocalAuthSession
    from sqlmodel import Session

    from kilo_web.accounts.users import create_local_user
    from kilo_web.chat import service
    from kilo_web.chat.database import make_engine, upgrade_database
    from kilo_web.notifications.devices import register_expo_device

    upgrade_database(database_url)
    engine = make_engine(database_url)
    try:
        with Session(engine) as session:
            alice = create_local_user(session, username="alice", password=BENCH_PASSWORD)
            bob = create_local_user(session, username="bob", password=BENCH_PASSWORD)
            assert alice.id is not None and bob.id is not None
            instance = service.create_instance(session, owner_id=alice.id, label="Bench")
            conversation = service.create_conversation(
                session, instance_id=instance.id, title="Bench", creator_id=alice.id,
                member_ids=[bob.id],
            )
            register_expo_device(session, user_id=bob.id, token="ExponentPushToken[bench-bob]")
            alice_session = f"bench-{secrets.token_hex(16)}"
            session.add(LocalAuthSession(
                user_id=alice.local_user_id, session_id=alice_session,
                expiration=dt.datetime.now(dt.UTC) + dt.timedelta(hours=2),
            ))
            session.commit()
            return ChatWorld(instance.id, conversation.id, alice_session, bob.id)
    finally:
        engine.dispose()


def user_token(database_url: str, secret: str, user_id: int) -> str:
    """Issue an event-service token for ``user_id`` at their current token version."""
    from sqlmodel import Session

    from kilo_web.chat.database import make_engine
    from kilo_web.chat.tokens import issue_user_token
    from kilo_web.settings import Settings

    settings = Settings(data_dir=Path(tempfile.gettempdir()), database_url=database_url,
                        jwt_secret=secret, token_ttl_seconds=7200)
    engine = make_engine(database_url)
    try:
        with Session(engine) as session:
            token, _ = issue_user_token(session, user_id, settings=settings)
    finally:
        engine.dispose()
    return token


class ChatServerAgent:
    """The backend's realtime path in one process: API, event service, notifications."""

    def __init__(
        self, *, database_url: str, secret: str, expo_api_url: str, data_dir: str, push: bool = True
    ) -> None:
        self._push = push
        # The API publishes through kilo_web.event_service.embedded.get_backplane(),
        # which reads the settings from the environment: point them at this run.
        os.environ.update({
            "KILO_DATA_DIR": data_dir,
            "KILO_DATABASE_URL": database_url,
            "KILO_JWT_SECRET": secret,
            "KILO_PUSH_TRANSPORTS": "expo",
            "KILO_EXPO_API_URL": expo_api_url,
            "KILO_PUSH_MAX_ATTEMPTS": "1",
            "KILO_EMBED_EVENT_SERVICE": "1",
            # The run posts about 30 messages a second as one user; this
            # measures the path, not the per-user limit (60 a minute by default).
            "KILO_MESSAGES_PER_MINUTE": "1000000",
            "KILO_MESSAGE_BURST": "1000000",
        })
        os.environ.pop("KILO_REDIS_URL", None)
        self._stack = contextlib.AsyncExitStack()
        self._tasks: list[asyncio.Task[Any]] = []
        self._stalls_ns: list[int] = []

    async def start(self) -> dict[str, Any]:
        import uvicorn
        from sqlmodel import Session

        from kilo_web.chat.access import DatabaseAuthorizer
        from kilo_web.chat.api import create_api
        from kilo_web.chat.database import make_engine
        from kilo_web.event_service.contexts import kiloclaw_conversation_presence_context
        from kilo_web.event_service.embedded import get_backplane
        from kilo_web.event_service.server import EventServiceServer
        from kilo_web.notifications.service import NotificationService
        from kilo_web.settings import get_settings

        settings = get_settings()
        engine = make_engine(settings.database_url)
        self._stack.callback(engine.dispose)
        backplane = get_backplane()
        server = EventServiceServer(
            secret=settings.jwt_secret,
            authorizer=DatabaseAuthorizer(make_engine(settings.database_url)),
            backplane=backplane,
            port=0,
        )
        await server.start()
        self._stack.push_async_callback(server.close)

        async def viewers(instance_id: str, conversation_id: str) -> set[int]:
            # The same lookup as kilo_web.runtime.conversation_viewers.
            context = kiloclaw_conversation_presence_context(instance_id, conversation_id)
            return {int(user) for user in server.present_users(context) if user.isdigit()}

        notifications = NotificationService.from_settings(
            settings, session_factory=lambda: Session(engine), publisher=backplane,
            viewers=viewers,
        )
        if self._push:
            await self._stack.enter_async_context(notifications.lifespan())
            api = create_api(settings, after_publish=notifications.after_publish,
                             on_unread_changed=notifications.on_unread_changed)
        else:
            api = create_api(settings)
        listener = loopback_listener()
        http_server = uvicorn.Server(uvicorn.Config(api, log_level="warning", lifespan="off"))
        task = asyncio.get_running_loop().create_task(http_server.serve([listener]))
        self._tasks.append(task)

        async def stop_http() -> None:
            http_server.should_exit = True
            await asyncio.wait([task], timeout=10)

        self._stack.push_async_callback(stop_http)
        while not http_server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        self._notifications = notifications
        self._tasks.append(asyncio.get_running_loop().create_task(self._watch_loop()))
        return {"api_port": listener.getsockname()[1], "event_port": server.port}

    async def _watch_loop(self) -> None:
        """Record how late a 1 ms sleep wakes up: the time the loop was blocked by other work."""
        interval_ns = 1_000_000
        while True:
            started = time.monotonic_ns()
            await asyncio.sleep(interval_ns / 1e9)
            self._stalls_ns.append(max(0, time.monotonic_ns() - started - interval_ns))

    async def cmd_stalls(self, reset: bool = True) -> dict[str, Any]:
        """Return the loop stalls recorded since the last reset, and reset them."""
        stalls = self._stalls_ns
        if reset:
            self._stalls_ns = []
        return {"stalls_ns": stalls}

    async def cmd_drain(self) -> dict[str, Any]:
        """Wait for push dispatches still running."""
        await asyncio.wait_for(self._notifications.drain(), 60)
        return {}

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await self._stack.aclose()


class ChatClientAgent:
    """Posts as alice over HTTP and receives as bob through the SDK."""

    def __init__(self, *, api_url: str, event_url: str, alice_session: str, bob_token: str,
                 instance_id: str, conversation_id: str) -> None:
        self._api_url = api_url
        self._event_url = event_url
        self._alice_session = alice_session
        self._bob_token = bob_token
        self._instance_id = instance_id
        self._conversation_id = conversation_id
        self._arrivals: dict[str, float] = {}
        self._waiters: dict[str, asyncio.Future[float]] = {}
        self._http: Any = None
        self._client: Any = None

    async def start(self) -> dict[str, Any]:
        import httpx

        from kilo_web.event_service.client import SUBSCRIBED, EventServiceClient
        from kilo_web.event_service.contexts import kiloclaw_conversation_context

        self._http = httpx.AsyncClient(
            base_url=self._api_url,
            headers={"Authorization": f"Bearer {self._alice_session}"},
            timeout=30,
        )

        async def get_token() -> str:
            return self._bob_token

        self._client = EventServiceClient(self._event_url, get_token, name="bench-bob")
        self._client.on("message.created", self._on_message)
        subscribed = asyncio.get_running_loop().create_future()
        self._client.on(SUBSCRIBED, lambda event: subscribed.done() or subscribed.set_result(None))
        await asyncio.wait_for(self._client.connect(), 30)
        await self._client.subscribe(
            [kiloclaw_conversation_context(self._instance_id, self._conversation_id)]
        )
        await asyncio.wait_for(subscribed, 30)
        return {}

    def _on_message(self, event: Any) -> None:
        now = time.perf_counter()
        client_id = event.data.get("clientMessageId")
        waiter = self._waiters.pop(client_id, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(now)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
        if self._http is not None:
            await self._http.aclose()

    async def cmd_run(self, messages: int, gap_seconds: float) -> dict[str, Any]:
        """Post ``messages`` one at a time; return post-to-receive and HTTP latencies."""
        loop = asyncio.get_running_loop()
        path = f"/api/conversations/{self._conversation_id}/messages"
        receive_ns: list[int] = []
        http_ns: list[int] = []
        for index in range(messages):
            client_id = f"bench-{uuid.uuid4().hex}"
            waiter: asyncio.Future[float] = loop.create_future()
            self._waiters[client_id] = waiter
            started = time.perf_counter()
            response = await self._http.post(
                path, json={"text": f"benchmark message {index}", "clientMessageId": client_id}
            )
            answered = time.perf_counter()
            if response.status_code != 201:
                raise RuntimeError(f"post {index} failed with HTTP {response.status_code}: "
                                   f"{response.text[:200]}")
            arrived = await asyncio.wait_for(waiter, 10)
            receive_ns.append(int((arrived - started) * 1e9))
            http_ns.append(int((answered - started) * 1e9))
            await asyncio.sleep(gap_seconds)
        return {"receive_ns": receive_ns, "http_ns": http_ns}


@contextlib.contextmanager
def _database(kind: str, scratch: Path):
    """Yield the URL of a fresh database of ``kind``; drop it afterwards."""
    if kind == "sqlite":
        yield f"sqlite:///{scratch / 'bench.db'}"
        return
    admin_url = make_url(POSTGRES_ADMIN_URL)
    name = f"kilo_bench_{os.getpid()}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
        yield admin_url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def run_database(
    plan: ChatPlan, kind: str, expo: Any, *, push: bool = True, profile_seconds: float = 0.0
) -> dict[str, Any]:
    """Measure the chat path on one database; optionally profile the server afterwards."""
    from bench.profile import Recording, summarise

    scratch = Path(tempfile.mkdtemp(prefix="kilo-bench-chat-"))
    secret = secrets.token_urlsafe(48)
    workers: list[Worker] = []
    try:
        with _database(kind, scratch) as url:
            world = prepare_database(url)
            bob_token = user_token(url, secret, world.bob_id)
            server = Worker("bench.chatpath:ChatServerAgent",
                            {"database_url": url, "secret": secret,
                             "expo_api_url": expo.api_url, "data_dir": str(scratch),
                             "push": push},
                            name=f"chat-server-{kind}")
            workers.append(server)
            client = Worker("bench.chatpath:ChatClientAgent", {
                "api_url": f"http://127.0.0.1:{server.info['api_port']}",
                "event_url": f"ws://127.0.0.1:{server.info['event_port']}",
                "alice_session": world.alice_session, "bob_token": bob_token,
                "instance_id": world.instance_id, "conversation_id": world.conversation_id,
            }, name=f"chat-client-{kind}")
            workers.append(client)
            client.call("run", messages=5, gap_seconds=plan.gap_seconds)  # warm-up
            server.call("drain")
            pushes_before = expo.request_count
            server.call("stalls")
            with CpuWindow([server, client]) as window:
                result = client.call("run", messages=plan.messages, gap_seconds=plan.gap_seconds,
                                     timeout=plan.messages * 10 + 60)
            server.call("drain")
            stalls = server.call("stalls")["stalls_ns"]
            pushes = expo.request_count - pushes_before
            profile = None
            if profile_seconds > 0:
                recording = Recording(server.pid, profile_seconds)
                messages = int(profile_seconds / (plan.gap_seconds + 0.03)) + 1
                client.call("run", messages=messages, gap_seconds=plan.gap_seconds,
                            timeout=messages * 10 + 60)
                profile = summarise(recording.wait())
                server.call("drain")
            stop_all(workers)
            workers.clear()
    finally:
        stop_all(workers)
        shutil.rmtree(scratch, ignore_errors=True)
    assert window.percents is not None and window.seconds is not None
    row = {
        "database": kind,
        "push": push,
        "messages": plan.messages,
        "push_requests": pushes,
        "receive": latency_summary_ms(result["receive_ns"]),
        "http": latency_summary_ms(result["http_ns"]),
        "loop_stall": latency_summary_ms(stalls),
        "server_cpu_percent": window.percents[server.name],
        "server_cpu_ms_per_message": 1e3 * window.seconds[server.name] / plan.messages,
        "client_cpu_percent": window.percents[client.name],
        "other_cpu_percent": window.other_percent,
    }
    if profile is not None:
        row["profile"] = profile
    logger.info("chat path on %s: p50 %.1f ms, p99 %.1f ms, %d pushes", kind,
                row["receive"]["p50_ms"], row["receive"]["p99_ms"], row["push_requests"])
    return row


def run(plan: ChatPlan) -> list[dict[str, Any]]:
    """Measure the chat path on every database of the plan."""
    from tests.notifications.push_servers import ExpoServer

    expo = ExpoServer()
    expo.start()
    rows: list[dict[str, Any]] = []
    try:
        for kind in plan.databases:
            reason = _unavailable(kind)
            if reason:
                logger.warning("chat path on %s skipped: %s", kind, reason)
                rows.append({"database": kind, "skipped": reason})
                continue
            profile_seconds = plan.profile_seconds if kind == "sqlite" else 0.0
            rows.append(run_database(plan, kind, expo, profile_seconds=profile_seconds))
            if kind in plan.push_off_databases:
                rows.append(run_database(plan, kind, expo, push=False))
    finally:
        expo.stop()
    return rows


def _unavailable(kind: str) -> str:
    """Return why a database cannot be used, or an empty string."""
    if kind != "postgresql":
        return ""
    url = make_url(POSTGRES_ADMIN_URL)
    host, port = url.host or "127.0.0.1", url.port or 5432
    try:
        with socket.create_connection((host, port), timeout=3):
            return ""
    except OSError as exc:
        return f"PostgreSQL is not reachable at {host}:{port}: {exc}"
