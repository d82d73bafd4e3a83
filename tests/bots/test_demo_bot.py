"""The demo bot end to end: HTTP API, event service and SDK on loopback sockets."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from kilo_web.accounts.users import create_bot_user
from kilo_web.bots.api_client import ApiError, ChatApiClient
from kilo_web.bots.demo import DemoBot
from kilo_web.chat import bots, service
from kilo_web.event_service.client import SUBSCRIBED
from kilo_web.event_service.contexts import kiloclaw_conversation_context
from kilo_web.event_service.embedded import get_backplane, server_from_settings
from tests.bots.conftest import TIMEOUT, bot_is_present, eventually, replies_to


async def wait_until_online(stack, inbox) -> None:
    await inbox.wait_for(bot_is_present(stack.bot.id), description="the bot in the instance's presence")


async def test_bot_joins_instance_presence(stack, alice_inbox, running_bot):
    await wait_until_online(stack, alice_inbox)

    assert str(stack.bot.id) in stack.event_service.present_users(stack.presence_context)


async def test_bot_replies_with_markdown(stack, alice_inbox, running_bot):
    await wait_until_online(stack, alice_inbox)

    posted = await stack.post(stack.conversation.id, "roll 2d6", client_message_id="m-1")
    assert posted.status_code == 201
    message = posted.json()["message"]

    reply = await alice_inbox.wait_for(
        lambda e: e.event == "message.created"
        and e.data["clientMessageId"] == f"reply-{message['id']}",
        description="the bot's reply",
    )
    assert reply.context == stack.conversation_context
    assert reply.data["senderId"] == stack.bot.id
    assert reply.data["senderIsBot"] is True
    assert reply.data["seq"] == message["seq"] + 1
    [block] = reply.data["blocks"]
    assert block["type"] == "markdown"
    assert block["text"].startswith("🎲 **2d6**: ")


async def test_bot_marks_conversation_read(stack, alice_inbox, running_bot):
    await wait_until_online(stack, alice_inbox)
    posted = await stack.post(stack.conversation.id, "time")
    message_id = posted.json()["message"]["id"]
    await alice_inbox.wait_for(
        lambda e: e.event == "message.created" and e.data["clientMessageId"] == f"reply-{message_id}",
        description="the bot's reply",
    )

    async def bot_unread() -> int:
        async with httpx.AsyncClient(base_url=stack.api_url,
                                     headers={"Authorization": f"Bearer {stack.api_key}"}) as http:
            listed = (await http.get("/api/conversations")).json()["conversations"]
        return next(c["unread"] for c in listed if c["id"] == stack.conversation.id)

    unread = [await bot_unread()]

    async def poll() -> bool:
        unread.append(await bot_unread())
        return unread[-1] == 0

    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT
    while not await poll():
        assert loop.time() < deadline, f"the bot's unread count stayed at {unread[-1]}"
        await asyncio.sleep(0.01)


async def test_repeated_post_gets_one_reply(stack, alice_inbox, running_bot):
    await wait_until_online(stack, alice_inbox)
    first = await stack.post(stack.conversation.id, "echo once", client_message_id="m-1")
    message_id = first.json()["message"]["id"]
    await alice_inbox.wait_for(
        lambda e: e.event == "message.created" and e.data["clientMessageId"] == f"reply-{message_id}",
        description="the reply to the first post",
    )

    repeat = await stack.post(stack.conversation.id, "echo once", client_message_id="m-1")
    assert repeat.status_code == 200
    assert repeat.json()["message"]["id"] == message_id
    # The bot works in order, so once the next message has its reply, a
    # reply to the repeat would have been posted already.
    later = await stack.post(stack.conversation.id, "echo later")
    later_id = later.json()["message"]["id"]
    await alice_inbox.wait_for(
        lambda e: e.event == "message.created" and e.data["clientMessageId"] == f"reply-{later_id}",
        description="the reply to the later post",
    )

    messages = await stack.messages(stack.conversation.id)
    assert [m["clientMessageId"] for m in messages] == [
        "m-1", f"reply-{message_id}", None, f"reply-{later_id}",
    ]
    assert [m["blocks"][0]["text"] for m in messages[1::2]] == ["once", "later"]
    assert len(alice_inbox.messages(stack.conversation.id)) == 4


async def test_bot_replies_in_new_conversation(stack, alice_inbox, running_bot):
    await wait_until_online(stack, alice_inbox)

    async with httpx.AsyncClient(base_url=stack.api_url, headers=stack.alice_headers) as http:
        created = await http.post("/api/conversations",
                                  json={"instanceId": stack.instance.id, "title": "Later"})
    assert created.status_code == 201
    conversation_id = created.json()["conversation"]["id"]
    context = kiloclaw_conversation_context(stack.instance.id, conversation_id)
    await alice_inbox.client.subscribe([context])
    await alice_inbox.wait_for(lambda e: e.event == SUBSCRIBED and e.context == context,
                               description="alice's subscription to the new conversation")

    posted = await stack.post(conversation_id, "help")
    message_id = posted.json()["message"]["id"]

    reply = await alice_inbox.wait_for(
        lambda e: e.event == "message.created" and e.data["clientMessageId"] == f"reply-{message_id}",
        description="the bot's reply in the new conversation",
    )
    assert reply.context == context
    assert reply.data["blocks"][0]["text"].startswith("### Kilo Bot commands")
    assert context in stack.event_service.subscriptions_of(str(stack.bot.id))


async def test_bot_forgets_conversation_it_was_removed_from(stack, alice_inbox, running_bot):
    await wait_until_online(stack, alice_inbox)
    # A bot of one instance can be removed only from a conversation of another one.
    elsewhere = service.create_instance(stack.session, owner_id=stack.alice.id, label="Elsewhere")
    conversation = service.create_conversation(
        stack.session, instance_id=elsewhere.id, title="Guests", creator_id=stack.alice.id,
        member_ids=[stack.bot.id])
    context = kiloclaw_conversation_context(elsewhere.id, conversation.id)
    bot_id = str(stack.bot.id)
    await service.announce_conversation(get_backplane(), conversation, [stack.bot.id])
    await eventually(lambda: context in stack.event_service.subscriptions_of(bot_id),
                     description="the bot's subscription to the new conversation")

    removed = await service.remove_conversation_member(
        stack.session, conversation_id=conversation.id, user_id=stack.bot.id,
        removed_by=stack.alice.id, publisher=get_backplane())
    await eventually(lambda: conversation.id not in running_bot.conversations,
                     description="the bot to drop the conversation")

    assert removed is True
    assert context not in stack.event_service.subscriptions_of(bot_id)
    assert context not in running_bot.client.counts
    assert "conv-1" in running_bot.conversations


async def test_bot_ignores_other_bots(stack, alice_inbox, running_bot):
    other = create_bot_user(stack.session, username="otherbot", display_name="Other Bot")
    bots.attach_bot(stack.session, bot_id=other.id, instance_id=stack.instance.id)
    _, other_key = bots.create_api_key(stack.session, bot_id=other.id, created_by=None)
    await wait_until_online(stack, alice_inbox)

    from_bot = await stack.post(stack.conversation.id, "help",
                                headers={"Authorization": f"Bearer {other_key}"})
    assert from_bot.status_code == 201
    from_alice = await stack.post(stack.conversation.id, "echo after the bot")
    alice_message_id = from_alice.json()["message"]["id"]
    await alice_inbox.wait_for(
        lambda e: e.event == "message.created"
        and e.data["clientMessageId"] == f"reply-{alice_message_id}",
        description="the reply to alice",
    )

    messages = await stack.messages(stack.conversation.id)
    assert replies_to(messages, from_bot.json()["message"]["id"]) == []
    assert len(messages) == 3
    assert running_bot.replies_posted == 1


async def test_bot_catches_up_after_event_service_restart(stack, settings, alice_inbox,
                                                          running_bot):
    await wait_until_online(stack, alice_inbox)
    before = await stack.post(stack.conversation.id, "echo before")
    before_id = before.json()["message"]["id"]
    await alice_inbox.wait_for(
        lambda e: e.event == "message.created" and e.data["clientMessageId"] == f"reply-{before_id}",
        description="the reply before the restart",
    )

    port = stack.event_service.port
    await stack.event_service.close()
    # Published while no event service runs, so no subscriber gets this event.
    during = await stack.post(stack.conversation.id, "echo during")
    during_id = during.json()["message"]["id"]
    restarted = server_from_settings(settings, backplane=get_backplane(), host="127.0.0.1",
                                     port=port)
    await restarted.start()
    try:
        # The new server has new streams, so the bot's SDK reports that
        # nothing was replayed and the bot fetches what it missed.
        messages: list = []

        async def replied() -> bool:
            messages[:] = await stack.messages(stack.conversation.id)
            return bool(replies_to(messages, during_id))

        loop = asyncio.get_running_loop()
        deadline = loop.time() + TIMEOUT
        while not await replied():
            assert loop.time() < deadline, "the bot did not reply to the message it missed"
            await asyncio.sleep(0.01)

        [reply] = replies_to(messages, during_id)
        assert reply["blocks"] == [{"type": "markdown", "text": "during"}]
        assert len(replies_to(messages, before_id)) == 1
        assert len(messages) == 4
    finally:
        await restarted.close()


async def test_restarted_bot_replies_once(stack, alice_inbox):
    first_bot = stack.demo_bot()
    first_task = asyncio.create_task(first_bot.run())
    try:
        await wait_until_online(stack, alice_inbox)
        posted = await stack.post(stack.conversation.id, "echo just once")
        message = posted.json()["message"]
        await alice_inbox.wait_for(
            lambda e: e.event == "message.created"
            and e.data["clientMessageId"] == f"reply-{message['id']}",
            description="the first bot's reply",
        )
    finally:
        first_task.cancel()
        await asyncio.gather(first_task, return_exceptions=True)
        await first_bot.api.aclose()

    second_bot = stack.demo_bot()
    second_task = asyncio.create_task(second_bot.run())
    try:
        await eventually(
            lambda: "conv-1" in second_bot.conversations
            and second_bot.conversations["conv-1"].last_seen is not None,
            description="the second bot to learn where the conversation stands",
        )
        # A bot that remembers nothing handles the replied-to message again,
        # as after a crash between its reply and its bookkeeping.
        assert await second_bot.handle_message(message)
        assert second_bot.replies_posted == 0
    finally:
        second_task.cancel()
        await asyncio.gather(second_task, return_exceptions=True)
        await second_bot.api.aclose()

    messages = await stack.messages(stack.conversation.id)
    assert len(replies_to(messages, message["id"])) == 1
    assert len(messages) == 2


async def test_bot_stops_when_its_key_is_revoked(stack, alice_inbox, caplog):
    bot = stack.demo_bot()
    task = asyncio.create_task(bot.run())
    try:
        await wait_until_online(stack, alice_inbox)
        # A key reads kilo_bot_<16 hex digits>_<secret>, and the secret may contain "_".
        key_id, secret = stack.api_key.removeprefix("kilo_bot_").split("_", 1)
        async with httpx.AsyncClient(base_url=stack.api_url, headers=stack.alice_headers) as http:
            revoked = await http.delete(f"/api/bots/{stack.bot.id}/keys/{key_id}")
        assert revoked.status_code == 200

        done, _ = await asyncio.wait({task}, timeout=TIMEOUT)
        assert done, "the bot kept running with a revoked key"
        with pytest.raises(ApiError) as stopped:
            task.result()
        assert stopped.value.status == 401
        assert stopped.value.code == "invalid_api_key"
        assert stack.api_key not in caplog.text
        assert secret not in caplog.text
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await bot.api.aclose()


async def test_bot_rejects_a_person_key(stack):
    # A session token authenticates a person, who is no bot.
    session_token = stack.alice_headers["Authorization"].removeprefix("Bearer ")
    bot = stack.demo_bot(api_key=session_token)
    try:
        with pytest.raises(ApiError) as rejected:
            await asyncio.wait_for(bot.run(), TIMEOUT)
        assert rejected.value.code == "not_a_bot"
    finally:
        await bot.api.aclose()


async def test_bot_stops_when_first_token_is_refused():
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/me":
            return httpx.Response(200, json={"id": 3, "username": "kilobot",
                                             "displayName": "Kilo Bot", "isBot": True,
                                             "instanceId": "s1"})
        if request.url.path == "/api/conversations":
            return httpx.Response(200, json={"conversations": []})
        return httpx.Response(401, json={"error": {"code": "invalid_api_key",
                                                   "message": "API key 0123 was revoked"}})

    api = ChatApiClient("http://127.0.0.1:1", "kilo_bot_key", transport=httpx.MockTransport(handler))
    # No event service listens there; the bot never gets as far as connecting.
    bot = DemoBot(api, "ws://127.0.0.1:1", reconnect_min_seconds=0.01, reconnect_max_seconds=0.02)
    try:
        with pytest.raises(ApiError) as stopped:
            await asyncio.wait_for(bot.run(), TIMEOUT)
        assert stopped.value.status == 401
        assert stopped.value.path == "/api/token"
    finally:
        await api.aclose()
