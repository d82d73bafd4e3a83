"""The demo bot's lifespan task and its settings."""

from __future__ import annotations

import dataclasses
import logging

import pytest

from kilo_web.bots.embedded import demo_bot_lifespan
from kilo_web.bots.keys import write_api_key
from kilo_web.settings import Settings, SettingsError, get_settings
from tests.bots.conftest import bot_is_present, eventually, start_api, stop_api
from tests.helpers import free_port


async def test_lifespan_runs_bot_before_api_listens(stack, alice_inbox, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="kilo_web")
    key_file = tmp_path / "keys" / "demo-bot.key"
    write_api_key(key_file, stack.api_key)
    port = free_port()
    settings = dataclasses.replace(stack.settings, bot_api_url=f"http://127.0.0.1:{port}",
                                   bot_api_key_file=key_file)

    server = serve_task = None
    try:
        async with demo_bot_lifespan(settings) as task:
            assert task is not None
            # Nothing listens on the port yet, as while the backend starts.
            await eventually(lambda: "retry 1 " in caplog.text, description="the bot's first retry")
            assert not task.done()
            server, serve_task, _ = await start_api(settings, port=port)
            await alice_inbox.wait_for(bot_is_present(stack.bot.id),
                                       description="the embedded bot in the instance's presence")
        assert task.cancelled()
        await alice_inbox.wait_for(
            lambda e: e.event == "presence.leave" and e.data["userId"] == str(stack.bot.id),
            description="the embedded bot leaving the instance's presence",
        )
    finally:
        if server is not None:
            await stop_api(server, serve_task)
    assert "started the demo bot" in caplog.text
    assert "stopped the demo bot" in caplog.text
    assert stack.api_key not in caplog.text


async def test_lifespan_off_by_setting(settings, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="kilo_web")
    key_file = tmp_path / "demo-bot.key"
    write_api_key(key_file, "kilo_bot_" + "0" * 16 + "_" + "x" * 43)
    off = dataclasses.replace(settings, demo_bot=False, bot_api_key_file=key_file)

    async with demo_bot_lifespan(off) as task:
        assert task is None
    assert "KILO_DEMO_BOT=0" in caplog.text


async def test_lifespan_without_key_file(settings, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="kilo_web")
    missing = tmp_path / "nowhere" / "demo-bot.key"

    async with demo_bot_lifespan(dataclasses.replace(settings, bot_api_key_file=missing)) as task:
        assert task is None
    assert f"no API key in {missing}" in caplog.text
    assert "python -m kilo_web.bots.keys create kilobot" in caplog.text


async def test_lifespan_with_empty_key_file(settings, tmp_path, caplog):
    empty = tmp_path / "demo-bot.key"
    empty.write_text("\n")

    async with demo_bot_lifespan(dataclasses.replace(settings, bot_api_key_file=empty)) as task:
        assert task is None
    assert "is empty" in caplog.text


@pytest.fixture
def clean_environment(monkeypatch, tmp_path):
    for name in ("KILO_DEMO_BOT", "KILO_BOT_API_URL", "KILO_BOT_API_KEY_FILE", "KILO_BOT_API_KEY",
                 "REFLEX_BACKEND_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KILO_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("KILO_JWT_SECRET", "s" * 40)
    get_settings.cache_clear()
    yield monkeypatch
    get_settings.cache_clear()


def test_settings_defaults(clean_environment, tmp_path):
    settings = Settings.from_env()
    assert settings.demo_bot is True
    assert settings.bot_api_url is None
    assert settings.bot_api_base_url == "http://127.0.0.1:8000"
    assert settings.bot_api_key_path == tmp_path.resolve() / "demo-bot.key"
    assert settings.bot_api_key == ""


def test_settings_follow_reflex_backend_port(clean_environment):
    settings = Settings.from_env()
    # reflex run exports the port after the settings were read.
    clean_environment.setenv("REFLEX_BACKEND_PORT", "8100")
    assert settings.bot_api_base_url == "http://127.0.0.1:8100"


def test_settings_overrides(clean_environment, tmp_path):
    clean_environment.setenv("KILO_DEMO_BOT", "0")
    clean_environment.setenv("KILO_BOT_API_URL", "http://127.0.0.1:9000/")
    clean_environment.setenv("KILO_BOT_API_KEY_FILE", str(tmp_path / "other.key"))
    clean_environment.setenv("KILO_BOT_API_KEY", "kilo_bot_secret")
    settings = Settings.from_env()
    assert settings.demo_bot is False
    assert settings.bot_api_base_url == "http://127.0.0.1:9000"
    assert settings.bot_api_key_path == tmp_path / "other.key"
    assert settings.bot_api_key == "kilo_bot_secret"
    assert "kilo_bot_secret" not in repr(settings)


def test_settings_reject_bad_switch(clean_environment):
    clean_environment.setenv("KILO_DEMO_BOT", "maybe")
    with pytest.raises(SettingsError, match="KILO_DEMO_BOT"):
        Settings.from_env()
