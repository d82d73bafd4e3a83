"""The embedded default as a newcomer meets it: the seeded demo data and the demo bot.

The app runs as ``reflex run`` with the seed applied, so the backend starts
kilobot with the key file the seed wrote. Alice writes in "Welcome" and the
bot's Markdown reply renders, with any HTML in it shown as text.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from .conftest import PROJECT_DIR, wait_for
from .test_chat_e2e import RunningApp, log_in, send

DEMO_PASSWORD = "demo-password"


@pytest.fixture(scope="module")
def demo_app(tmp_path_factory) -> Iterator[RunningApp]:
    root = tmp_path_factory.mktemp("demo-app")
    app = RunningApp(root / "data", root / "reflex.log")
    for command in (["-m", "alembic", "-c", "alembic.ini", "upgrade", "head"],
                    ["-m", "kilo_web.seed"]):
        subprocess.run([sys.executable, *command], cwd=PROJECT_DIR, env=app.environment,
                       check=True, capture_output=True)
    try:
        app.start()
        yield app
    finally:
        app.stop()


def test_demo_bot_answers_with_safe_markdown(demo_app, browser):
    context = browser.new_context()
    page = context.new_page()
    try:
        log_in(page, demo_app.url, "alice", DEMO_PASSWORD)
        page.wait_for_selector("#conversation-title:has-text('Welcome')", timeout=30_000)
        # The bot is present on the instance while it runs.
        page.wait_for_selector(".member[data-name='Kilo Bot'][data-online='true']",
                               timeout=60_000)

        send(page, "help")
        heading = page.locator(".message-markdown h3", has_text="commands")
        heading.first.wait_for(timeout=30_000)
        assert page.locator(".message-markdown code", has_text="roll 2d6").count() >= 1

        hostile = ("echo <img src=x onerror=\"window.pwned=1\"> <b>bold?</b> "
                   "[bad](javascript:window.pwned=2) [site](https://example.org/docs)")
        send(page, hostile)
        link = page.locator(".message-markdown a", has_text="site")
        link.first.wait_for(timeout=30_000)
        reply = page.locator(".message-markdown").filter(
            has=page.locator("a", has_text="site")).first

        # Raw HTML is text, never elements, and scripts in it never ran.
        assert reply.locator("img").count() == 0
        assert reply.locator("b").count() == 0
        assert "<img" in reply.inner_text()
        assert page.evaluate("window.pwned") is None
        # The javascript: link lost its target; the web link opens a new tab, detached.
        bad = reply.locator("a", has_text="bad")
        assert "javascript" not in (bad.get_attribute("href") or "")
        assert link.first.get_attribute("href") == "https://example.org/docs"
        assert link.first.get_attribute("target") == "_blank"
        assert "noopener" in (link.first.get_attribute("rel") or "")

        # A plain-text message is text too, whatever it contains.
        send(page, "<script>window.pwned=3</script><img src=y onerror=\"window.pwned=4\">")
        plain = page.locator(".message-text", has_text="<script>window.pwned=3</script>")
        plain.first.wait_for(timeout=30_000)
        assert plain.first.locator("script, img").count() == 0
        assert page.evaluate("window.pwned") is None
    except Exception:
        print(demo_app.log_tail(80))
        raise
    finally:
        context.close()
