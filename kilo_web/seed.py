"""Seed demo data into an empty database.

Run ``python -m kilo_web.seed`` after the migrations. It creates the users
``alice`` and ``bob`` (password ``demo-password``), the bot ``kilobot``, the
instance "Demo sandbox" with all three as members, and the conversation
"Welcome" with a few messages. It does nothing when any account already
exists, or when ``KILO_SEED_DEMO=0``.
"""

from __future__ import annotations

import logging
import sys

from reflex_local_auth.user import LocalUser
from sqlmodel import Session, select

from kilo_web.accounts.users import create_bot_user, create_local_user
from kilo_web.chat import service
from kilo_web.chat.content import text_blocks
from kilo_web.chat.database import make_engine
from kilo_web.settings import get_settings

logger = logging.getLogger(__name__)

DEMO_PASSWORD = "demo-password"
"""Password of the demo users; documented in the README."""

DEMO_INSTANCE_LABEL = "Demo sandbox"
DEMO_CONVERSATION_TITLE = "Welcome"


def database_is_empty(session: Session) -> bool:
    """Tell whether the database has no accounts yet."""
    return session.exec(select(LocalUser.id).limit(1)).first() is None


def seed_demo_data(session: Session) -> bool:
    """Create the demo users, instance, conversation and messages; return True if it did.

    Returns False without writing anything when an account already exists.

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
    bot = create_bot_user(session, username="kilobot", display_name="Kilo Bot")

    instance = service.create_instance(session, owner_id=alice.id, label=DEMO_INSTANCE_LABEL)
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

    logger.info(
        "seeded demo users alice, bob and kilobot, instance %s and conversation %s",
        instance.id,
        conversation.id,
    )
    return True


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
            seed_demo_data(session)
    finally:
        engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
