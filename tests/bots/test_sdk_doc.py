"""The complete bot in docs/sdk.md, run as written against a live stack."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

import pytest

from tests.bots.conftest import TIMEOUT, eventually

PROJECT_DIR = Path(__file__).resolve().parents[2]
SDK_DOC = PROJECT_DIR / "docs" / "sdk.md"
MARKER = "<!-- echo-bot:"


def echo_bot_source() -> str:
    """Return the Python block that follows the echo-bot marker in docs/sdk.md."""
    text = SDK_DOC.read_text(encoding="utf-8")
    start = text.index(MARKER)
    match = re.compile(r"```python\n(.*?)```", re.DOTALL).search(text, start)
    assert match is not None, f"no python block after {MARKER!r} in {SDK_DOC}"
    return match.group(1)


def test_echo_bot_is_short():
    lines = [line for line in echo_bot_source().splitlines() if line.strip()]
    assert len(lines) <= 30


@pytest.fixture
def echo_bot_file(tmp_path) -> Path:
    path = tmp_path / "echo_bot.py"
    path.write_text(echo_bot_source(), encoding="utf-8")
    return path


async def test_echo_bot_from_docs_replies(stack, alice_inbox, echo_bot_file, tmp_path):
    environment = {
        **os.environ,
        "PYTHONPATH": str(PROJECT_DIR),
        "KILO_BOT_API_URL": stack.api_url,
        "KILO_EVENT_SERVICE_URL": stack.event_service.url,
        "KILO_BOT_API_KEY": stack.api_key,
    }
    log_path = tmp_path / "echo_bot.log"
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable, str(echo_bot_file), env=environment, cwd=tmp_path,
            stdout=log, stderr=log,
        )
    try:
        await eventually(
            lambda: stack.conversation_context in stack.event_service.subscriptions_of(str(stack.bot.id))
            or process.returncode is not None,
            description="the echo bot's subscription",
        )
        assert process.returncode is None, f"the echo bot exited: {log_path.read_text()}"

        for text in ("hello from the docs", "second message"):
            posted = await stack.post(stack.conversation.id, text)
            message_id = posted.json()["message"]["id"]
            reply = await alice_inbox.wait_for(
                lambda e: e.event == "message.created"
                and e.data["clientMessageId"] == f"echo-{message_id}",
                description=f"the echo of {text!r}",
            )
            assert reply.data["blocks"] == [{"type": "text", "text": f"echo: {text}"}]
            assert reply.data["senderId"] == stack.bot.id

        # Each message got one echo, and no echo was echoed.
        messages = await stack.messages(stack.conversation.id)
        assert [m["clientMessageId"] for m in messages][1::2] == [
            f"echo-{messages[0]['id']}", f"echo-{messages[2]['id']}",
        ]
        assert len(messages) == 4
    finally:
        if process.returncode is None:
            process.terminate()
        await asyncio.wait_for(process.wait(), TIMEOUT)
