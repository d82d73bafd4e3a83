"""The bot's HTTP client: retries, errors and what it logs, against a mock transport."""

from __future__ import annotations

import logging

import httpx
import pytest

from kilo_web.bots.api_client import ApiError, ApiUnavailableError, ChatApiClient

KEY = "kilo_bot_0123456789abcdef_" + "s" * 43


def client_with(handler) -> ChatApiClient:
    return ChatApiClient("http://127.0.0.1:1/base/", KEY, retry_min_seconds=0.001,
                         retry_max_seconds=0.002, transport=httpx.MockTransport(handler))


async def test_sends_key_and_parses_me():
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"id": 7, "username": "kilobot", "displayName": "Kilo Bot",
                                         "isBot": True, "instanceId": "s1"})

    async with client_with(handler) as api:
        me = await api.me()
    assert (me.id, me.username, me.display_name, me.is_bot, me.instance_id) == (
        7, "kilobot", "Kilo Bot", True, "s1")
    assert seen[0].url == "http://127.0.0.1:1/base/api/me"
    assert seen[0].headers["Authorization"] == f"Bearer {KEY}"


@pytest.mark.parametrize("failure", [503, 429, "refused"])
async def test_retries_transient_failures(failure, caplog):
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        if len(calls) < 3:
            if failure == "refused":
                raise httpx.ConnectError("connection refused", request=request)
            return httpx.Response(failure, json={"error": {"code": "busy", "message": "later"}})
        return httpx.Response(200, json={"token": "t", "expiresAt": "x", "userId": 7})

    caplog.set_level(logging.INFO, logger="kilo_web")
    async with client_with(handler) as api:
        assert await api.token() == "t"
    assert len(calls) == 3
    assert "POST /api/token failed with" in caplog.text
    assert "retry 2 in" in caplog.text
    assert KEY not in caplog.text


async def test_gives_up_after_attempts():
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(502, text="bad gateway")

    async with client_with(handler) as api:
        with pytest.raises(ApiUnavailableError, match="failed 4 times, last with HTTP 502"):
            await api.conversations(attempts=4)
    assert len(calls) == 4


async def test_rejection_is_not_retried():
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(403, json={"error": {"code": "forbidden", "message": "not yours"}})

    async with client_with(handler) as api:
        with pytest.raises(ApiError) as rejected:
            await api.post_message("c1", [{"type": "markdown", "text": "hi"}],
                                   client_message_id="reply-1")
    assert len(calls) == 1
    assert (rejected.value.status, rejected.value.code, rejected.value.message) == (
        403, "forbidden", "not yours")
    assert str(rejected.value) == (
        "POST /api/conversations/c1/messages failed with HTTP 403 forbidden: not yours")


async def test_non_json_response_is_an_error():
    async with client_with(lambda request: httpx.Response(200, text="<html>")) as api:
        with pytest.raises(ApiError) as rejected:
            await api.me()
    assert rejected.value.code == "invalid_response"


async def test_post_reports_repeat_and_params():
    requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        if request.method == "POST":
            return httpx.Response(200, json={"message": {"id": 5, "seq": 2}})
        return httpx.Response(200, json={"messages": [{"id": 5}], "before": None})

    async with client_with(handler) as api:
        posted = await api.post_message("c1", [], client_message_id="reply-4")
        page = await api.messages("c1", after=3, limit=10)
    assert posted.created is False
    assert posted.message == {"id": 5, "seq": 2}
    assert page == [{"id": 5}]
    assert requests[1].url.params == httpx.QueryParams({"after": "3", "limit": "10"})


def test_empty_key_is_rejected():
    with pytest.raises(ValueError, match="api_key is empty"):
        ChatApiClient("http://127.0.0.1:1", "")
