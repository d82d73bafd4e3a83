"""Credentials never reach a log handler, from any logger."""

from __future__ import annotations

import logging

from kilo_web.event_service import mint_token
from kilo_web.event_service.redact import REDACTED, redact

TOKEN = mint_token("redact-secret-" + "r" * 40, "7")
KEY = "kilo_bot_0123456789abcdef_" + "A" * 43


def test_redact_replaces_each_kind_of_credential():
    assert redact(f"> Authorization: Bearer {TOKEN}") == f"> Authorization: {REDACTED}"
    assert redact(f"token={TOKEN}&x=1") == f"token={REDACTED}&x=1"
    assert redact(f"key {KEY} refused") == f"key {REDACTED} refused"
    assert redact("nothing secret here") == "nothing secret here"


def test_websockets_debug_headers_are_redacted(caplog):
    caplog.set_level(logging.DEBUG)
    logging.getLogger("websockets.server").debug("< Authorization: Bearer %s", TOKEN)
    logging.getLogger("kilo_web.chat.api").info("rejected key %s", KEY)

    assert TOKEN not in caplog.text
    assert KEY not in caplog.text
    assert caplog.text.count(REDACTED) == 2
