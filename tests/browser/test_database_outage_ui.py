"""The web UI while PostgreSQL is unreachable: the send fails with a clear message, then a retry works.

The app runs as ``reflex run`` on a PostgreSQL database reached through a
proxy that the test blocks and unblocks.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from tests.conftest import POSTGRES_ADMIN_URL
from tests.helpers import ProxyThread

from .conftest import wait_for
from .test_chat_e2e import (
    RunningApp,
    create_conversation,
    create_instance,
    log_in,
    message_texts,
    send,
    sign_up,
)


@pytest.fixture(scope="module")
def outage_app(tmp_path_factory) -> Iterator[tuple[RunningApp, ProxyThread]]:
    name = f"kilo_web_ui_outage_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(make_url(POSTGRES_ADMIN_URL), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    direct = make_url(POSTGRES_ADMIN_URL).set(database=name)
    proxy = ProxyThread(direct.port or 5432)
    root = tmp_path_factory.mktemp("outage-app")
    app = RunningApp(root / "data", root / "reflex.log")
    app.environment["KILO_DATABASE_URL"] = direct.set(
        host="127.0.0.1", port=proxy.proxy.port).render_as_string(hide_password=False)
    app.environment["KILO_DEMO_BOT"] = "0"
    try:
        app.start()
        yield app, proxy
    finally:
        app.stop()
        proxy.stop()
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_send_during_outage_shows_error_and_keeps_text(outage_app, browser):
    app, proxy = outage_app
    context = browser.new_context()
    page = context.new_page()
    try:
        sign_up(page, app.url, "dora", "correct horse battery")
        log_in(page, app.url, "dora", "correct horse battery")
        create_instance(page, "Outage sandbox")
        create_conversation(page, "Outage")
        send(page, "before the outage")
        page.wait_for_selector(".message-text:has-text('before the outage')")

        proxy.call(proxy.proxy.block)
        send(page, "during the outage")
        page.wait_for_selector("text=the database is unavailable", timeout=30_000)
        # The message stays on the page, marked as not sent, with its text.
        failed = page.locator(".message[data-status='failed']", has_text="during the outage")
        failed.wait_for()

        proxy.call(proxy.proxy.unblock)
        # The user presses Retry; the first tries after the outage may meet
        # pooled connections that died with it.
        sent_row = page.locator(".message[data-status='sent']", has_text="during the outage")

        def sent() -> bool:
            if sent_row.count():
                return True
            if failed.count():
                failed.locator(".retry-send").click()
            return False

        wait_for(sent, timeout=30, interval=1.0, message=lambda: "the message to send")
        assert message_texts(page).count("during the outage") == 1
    except Exception:
        print(app.log_tail(80))
        raise
    finally:
        context.close()
