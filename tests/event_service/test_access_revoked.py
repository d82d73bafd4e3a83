"""The access.revoked control command over real sockets: server, SDK client and presence."""

from __future__ import annotations

import asyncio
import logging

import pytest

from kilo_web.event_service import protocol
from kilo_web.event_service.control import (
    CONTROL_CONTEXT,
    AccessRevoked,
    InvalidCommandError,
    announce_access_revoked,
)
from tests.event_service.conftest import Inbox, TokenSource, eventually

CONVERSATION = "/kiloclaw/s1/c1"
PRESENCE = "/presence/kiloclaw/s1/c1"
OTHER = "/kiloclaw/s1/c2"
USER = "/users/u1"


async def _revoke(server, authorizer, user_id: str = "u1") -> None:
    """Deny the user the conversation in the authorizer, then announce it as the chat service does."""
    authorizer.denied.update({(user_id, CONVERSATION), (user_id, PRESENCE)})
    await announce_access_revoked(server.backplane, user_id, [CONVERSATION, PRESENCE])


async def _subscribed_client(make_client, server, contexts, user_id: str = "u1"):
    client = await make_client(user_id)
    inbox = Inbox()
    client.on("*", inbox)
    await client.subscribe(contexts)
    await eventually(lambda: set(contexts) <= set(server.subscriptions_of(user_id)),
                     message="subscriptions")
    return client, inbox


def _revocations(inbox: Inbox) -> list[protocol.Event]:
    return [e for e in inbox.events if e.event == protocol.ACCESS_REVOKED_EVENT]


async def test_revocation_drops_server_subscriptions_at_once(server, authorizer, make_client):
    await _subscribed_client(make_client, server, [USER, CONVERSATION, PRESENCE, OTHER])

    await _revoke(server, authorizer)

    # The in-memory backplane delivers the command before publish returns.
    assert set(server.subscriptions_of("u1")) == {USER, OTHER}


async def test_revoked_client_gets_no_more_events(server, authorizer, make_client):
    client, inbox = await _subscribed_client(make_client, server, [USER, CONVERSATION, OTHER])
    await client.subscribe([CONVERSATION])  # A second consumer of the same context.

    await _revoke(server, authorizer)
    await server.publish(CONVERSATION, "message.created", {"n": 1})
    await server.publish(OTHER, "message.created", {"n": 2})
    await eventually(lambda: any(e.context == OTHER for e in inbox.events), message="OTHER event")

    assert [e.context for e in inbox.events if e.event == "message.created"] == [OTHER]
    [revoked] = _revocations(inbox)
    assert revoked.context == USER
    assert revoked.data == {"contexts": [CONVERSATION, PRESENCE]}
    assert revoked.seq is not None
    assert client.counts == {USER: 1, OTHER: 1}


async def test_revoked_handler_sees_counts_already_dropped(server, authorizer, make_client):
    client, _ = await _subscribed_client(make_client, server, [USER, CONVERSATION])
    seen: list[dict[str, int]] = []
    client.on(protocol.ACCESS_REVOKED_EVENT, lambda event: seen.append(client.counts))

    await _revoke(server, authorizer)
    await eventually(lambda: seen, message="the access.revoked handler")

    assert seen == [{USER: 1}]


async def test_reconnect_skips_revoked_contexts(server, authorizer, make_client, frame_log):
    client, inbox = await _subscribed_client(make_client, server, [USER, CONVERSATION, OTHER])
    errors: list[protocol.Error] = []
    client.on_error(errors.append)
    await _revoke(server, authorizer)
    await eventually(lambda: _revocations(inbox), message="access.revoked")

    old = max(server.connection_ids("u1"))
    before = client.connect_count
    await server.disconnect("u1")
    await eventually(lambda: client.connect_count > before and OTHER in server.subscriptions_of("u1"),
                     message="reconnect and resubscribe")
    await server.publish(OTHER, "message.created", {"n": 1})
    await eventually(lambda: any(e.event == "message.created" for e in inbox.events),
                     message="event on OTHER after the reconnect")

    assert frame_log.subscribed(after=old) == [(USER, OTHER)]
    assert errors == []


class GatedTokens(TokenSource):
    """A token source that blocks every fetch after the first until ``gate`` is set."""

    def __init__(self, user_id: str = "u1") -> None:
        super().__init__(user_id)
        self.gate = asyncio.Event()

    async def __call__(self) -> str:
        if self.calls >= 1:
            await self.gate.wait()
        return await super().__call__()


async def test_revocation_while_disconnected_keeps_others(server, authorizer, make_client,
                                                          frame_log):
    tokens = GatedTokens()
    client = await make_client(tokens=tokens)
    inbox = Inbox()
    client.on("*", inbox)
    errors: list[protocol.Error] = []
    client.on_error(errors.append)
    await client.subscribe([USER, CONVERSATION, OTHER])
    await eventually(lambda: len(server.subscriptions_of("u1")) == 3, message="subscriptions")

    old = max(server.connection_ids("u1"))
    await server.disconnect("u1")
    await eventually(lambda: not server.connection_ids("u1"), message="the disconnect")
    await _revoke(server, authorizer)  # No connection of u1 is open to receive it.
    tokens.gate.set()
    await eventually(lambda: OTHER in server.subscriptions_of("u1"), message="the retry")
    await server.publish(OTHER, "message.created", {"n": 1})
    await eventually(lambda: any(e.event == "message.created" for e in inbox.events),
                     message="event on OTHER after the retry")

    assert frame_log.subscribed(after=old) == [(USER, CONVERSATION, OTHER), (USER, OTHER)]
    assert set(server.subscriptions_of("u1")) == {USER, OTHER}
    assert client.counts == {USER: 1, OTHER: 1}
    [error] = errors
    assert error.code == "forbidden"
    assert error.contexts == (CONVERSATION,)


async def test_forbidden_subscribe_retries_the_rest(server, make_client, frame_log):
    client, inbox = await _subscribed_client(make_client, server, [USER])
    errors: list[protocol.Error] = []
    client.on_error(errors.append)

    await client.subscribe(["/forbidden/secret", OTHER])
    await eventually(lambda: OTHER in server.subscriptions_of("u1"), message="the retry")

    assert frame_log.subscribed()[-2:] == [("/forbidden/secret", OTHER), (OTHER,)]
    assert client.counts == {USER: 1, OTHER: 1}
    assert [e.contexts for e in errors] == [("/forbidden/secret",)]


async def test_connection_without_user_context_is_told(server, authorizer, make_client):
    client, inbox = await _subscribed_client(make_client, server, [CONVERSATION])

    await _revoke(server, authorizer)
    await eventually(lambda: _revocations(inbox), message="access.revoked")

    [revoked] = _revocations(inbox)
    assert revoked.context == USER
    assert revoked.seq is None
    assert client.counts == {}


async def test_revocation_of_other_user_changes_nothing(server, authorizer, make_client):
    client, inbox = await _subscribed_client(make_client, server, [USER, CONVERSATION])

    await _revoke(server, authorizer, user_id="u2")
    await server.publish(CONVERSATION, "message.created", {"n": 1})
    await eventually(lambda: inbox.events, message="the event on CONVERSATION")

    assert [e.event for e in inbox.events] == ["message.created"]
    assert client.counts == {USER: 1, CONVERSATION: 1}


async def test_revocation_makes_the_user_leave_presence(server, authorizer, make_client):
    await _subscribed_client(make_client, server, [PRESENCE])
    observer, inbox = await _subscribed_client(make_client, server, [PRESENCE], user_id="u2")

    await _revoke(server, authorizer)
    await eventually(
        lambda: any(e.event == "presence.leave" and e.data == {"userId": "u1"}
                    for e in inbox.events),
        message="presence.leave of u1",
    )

    assert server.present_users(PRESENCE) == ["u2"]


async def test_subscribe_in_flight_loses_revoked_context(server, authorizer, make_client,
                                                         monkeypatch):
    client = await make_client()
    inbox = Inbox()
    client.on("*", inbox)
    gate = asyncio.Event()
    authorizing = asyncio.Event()
    check = authorizer.forbidden_contexts

    async def gated(user_id, contexts):
        # The result predates the revocation, as that of a database read racing it would.
        answer = await check(user_id, contexts)
        authorizing.set()
        await gate.wait()
        return answer

    monkeypatch.setattr(authorizer, "forbidden_contexts", gated)
    subscribing = asyncio.create_task(client.subscribe([CONVERSATION, OTHER]))
    await asyncio.wait_for(authorizing.wait(), 5)

    await _revoke(server, authorizer)
    gate.set()
    await subscribing
    await eventually(lambda: OTHER in server.subscriptions_of("u1"), message="OTHER subscribed")

    assert set(server.subscriptions_of("u1")) == {OTHER}
    await eventually(lambda: _revocations(inbox), message="access.revoked")
    assert client.counts == {OTHER: 1}


async def test_malformed_command_is_ignored(server, make_client, caplog):
    await _subscribed_client(make_client, server, [CONVERSATION])

    with caplog.at_level(logging.WARNING, logger="kilo_web.event_service.server"):
        await server.backplane.publish(CONTROL_CONTEXT, "access.revoked",
                                       {"userId": "u1", "contexts": "/kiloclaw/s1/c1"})

    assert "ignored control event access.revoked: 'contexts' must be a list" in caplog.text
    assert set(server.subscriptions_of("u1")) == {CONVERSATION}


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ({"contexts": [CONVERSATION]}, "'userId' must be a non-empty string, got None"),
        ({"userId": 7, "contexts": [CONVERSATION]}, "'userId' must be a non-empty string, got 7"),
        ({"userId": "7", "contexts": []}, "'contexts' must be a list of 1 to 100 contexts"),
        ({"userId": "7", "contexts": ["no-slash"]}, "'contexts' contains an invalid context"),
    ],
)
def test_access_revoked_parse_rejects(data, problem):
    with pytest.raises(InvalidCommandError, match=problem):
        AccessRevoked.parse(data)


def test_access_revoked_parse_dedupes_contexts():
    command = AccessRevoked.parse({"userId": "7", "contexts": [CONVERSATION, CONVERSATION]})

    assert command == AccessRevoked(user_id="7", contexts=(CONVERSATION,))
