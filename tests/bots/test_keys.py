"""API key files, the operators' key tool and the demo bot's key from the seed."""

from __future__ import annotations

import logging
import stat

import pytest
from sqlmodel import select

from kilo_web import seed
from kilo_web.accounts.users import create_bot_user
from kilo_web.bots import keys
from kilo_web.bots.keys import KeyFileError, read_api_key, write_api_key
from kilo_web.chat import bots, service
from kilo_web.chat.errors import InvalidApiKeyError
from kilo_web.chat.models import ApiKey
from kilo_web.settings import get_settings
from tests.chat.conftest import insert_user

KEY = "kilo_bot_0123456789abcdef_" + "k" * 43


def mode_of(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_write_key_file_is_private(tmp_path):
    path = tmp_path / "nested" / "bot.key"
    write_api_key(path, KEY)
    assert path.read_text() == KEY + "\n"
    assert mode_of(path) == 0o600
    assert read_api_key(path) == KEY
    assert [p.name for p in path.parent.iterdir()] == ["bot.key"]


def test_write_key_file_refuses_to_replace(tmp_path):
    path = tmp_path / "bot.key"
    write_api_key(path, KEY)
    with pytest.raises(KeyFileError, match="--force"):
        write_api_key(path, "kilo_bot_other")
    assert read_api_key(path) == KEY
    write_api_key(path, "kilo_bot_other", replace=True)
    assert read_api_key(path) == "kilo_bot_other"
    assert mode_of(path) == 0o600


def test_read_key_file_missing_or_empty(tmp_path):
    assert read_api_key(tmp_path / "missing.key") is None
    empty = tmp_path / "empty.key"
    empty.write_text("  \n")
    with pytest.raises(KeyFileError, match="empty"):
        read_api_key(empty)


def test_read_key_file_warns_when_shared(tmp_path, caplog):
    path = tmp_path / "shared.key"
    path.write_text(KEY)
    path.chmod(0o644)
    assert read_api_key(path) == KEY
    assert "readable by other users" in caplog.text
    assert KEY not in caplog.text


@pytest.fixture
def tool_environment(database_url, tmp_path, monkeypatch):
    """Point the settings at the test database, as for ``python -m kilo_web.bots.keys``."""
    monkeypatch.setenv("KILO_DATABASE_URL", database_url)
    monkeypatch.setenv("KILO_DATA_DIR", str(tmp_path))
    for name in ("KILO_BOT_API_KEY_FILE", "KILO_BOT_API_KEY", "KILO_SEED_DEMO", "KILO_DEMO_BOT"):
        monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


@pytest.fixture
def unattached_bot(session):
    """kilobot as old databases have it: a member of one instance, with no bot row."""
    alice = insert_user(session, "alice")
    bot = create_bot_user(session, username="kilobot", display_name="Kilo Bot")
    instance = service.create_instance(session, owner_id=alice.id, label="Sandbox",
                                       instance_id="sandbox-1")
    service.add_instance_member(session, instance_id=instance.id, user_id=bot.id)
    return bot


def test_tool_create_attaches_and_writes_key(tool_environment, session, unattached_bot, capsys):
    assert keys.main(["create", "kilobot", "--label", "demo"]) == 0

    path = tool_environment / "demo-bot.key"
    assert mode_of(path) == 0o600
    key = read_api_key(path)
    caller = bots.authenticate_api_key(session, key)
    assert caller.bot_id == unattached_bot.id
    assert caller.instance_id == "sandbox-1"
    output = capsys.readouterr().out
    assert f"created API key {caller.key_id} of bot kilobot in {path}" in output
    assert key not in output


def test_tool_create_refuses_existing_file(tool_environment, session, unattached_bot, capsys):
    assert keys.main(["create", "kilobot"]) == 0
    first = read_api_key(tool_environment / "demo-bot.key")

    assert keys.main(["create", "kilobot"]) == 1
    assert "--force" in capsys.readouterr().err
    assert read_api_key(tool_environment / "demo-bot.key") == first
    assert len(session.exec(select(ApiKey)).all()) == 1

    assert keys.main(["create", "kilobot", "--force"]) == 0
    assert read_api_key(tool_environment / "demo-bot.key") != first


def test_tool_create_prints_key(tool_environment, session, unattached_bot, capsys):
    assert keys.main(["create", str(unattached_bot.id), "--print"]) == 0

    key = capsys.readouterr().out.splitlines()[-1]
    assert bots.authenticate_api_key(session, key).bot_id == unattached_bot.id
    assert not (tool_environment / "demo-bot.key").exists()


def test_tool_lists_and_revokes(tool_environment, session, unattached_bot, capsys):
    assert keys.main(["create", "kilobot", "--label", "laptop"]) == 0
    key = read_api_key(tool_environment / "demo-bot.key")
    key_id = bots.authenticate_api_key(session, key).key_id
    capsys.readouterr()

    assert keys.main(["list", "kilobot"]) == 0
    [line] = capsys.readouterr().out.splitlines()
    assert line.startswith(f"{key_id}  active")
    assert line.endswith("laptop")

    assert keys.main(["revoke", "kilobot", key_id]) == 0
    assert "token version is now 1" in capsys.readouterr().out
    with pytest.raises(InvalidApiKeyError, match="revoked"):
        bots.authenticate_api_key(session, key)
    assert keys.main(["list", "kilobot"]) == 0
    assert f"{key_id}  revoked" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["create", "nobody"], "no account is named 'nobody'"),
        (["create", "alice"], "'alice' is a person's account"),
        (["revoke", "kilobot", "0000000000000000"], "not found"),
    ],
    ids=["unknown", "person", "unknown-key"],
)
def test_tool_reports_errors(tool_environment, unattached_bot, capsys, argv, message):
    assert keys.main(argv) == 1
    assert message in capsys.readouterr().err


def test_tool_needs_instance_when_ambiguous(tool_environment, session, capsys):
    alice = insert_user(session, "alice")
    create_bot_user(session, username="kilobot", display_name="Kilo Bot")
    service.create_instance(session, owner_id=alice.id, label="A", instance_id="a")

    assert keys.main(["create", "kilobot"]) == 1
    assert "pass --instance ID" in capsys.readouterr().err
    assert keys.main(["create", "kilobot", "--instance", "a"]) == 0


def test_seed_attaches_bot_and_writes_key(session, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="kilo_web")
    path = tmp_path / "demo-bot.key"
    path.write_text("kilo_bot_stale_key_from_an_older_database\n")

    assert seed.seed_demo_data(session, key_file=path)

    key = read_api_key(path)
    assert mode_of(path) == 0o600
    caller = bots.authenticate_api_key(session, key)
    bot = service.find_user_by_username(session, "kilobot")
    [instance] = service.list_instances_for_user(session, bot.id)
    assert caller.bot_id == bot.id
    assert caller.instance_id == instance.id
    assert bots.instance_bot_ids(session, instance.id) == [bot.id]
    assert key not in caplog.text


def test_seed_main_writes_key_file(tool_environment, session):
    assert seed.main() == 0

    key = read_api_key(tool_environment / "demo-bot.key")
    assert bots.authenticate_api_key(session, key).bot_id == (
        service.find_user_by_username(session, "kilobot").id
    )


def test_seed_main_explains_missing_key(tool_environment, session, caplog):
    caplog.set_level(logging.INFO, logger="kilo_web")
    assert seed.main() == 0
    (tool_environment / "demo-bot.key").unlink()

    assert seed.main() == 0

    assert "has no API key file" in caplog.text
    assert "python -m kilo_web.bots.keys create kilobot" in caplog.text
    assert not (tool_environment / "demo-bot.key").exists()
