"""Seed demo data into an empty database.

Run ``python -m kilo_web.seed`` after the migrations. It creates the users
``alice`` and ``bob`` (password ``demo-password``), the bot ``kilobot``, the
instance "Demo sandbox" with all three as members (the bot belongs to it),
and the conversation "Welcome" with a few messages. It also makes an API key
for ``kilobot`` and writes it to KILO_BOT_API_KEY_FILE, mode 0600, for the
demo bot. It does nothing when any account already exists, or when
``KILO_SEED_DEMO=0``.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from reflex_local_auth.user import LocalUser
from sqlmodel import Session, select

from kilo_web.accounts.users import create_bot_user, create_local_user
from kilo_web.bots.keys import write_api_key
from kilo_web.chat import bots, service
from kilo_web.chat.content import text_blocks
from kilo_web.chat.database import make_engine
from kilo_web.settings import get_settings

logger = logging.getLogger(__name__)

DEMO_PASSWORD = "demo-password"
"""Password of the demo users; documented in the README."""

DEMO_INSTANCE_LABEL = "Demo sandbox"
DEMO_CONVERSATION_TITLE = "Welcome"
DEMO_BOT_USERNAME = "kilobot"


def database_is_empty(session: Session) -> bool:
    """Tell whether the database has no accounts yet."""
    return session.exec(select(LocalUser.id).limit(1)).first() is None


def seed_demo_data(session: Session, *, key_file: Path | None = None) -> bool:
    """Create the demo users, instance, conversation and messages; return True if it did.

    With ``key_file``, also make an API key for the bot and write it there,
    replacing a file left from an earlier database. Returns False without
    writing anything when an account already exists.

    NOTE: each step commits on its own, so a crash midway leaves partial demo
    data. A rerun will not complete it: delete the database file and rerun.
    """
    if not database_is_empty(session):
        logger.info("database already has accounts; skipping demo data")
        return False

    alice = create_local_user(
        session, username="alice", password=DEMO_PASSWORD, display_name="Alice"
    )
    bob = create_local_user(session, username="bob", password=DEMO_PASSWORD, display_name="Bob")
    bot = create_bot_user(session, username=DEMO_BOT_USERNAME, display_name="Kilo Bot")

    instance = service.create_instance(session, owner_id=alice.id, label=DEMO_INSTANCE_LABEL)
    bots.attach_bot(session, bot_id=bot.id, instance_id=instance.id)
    conversation = service.create_conversation(
        session,
        instance_id=instance.id,
        title=DEMO_CONVERSATION_TITLE,
        creator_id=alice.id,
        member_ids=[bob.id, bot.id],
    )

    # Seeding runs before any server, so messages are stored without a realtime publish.
    script = [
        (bot.id, "Welcome to kilo_web! This conversation lives in the Demo sandbox instance."),
        (alice.id, "Hi Bob, this is where we chat with the sandbox's bot."),
        (bob.id, "Hello Alice! Messages show up here for every member in real time."),
    ]
    for sender_id, text in script:
        service.create_message(
            session,
            conversation_id=conversation.id,
            sender_id=sender_id,
            blocks=text_blocks(text),
        )

    if key_file is not None:
        view, key = bots.create_api_key(session, bot_id=bot.id, created_by=None,
                                        label="demo bot")
        write_api_key(key_file, key, replace=True)
        logger.info("wrote API key %s of the demo bot to %s", view.id, key_file)

    logger.info(
        "seeded demo users alice, bob and kilobot, instance %s and conversation %s",
        instance.id,
        conversation.id,
    )
    return True


def log_missing_bot_key(session: Session, key_file: Path) -> None:
    """Log how to make the demo bot's key when the bot exists but ``key_file`` does not."""
    profile = service.find_user_by_username(session, DEMO_BOT_USERNAME)
    if profile is None or not profile.is_bot or key_file.exists():
        return
    logger.info(
        "the demo bot %s has no API key file at %s, so the backend will not run it; create one "
        "with 'python -m kilo_web.bots.keys create %s'",
        DEMO_BOT_USERNAME, key_file, DEMO_BOT_USERNAME,
    )


def main() -> int:
    """Seed the database named by the settings; return the process exit status."""
    settings = get_settings()
    logging.basicConfig(level=settings.log_level, format="%(levelname)s %(name)s: %(message)s")
    if not settings.seed_demo:
        logger.info("KILO_SEED_DEMO is off; not seeding demo data")
        return 0

    engine = make_engine(settings.database_url)
    try:
        with Session(engine) as session:
            key_file = None if settings.bot_api_key else settings.bot_api_key_path
            seeded = seed_demo_data(session, key_file=key_file)
            if not seeded and key_file is not None and settings.demo_bot:
                log_missing_bot_key(session, key_file)
    finally:
        engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
