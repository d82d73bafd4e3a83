"""Two event-service node processes sharing Redis: fan-out, presence and a node killed with SIGKILL.

The nodes authorize from a SQLite file where alice, bob and carol share an
instance. The test process publishes through Redis as the app does.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from sqlmodel import Session

from kilo_web.chat import service
from kilo_web.chat.database import make_engine
from kilo_web.event_service import EventServiceClient, mint_token
from kilo_web.event_service.client import SUBSCRIBED
from kilo_web.event_service.presence import JOIN, LEAVE, STATE
from kilo_web.event_service.presence_mirror import PresenceMirror
from kilo_web.event_service.protocol import Event
from kilo_web.event_service.redis_backplane import RedisBackplane
from kilo_web.settings import PROJECT_DIR
from tests.chat.conftest import insert_user
from tests.event_service.conftest import eventually
from tests.event_service.test_main import wait_for_port
from tests.helpers import free_port

SECRET = "cluster-secret-" + "c" * 40
REDIS_URL = "redis://127.0.0.1:6379/0"
TTL = 3.0
"""Presence time to live of the nodes; heartbeats and sweeps come every second."""


class Node:
    """One ``python -m kilo_web.event_service`` process."""

    def __init__(self, name: str, environment: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.port = free_port()
        self.url = f"ws://127.0.0.1:{self.port}"
        self._environment = environment
        self._log = log_dir / f"node-{name}.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        with self._log.open("a") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "kilo_web.event_service", "--port", str(self.port),
                 "--node-id", self.name],
                cwd=PROJECT_DIR, env=self._environment, stdout=log, stderr=subprocess.STDOUT,
            )
        wait_for_port(self.port, self.process)

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=15)

    def log(self) -> str:
        return self._log.read_text()


class World:
    """The database ids and the two nodes."""

    def __init__(self, tmp_path: Path, prefix: str, ttl: float) -> None:
        database_url = f"sqlite:///{tmp_path / 'kilo_web.db'}"
        from kilo_web.chat.database import upgrade_database

        upgrade_database(database_url)
        engine = make_engine(database_url)
        with Session(engine) as session:
            alice, bob, carol = (insert_user(session, name) for name in ("alice", "bob", "carol"))
            instance = service.create_instance(session, owner_id=alice.id, label="Cluster")
            for person in (bob, carol):
                service.add_instance_member(session, instance_id=instance.id, user_id=person.id)
            self.users = {"alice": str(alice.id), "bob": str(bob.id), "carol": str(carol.id)}
            self.instance_id = instance.id
        engine.dispose()
        self.prefix = prefix
        environment = {
            **os.environ,
            "KILO_DATA_DIR": str(tmp_path),
            "KILO_DATABASE_URL": database_url,
            "KILO_JWT_SECRET": SECRET,
            "KILO_REDIS_URL": REDIS_URL,
            "KILO_REDIS_PREFIX": prefix,
            "KILO_PRESENCE_TTL_SECONDS": str(ttl),
            "KILO_PRESENCE_GRACE_SECONDS": "0.2",
        }
        self.nodes = {name: Node(name, environment, tmp_path) for name in ("a", "b")}

    @property
    def presence(self) -> str:
        return f"/presence/kiloclaw/{self.instance_id}"

    @property
    def chat(self) -> str:
        return f"/kiloclaw/{self.instance_id}"


@pytest.fixture
def make_world(tmp_path) -> Iterator[Callable[[float], World]]:
    worlds: list[World] = []

    def factory(ttl: float = TTL) -> World:
        world = World(tmp_path, f"kilo-test-{uuid.uuid4().hex[:12]}:", ttl)
        worlds.append(world)
        for node in world.nodes.values():
            node.start()
        return world

    yield factory
    for world in worlds:
        for node in world.nodes.values():
            node.stop()


class Watcher:
    """An SDK client that mirrors presence and records chat events."""

    def __init__(self, world: World, user: str, urls: list[str]) -> None:
        user_id = world.users[user]

        async def token() -> str:
            return mint_token(SECRET, user_id)

        self.client = EventServiceClient(urls, token, reconnect_min_seconds=0.05,
                                         reconnect_max_seconds=0.2, name=f"test-{user}")
        self.world = world
        self.mirror = PresenceMirror()
        self.presence_events: list[tuple[str, str]] = []
        self.chat_events: list[dict] = []
        self.acknowledged: list[str] = []
        self.client.on("*", self._on_event)
        self.client.on(SUBSCRIBED, self._on_subscribed)

    def _on_subscribed(self, event: Event) -> None:
        self.acknowledged.append(event.context)
        if event.context == self.world.presence:
            self.mirror.reset()

    def _on_event(self, event: Event) -> None:
        if event.context == self.world.presence:
            self.mirror.apply(event.event, event.data, event.seq)
            if event.event in (JOIN, LEAVE):
                self.presence_events.append((event.event, event.data["userId"]))
        elif event.event != STATE:
            self.chat_events.append(event.data)

    def names(self) -> set[str]:
        ids = {v: k for k, v in self.world.users.items()}
        return {ids[u] for u in self.mirror.users}

    async def start(self) -> Watcher:
        await asyncio.wait_for(self.client.connect(), 10)
        await self.client.subscribe([self.world.presence, self.world.chat])
        return self


@pytest_asyncio.fixture
async def watchers() -> AsyncIterator[list[Watcher]]:
    made: list[Watcher] = []
    yield made
    for watcher in made:
        await watcher.client.close()


async def test_cluster_fans_out_once_and_agrees_on_presence(make_world, watchers):
    world = make_world()
    a, b = world.nodes["a"], world.nodes["b"]
    alice = await Watcher(world, "alice", [a.url]).start()
    bob = await Watcher(world, "bob", [b.url]).start()
    alice_again = await Watcher(world, "alice", [b.url]).start()
    watchers.extend([alice, bob, alice_again])

    for watcher in (alice, bob, alice_again):
        await eventually(lambda w=watcher: w.names() == {"alice", "bob"}, timeout=10,
                         message="both users present on every node")
    publisher = RedisBackplane(REDIS_URL, prefix=world.prefix)
    try:
        for n in range(3):
            await publisher.publish(world.chat, "message.created", {"n": n})
    finally:
        await publisher.close()
    for watcher in (alice, bob):
        await eventually(lambda w=watcher: len(w.chat_events) >= 3, message="three events")
    assert [e["n"] for e in alice.chat_events] == [0, 1, 2]
    assert [e["n"] for e in bob.chat_events] == [0, 1, 2]
    # alice is connected twice, on two nodes, yet joined once.
    assert bob.presence_events.count((JOIN, world.users["alice"])) <= 1

    await alice.client.close()
    await alice_again.client.close()
    await eventually(lambda: bob.names() == {"bob"}, timeout=10, message="alice's leave")
    assert bob.presence_events.count((LEAVE, world.users["alice"])) == 1


async def test_killed_node_moves_clients_and_its_presence_expires(make_world, watchers):
    world = make_world()
    a, b = world.nodes["a"], world.nodes["b"]
    alice = await Watcher(world, "alice", [a.url, b.url]).start()
    carol = await Watcher(world, "carol", [a.url]).start()
    bob = await Watcher(world, "bob", [b.url]).start()
    watchers.extend([alice, carol, bob])
    await eventually(lambda: bob.names() == {"alice", "bob", "carol"}, timeout=10,
                     message="three users present")
    connects = alice.client.connect_count
    alice.acknowledged.clear()

    a.kill()
    loop = asyncio.get_running_loop()
    killed_at = loop.time()

    await eventually(lambda: alice.client.connected and alice.client.url == b.url, timeout=10,
                     message="alice moved to node b")
    await eventually(lambda: len(alice.acknowledged) >= 2, message="alice resubscribed")
    assert alice.client.connect_count == connects + 1
    assert sorted(alice.acknowledged) == sorted([world.presence, world.chat])
    # carol could only use node a; her entries expire after the time to live.
    await eventually(lambda: "carol" not in bob.names(), timeout=TTL + 5,
                     message="carol's entries to expire")
    assert loop.time() - killed_at < TTL + TTL / 3 + 2
    assert bob.presence_events.count((LEAVE, world.users["carol"])) == 1
    assert (LEAVE, world.users["alice"]) not in bob.presence_events
    assert bob.names() == {"alice", "bob"}


async def test_restarted_node_clears_its_old_entries(make_world, watchers):
    world = make_world(ttl=60.0)
    a, b = world.nodes["a"], world.nodes["b"]
    carol = await Watcher(world, "carol", [a.url]).start()
    bob = await Watcher(world, "bob", [b.url]).start()
    watchers.extend([carol, bob])
    await eventually(lambda: bob.names() == {"bob", "carol"}, timeout=10,
                     message="carol present")
    await carol.client.close()

    a.kill()
    a.start()

    # The time to live is a minute: only node a clearing its entries at start explains this.
    await eventually(lambda: bob.names() == {"bob"}, timeout=10, message="carol's leave")
    assert bob.presence_events.count((LEAVE, world.users["carol"])) == 1
    assert "cleared its old presence entries" in a.log()
