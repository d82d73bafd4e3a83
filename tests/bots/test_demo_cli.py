"""``python -m kilo_web.bots.demo`` as a process: start, reply, stop on a signal."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

from kilo_web.bots import demo
from kilo_web.bots.keys import write_api_key
from kilo_web.settings import get_settings
from tests.bots.conftest import TIMEOUT, bot_is_present

PROJECT_DIR = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT], ids=["term", "int"])
async def test_cli_replies_and_stops_on_signal(stack, alice_inbox, tmp_path, stop_signal):
    key_file = tmp_path / "cli.key"
    write_api_key(key_file, stack.api_key)
    environment = {**os.environ, "PYTHONPATH": str(PROJECT_DIR), "KILO_DATA_DIR": str(tmp_path),
                   "KILO_JWT_SECRET": stack.settings.jwt_secret, "KILO_LOG_LEVEL": "INFO"}
    environment.pop("KILO_BOT_API_KEY", None)
    log_path = tmp_path / "bot.log"
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "kilo_web.bots.demo", "--api-url", stack.api_url,
            "--key-file", str(key_file), "--event-service-url", stack.event_service.url,
            env=environment, cwd=PROJECT_DIR, stdout=log, stderr=log,
        )
    try:
        await alice_inbox.wait_for(bot_is_present(stack.bot.id), description="the bot process online")
        posted = await stack.post(stack.conversation.id, "echo from a process")
        message_id = posted.json()["message"]["id"]
        reply = await alice_inbox.wait_for(
            lambda e: e.event == "message.created"
            and e.data["clientMessageId"] == f"reply-{message_id}",
            description="the bot process's reply",
        )
        assert reply.data["blocks"][0]["text"] == "from a process"

        process.send_signal(stop_signal)
        assert await asyncio.wait_for(process.wait(), TIMEOUT) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    output = log_path.read_text()
    assert "bot kilobot stopped" in output
    assert "Traceback" not in output
    assert stack.api_key not in output


@pytest.fixture
def bare_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("KILO_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("KILO_JWT_SECRET", "c" * 40)
    monkeypatch.delenv("KILO_BOT_API_KEY", raising=False)
    monkeypatch.delenv("KILO_BOT_API_KEY_FILE", raising=False)
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


def test_cli_without_key_explains(bare_environment, caplog):
    assert demo.main([]) == 2
    assert f"{bare_environment / 'demo-bot.key'} does not exist" in caplog.text
    assert "python -m kilo_web.bots.keys create kilobot" in caplog.text


def test_cli_with_empty_key_file(bare_environment, caplog):
    empty = bare_environment / "empty.key"
    empty.write_text("")
    assert demo.main(["--key-file", str(empty)]) == 2
    assert "is empty" in caplog.text
