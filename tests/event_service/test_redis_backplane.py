"""RedisBackplane on the Redis server at 127.0.0.1:6379, alone and between two nodes.

Each test uses its own key prefix, so runs never see each other's channels.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator, Callable

import pytest
import pytest_asyncio
import redis.asyncio as redis

from kilo_web.event_service import EventServiceClient, EventServiceServer
from kilo_web.event_service.cluster_presence import ClusterPresence
from kilo_web.event_service.control import announce_access_revoked, announce_revocation
from kilo_web.event_service.protocol import CloseCode
from kilo_web.event_service.redis_backplane import RedisBackplane, decode, encode
from tests.event_service.conftest import SECRET, Inbox, TokenSource, eventually
from tests.helpers import RuleAuthorizer

REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
def prefix() -> str:
    return f"kilo-test-{uuid.uuid4().hex[:12]}:"


@pytest_asyncio.fixture
async def make_backplane(prefix: str) -> AsyncIterator[Callable[[], RedisBackplane]]:
    made: list[RedisBackplane] = []

    def factory() -> RedisBackplane:
        backplane = RedisBackplane(REDIS_URL, prefix=prefix)
        made.append(backplane)
        return backplane

    yield factory
    for backplane in made:
        await backplane.close()


@pytest_asyncio.fixture
async def redis_client() -> AsyncIterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    yield client
    await client.aclose()


async def subscribers(client: redis.Redis, channel: str) -> int:
    """Return how many Redis connections subscribe to ``channel``."""
    [(_, count)] = await client.pubsub_numsub(channel)
    return count


class Received:
    """A backplane receiver that records ``(context, event, data)``."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str, dict]] = []

    def __call__(self, context: str, event: str, data: dict) -> None:
        self.items.append((context, event, data))


def test_codec_round_trip_and_rejects_malformed():
    assert decode(encode("message.created", {"a": 1})) == ("message.created", {"a": 1})
    for bad in ("[]", '{"event": 1, "data": {}}', '{"event": "e", "data": []}'):
        with pytest.raises(ValueError):
            decode(bad)


async def test_publish_reaches_a_watching_node(make_backplane):
    node, publisher = make_backplane(), make_backplane()
    received = Received()
    node.add_receiver(received)

    await node.watch("/kiloclaw/s1/c1")
    await publisher.publish("/kiloclaw/s1/c1", "message.created", {"text": "hi"})
    await publisher.publish("/kiloclaw/s1/other", "message.created", {"text": "not watched"})

    await eventually(lambda: received.items, message="the published event")
    assert received.items == [("/kiloclaw/s1/c1", "message.created", {"text": "hi"})]


async def test_concurrent_first_watchers_share_one_subscription(make_backplane, redis_client):
    node, publisher = make_backplane(), make_backplane()
    received = Received()
    node.add_receiver(received)
    context = "/kiloclaw/s1/c1"

    await asyncio.gather(*(node.watch(context) for _ in range(5)))

    assert node.watched() == {context: 5}
    assert await subscribers(redis_client, node.channel_of(context)) == 1
    # Every watch returned after the subscription was confirmed, so this arrives.
    await publisher.publish(context, "ping", {})
    await eventually(lambda: received.items, message="the event after the watches")
    assert len(received.items) == 1


async def test_unwatch_during_subscribe_ends_unsubscribed(make_backplane, redis_client):
    node = make_backplane()
    context = "/kiloclaw/s1/c1"
    channel = node.channel_of(context)

    watching = asyncio.create_task(node.watch(context))
    await eventually(lambda: context in node.watched(), message="the watch to be counted")
    await node.unwatch(context)
    await watching

    assert node.watched() == {}
    await eventually_async(lambda: subscribers(redis_client, channel), 0)
    await node.watch(context)
    assert await subscribers(redis_client, channel) == 1


async def eventually_async(probe, expected, timeout: float = 5.0) -> None:
    """Poll the coroutine function ``probe`` until it returns ``expected``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (value := await probe()) != expected:
        assert loop.time() < deadline, f"still {value!r}, expected {expected!r}"
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("seed", range(8))
async def test_random_interleavings_end_in_the_counted_state(make_backplane, redis_client, seed):
    node, publisher = make_backplane(), make_backplane()
    received = Received()
    node.add_receiver(received)
    rng = random.Random(seed)
    contexts = [f"/kiloclaw/s1/c{i}" for i in range(3)]
    expected = dict.fromkeys(contexts, 0)
    operations = []
    for _ in range(40):
        context = rng.choice(contexts)
        if expected[context] and rng.random() < 0.5:
            expected[context] -= 1
            operations.append(node.unwatch(context))
        else:
            expected[context] += 1
            operations.append(node.watch(context))

    await asyncio.gather(*operations)

    assert node.watched() == {c: n for c, n in expected.items() if n}
    for context in contexts:
        await eventually_async(lambda c=context: subscribers(redis_client, node.channel_of(c)),
                               1 if expected[context] else 0)
        await publisher.publish(context, "probe", {"context": context})
    await publisher.publish(contexts[0], "done", {})
    if expected[contexts[0]]:
        await eventually(lambda: any(e == "done" for _, e, _ in received.items),
                         message="the last event")
        probes = sorted(d["context"] for _, e, d in received.items if e == "probe")
        assert probes == sorted(c for c in contexts if expected[c])


# Two nodes ------------------------------------------------------------------


@pytest_asyncio.fixture
async def two_nodes(make_backplane) -> AsyncIterator[tuple[EventServiceServer, EventServiceServer]]:
    authorizer = RuleAuthorizer()
    nodes = [
        EventServiceServer(secret=SECRET, authorizer=authorizer, backplane=make_backplane(),
                           presence_grace_seconds=0.2)
        for _ in range(2)
    ]
    for node in nodes:
        await node.start()
    yield nodes[0], nodes[1]
    for node in nodes:
        await node.close()


async def connected_client(url: str, user_id: str) -> EventServiceClient:
    client = EventServiceClient(url, TokenSource(user_id), reconnect_min_seconds=0.01,
                                reconnect_max_seconds=0.05, name=f"test-{user_id}")
    await asyncio.wait_for(client.connect(), 5)
    return client


async def test_event_published_through_one_node_reaches_the_other_once(two_nodes, make_backplane):
    node_a, node_b = two_nodes
    context = "/kiloclaw/s1/c1"
    alice = await connected_client(node_a.url, "alice")
    bob = await connected_client(node_b.url, "bob")
    alice_inbox, bob_inbox = Inbox(), Inbox()
    alice.on("message.created", alice_inbox)
    bob.on("message.created", bob_inbox)
    try:
        await alice.subscribe([context])
        await bob.subscribe([context])
        await eventually(lambda: node_a.subscriptions_of("alice") and node_b.subscriptions_of("bob"),
                         message="both subscriptions")

        await node_a.publish(context, "message.created", {"n": 1})
        await make_backplane().publish(context, "message.created", {"n": 2})

        await alice_inbox.wait_for_count(2)
        await bob_inbox.wait_for_count(2)
        # A last event proves nothing else was on the way before it.
        await node_b.publish(context, "message.created", {"n": 3})
        await alice_inbox.wait_for_count(3)
        await bob_inbox.wait_for_count(3)
        assert [e.data["n"] for e in alice_inbox.events] == [1, 2, 3]
        assert [e.data["n"] for e in bob_inbox.events] == [1, 2, 3]
    finally:
        await alice.close()
        await bob.close()


async def test_revocation_through_redis_closes_sockets_on_every_node(two_nodes, make_backplane):
    import websockets

    from kilo_web.event_service import mint_token

    node_a, node_b = two_nodes
    token = mint_token(SECRET, "mallory")
    sockets = [
        await websockets.connect(node.url, additional_headers={"Authorization": f"Bearer {token}"})
        for node in (node_a, node_b)
    ]
    try:
        await announce_revocation(make_backplane(), "mallory", 1)
        for socket in sockets:
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(socket.recv(), timeout=5)
            assert closed.value.rcvd.code == CloseCode.TOKEN_REVOKED
    finally:
        for socket in sockets:
            await socket.close()


async def test_cluster_viewers_drop_a_released_connection_at_once(make_backplane, prefix):
    # A long grace keeps both users present; only the viewers change.
    context = "/presence/kiloclaw/s1/c1"
    clients = [redis.Redis.from_url(REDIS_URL) for _ in range(2)]
    presences = [ClusterPresence(client, node_id=f"node-{index}", prefix=prefix, ttl_seconds=30)
                 for index, client in enumerate(clients)]
    nodes = [
        EventServiceServer(secret=SECRET, authorizer=RuleAuthorizer(), backplane=make_backplane(),
                           cluster=presence, presence_grace_seconds=60)
        for presence in presences
    ]
    for node in nodes:
        await node.start()
    alice = await connected_client(nodes[0].url, "alice")
    bob = await connected_client(nodes[1].url, "bob")
    reader = presences[0]
    try:
        await alice.subscribe([context])
        await bob.subscribe([context])
        await eventually_async(lambda: reader.viewers(context), {"alice", "bob"})

        await alice.unsubscribe([context])
        await eventually_async(lambda: reader.viewers(context), {"bob"})
        assert set(await reader.users(context)) == {"alice", "bob"}

        await bob.close()
        await eventually_async(lambda: reader.viewers(context), set())
        assert set(await reader.users(context)) == {"alice", "bob"}
    finally:
        await alice.close()
        await bob.close()
        for node in nodes:
            await node.close()
        for client in clients:
            await client.aclose()



async def test_access_revocation_through_redis_reaches_other_node(two_nodes, make_backplane):
    node_a, node_b = two_nodes
    conversation, other = "/kiloclaw/s1/c1", "/kiloclaw/s1/c2"
    carol = await connected_client(node_b.url, "carol")
    inbox = Inbox()
    carol.on("*", inbox)
    try:
        await carol.subscribe(["/users/carol", conversation, other])
        await eventually(lambda: len(node_b.subscriptions_of("carol")) == 3,
                         message="carol's subscriptions on node B")

        # Announced through a backplane of neither node, as the chat service would.
        await announce_access_revoked(make_backplane(), "carol", [conversation])
        await eventually(lambda: any(e.event == "access.revoked" for e in inbox.events),
                         message="access.revoked on node B")
        await node_a.publish(conversation, "message.created", {"n": 1})
        await node_a.publish(other, "message.created", {"n": 2})
        await eventually(lambda: any(e.context == other for e in inbox.events),
                         message="the event on the other context")

        assert set(node_b.subscriptions_of("carol")) == {"/users/carol", other}
        assert carol.counts == {"/users/carol": 1, other: 1}
        assert [e.data for e in inbox.events if e.event == "message.created"] == [{"n": 2}]
    finally:
        await carol.close()
