"""Demo data seeding."""

from __future__ import annotations

import pytest
from reflex_local_auth.user import LocalUser
from sqlmodel import Session, select

from kilo_web import seed
from kilo_web.chat import service
from kilo_web.chat.models import Conversation, Instance, Message
from kilo_web.settings import get_settings


def _counts(session: Session) -> tuple[int, int, int, int]:
    return (
        len(session.exec(select(LocalUser)).all()),
        len(session.exec(select(Instance)).all()),
        len(session.exec(select(Conversation)).all()),
        len(session.exec(select(Message)).all()),
    )


def test_seed_creates_demo_data(session):
    assert seed.seed_demo_data(session)

    alice = service.find_user_by_username(session, "alice")
    bob = service.find_user_by_username(session, "bob")
    bot = service.find_user_by_username(session, "kilobot")
    assert (alice.display_name, bob.display_name, bot.display_name) == ("Alice", "Bob", "Kilo Bot")
    assert bot.is_bot
    assert session.get(LocalUser, alice.local_user_id).verify(seed.DEMO_PASSWORD)
    assert session.get(LocalUser, bob.local_user_id).verify(seed.DEMO_PASSWORD)

    [instance] = service.list_instances_for_user(session, bob.id)
    assert instance.label == seed.DEMO_INSTANCE_LABEL
    assert {m.id for m in service.list_instance_members(session, instance.id)} == {
        alice.id,
        bob.id,
        bot.id,
    }

    [conversation] = service.list_conversations_for_user(session, bot.id)
    assert conversation.title == seed.DEMO_CONVERSATION_TITLE
    assert len(service.list_members(session, conversation.id)) == 3
    messages = service.list_messages(session, conversation.id)
    assert [m.seq for m in messages] == [1, 2, 3]
    assert {m.sender_id for m in messages} == {alice.id, bob.id, bot.id}


def test_seed_skips_non_empty_database(session, make_user):
    make_user("someone")
    before = _counts(session)

    assert not seed.seed_demo_data(session)

    assert _counts(session) == before


def test_seed_twice_changes_nothing(session):
    assert seed.seed_demo_data(session)
    after_first = _counts(session)

    assert not seed.seed_demo_data(session)

    assert _counts(session) == after_first


@pytest.fixture
def seed_environment(database_url, tmp_path, monkeypatch):
    """Point the settings at the test database for ``seed.main``."""
    monkeypatch.setenv("KILO_DATABASE_URL", database_url)
    monkeypatch.setenv("KILO_DATA_DIR", str(tmp_path))
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_main_seeds_configured_database(seed_environment, session):
    assert seed.main() == 0

    assert _counts(session) == (3, 1, 1, 3)


def test_main_respects_seed_switch(seed_environment, session, monkeypatch):
    monkeypatch.setenv("KILO_SEED_DEMO", "0")
    get_settings.cache_clear()

    assert seed.main() == 0

    assert _counts(session) == (0, 0, 0, 0)
