"""Presence over real sockets: state, joins, leaves, grace, visibility, dead peers."""

from __future__ import annotations

import asyncio
import json

import pytest
from websockets.asyncio.client import connect

from kilo_web.event_service import EventServiceServer, mint_token
from kilo_web.event_service.presence import PresenceTracker

from .conftest import SECRET, RuleAuthorizer, eventually

P = "/presence/kiloclaw/s1/c1"
PLATFORM = "/presence/platform"


class Watcher:
    """A raw connection that records every frame it receives."""

    def __init__(self, server: EventServiceServer, user_id: str) -> None:
        self.server = server
        self.user_id = user_id
        self.frames: list[dict] = []
        self._socket = None
        self._reader: asyncio.Task | None = None

    async def open(self) -> "Watcher":
        token = mint_token(SECRET, self.user_id)
        self._socket = await connect(
            self.server.url, additional_headers={"Authorization": f"Bearer {token}"}
        )
        self._reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        async for message in self._socket:
            self.frames.append(json.loads(message))

    async def send(self, frame: dict) -> None:
        await self._socket.send(json.dumps(frame))

    async def subscribe(self, context: str) -> None:
        before = len(self.acks())
        await self.send({"type": "context.subscribe", "contexts": [context]})
        await eventually(lambda: len(self.acks()) > before, message="subscribe ack")

    async def close(self) -> None:
        await self._socket.close()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)

    def acks(self) -> list[dict]:
        return [f for f in self.frames if f["type"] == "context.subscribed"]

    def events(self, name: str, context: str = P) -> list[dict]:
        return [
            f for f in self.frames
            if f["type"] == "event" and f["event"] == name and f["context"] == context
        ]

    def diffs(self, context: str = P) -> list[tuple[str, str]]:
        return [
            (f["event"], f["data"]["userId"]) for f in self.frames
            if f["type"] == "event" and f["context"] == context
            and f["event"] in ("presence.join", "presence.leave")
        ]


async def watcher(server, user_id: str, context: str = P) -> Watcher:
    opened = await Watcher(server, user_id).open()
    await opened.subscribe(context)
    return opened


def test_tracker_join_once_per_user():
    tracker: PresenceTracker[int] = PresenceTracker(grace_seconds=5)
    assert tracker.track(P, 1, "a").event == "presence.join"
    assert tracker.track(P, 2, "a") is None
    assert tracker.untrack(P, 1, "a", now=0) is None
    assert tracker.untrack(P, 2, "a", now=0) == 5
    assert tracker.expire(now=4.9) == []
    leaves = tracker.expire(now=5)
    assert [(d.event, d.user_id) for d in leaves] == [("presence.leave", "a")]
    assert tracker.users(P) == []


def test_tracker_return_within_grace_is_silent():
    tracker: PresenceTracker[int] = PresenceTracker(grace_seconds=5)
    tracker.track(P, 1, "a")
    tracker.untrack(P, 1, "a", now=0)
    assert tracker.track(P, 2, "a") is None
    assert tracker.expire(now=10) == []
    assert tracker.users(P) == ["a"]


def test_tracker_untrack_unknown_is_noop():
    tracker: PresenceTracker[int] = PresenceTracker(grace_seconds=5)
    assert tracker.untrack(P, 9, "z", now=0) is None
    assert tracker.next_deadline() is None


async def test_new_subscriber_gets_state_with_seq(server):
    alice = await watcher(server, "alice")
    bob = await watcher(server, "bob")
    try:
        await eventually(lambda: bob.events("presence.state"), message="bob's state")
        state = bob.events("presence.state")[0]
        assert [u["userId"] for u in state["data"]["users"]] == ["alice", "bob"]
        joins = bob.events("presence.join")
        assert [j["data"]["userId"] for j in joins] == ["bob"]
        # Bob's own join came before the state and carries the state's number.
        assert joins[0]["seq"] == state["seq"]
        await eventually(lambda: ("presence.join", "bob") in alice.diffs(), message="alice sees bob")
    finally:
        await alice.close()
        await bob.close()


async def test_second_connection_no_second_join(server):
    observer = await watcher(server, "observer")
    first = await watcher(server, "alice")
    second = await watcher(server, "alice")
    try:
        await first.close()
        await eventually(lambda: server.connection_count("alice") == 1, message="first closed")
        barrier = await watcher(server, "barrier")
        await eventually(lambda: ("presence.join", "barrier") in observer.diffs(), message="barrier")
        assert observer.diffs() == [
            ("presence.join", "observer"), ("presence.join", "alice"), ("presence.join", "barrier"),
        ]
        await barrier.close()
    finally:
        await second.close()
        await observer.close()


async def test_leave_after_grace_of_last_connection(server):
    observer = await watcher(server, "observer")
    alice = await watcher(server, "alice")
    await alice.close()
    assert "alice" in server.present_users(P)
    await eventually(lambda: ("presence.leave", "alice") in observer.diffs(), timeout=5,
                     message="alice's leave")
    assert server.present_users(P) == ["observer"]
    await observer.close()


async def test_viewing_users_leave_out_the_grace_period(server):
    alice = await watcher(server, "alice")
    await eventually(lambda: server.viewing_users(P) == ["alice"], message="alice viewing")
    await alice.close()
    await eventually(lambda: server.viewing_users(P) == [], message="alice no longer viewing")
    # Still present: the leave waits for the grace period.
    assert server.present_users(P) == ["alice"]


async def test_fast_reloads_then_close_leave_once(server):
    observer = await watcher(server, "observer")
    for _ in range(3):
        reload = await watcher(server, "alice")
        await reload.close()
    last = await watcher(server, "alice")
    await last.close()
    await eventually(lambda: ("presence.leave", "alice") in observer.diffs(), timeout=5,
                     message="alice leaves")
    assert observer.diffs() == [
        ("presence.join", "observer"), ("presence.join", "alice"), ("presence.leave", "alice"),
    ]
    assert server.connection_count("alice") == 0
    assert server.subscriptions_of("alice") == {}
    await observer.close()


async def test_unsubscribe_presence_leaves_after_grace(server):
    observer = await watcher(server, "observer")
    alice = await watcher(server, "alice")
    await alice.send({"type": "context.unsubscribe", "contexts": [P]})
    await eventually(lambda: ("presence.leave", "alice") in observer.diffs(), timeout=5,
                     message="alice leaves after hiding")
    assert server.connection_count("alice") == 1
    await alice.close()
    await observer.close()


async def test_dead_connection_leaves_after_ping_timeout():
    authorizer = RuleAuthorizer()
    async with EventServiceServer(secret=SECRET, authorizer=authorizer, ping_interval=0.2,
                                  ping_timeout=0.2, close_timeout=0.5,
                                  presence_grace_seconds=0.1) as server:
        observer = await watcher(server, "observer")
        alice = await watcher(server, "alice")
        # Stop reading: alice answers no ping, like a peer whose network vanished.
        alice._reader.cancel()
        alice._socket.transport.pause_reading()
        await eventually(lambda: ("presence.leave", "alice") in observer.diffs(), timeout=10,
                         message="leave of a dead peer")
        assert server.connection_count("alice") == 0
        alice._socket.transport.abort()
        await observer.close()


async def test_platform_presence_hides_strangers(server, authorizer):
    authorizer.visibility = {"alice": {"bob"}, "bob": {"alice"}, "carol": set()}
    alice = await watcher(server, "alice", PLATFORM)
    bob = await watcher(server, "bob", PLATFORM)
    carol = await watcher(server, "carol", PLATFORM)
    try:
        await eventually(lambda: ("presence.join", "bob") in alice.diffs(PLATFORM), message="bob")
        await eventually(lambda: carol.events("presence.state", PLATFORM), message="carol state")
        carol_state = carol.events("presence.state", PLATFORM)[0]["data"]["users"]
        assert [u["userId"] for u in carol_state] == ["carol"]
        await bob.close()
        await eventually(lambda: ("presence.leave", "bob") in alice.diffs(PLATFORM), timeout=5,
                         message="bob leaves")
        assert all(user == "carol" for _, user in carol.diffs(PLATFORM))
        assert ("presence.join", "carol") not in alice.diffs(PLATFORM)
        bob_state = bob.events("presence.state", PLATFORM)[0]["data"]["users"]
        assert [u["userId"] for u in bob_state] == ["alice", "bob"]
    finally:
        await alice.close()
        await carol.close()


async def test_presence_forbidden_without_membership(server, authorizer):
    authorizer.denied.add(("mallory", P))
    mallory = await Watcher(server, "mallory").open()
    await mallory.send({"type": "context.subscribe", "contexts": [P]})
    await eventually(lambda: mallory.frames, message="reply")
    assert mallory.frames[0]["code"] == "forbidden"
    assert server.present_users(P) == []
    await mallory.close()
