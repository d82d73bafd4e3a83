"""``python -m kilo_web.event_service`` as its own process."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time

from sqlmodel import Session
from websockets.asyncio.client import connect

from kilo_web.chat.database import make_engine
from kilo_web.event_service import mint_token
from kilo_web.settings import PROJECT_DIR
from tests.helpers import free_port

SECRET = "standalone-secret-" + "s" * 40


def wait_for_port(port: int, process: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"the event service did not listen on {port} within {timeout} s")


def test_module_serves_and_stops_on_sigterm(tmp_path, database_url):
    from tests.chat.conftest import insert_user

    engine = make_engine(database_url)
    with Session(engine) as session:
        user = insert_user(session, "standalone")
        session.commit()
        user_id = str(user.id)
    engine.dispose()

    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET + "\n")
    port = free_port()
    environment = {**os.environ, "KILO_DATA_DIR": str(tmp_path), "KILO_DATABASE_URL": database_url}
    environment.pop("KILO_JWT_SECRET", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "kilo_web.event_service", "--host", "127.0.0.1",
         "--port", str(port), "--secret-file", str(secret_file)],
        cwd=PROJECT_DIR, env=environment, stderr=subprocess.PIPE,
    )
    try:
        wait_for_port(port, process)

        async def subscribe() -> dict:
            token = mint_token(SECRET, user_id)
            async with connect(f"ws://127.0.0.1:{port}",
                               additional_headers={"Authorization": f"Bearer {token}"}) as ws:
                await ws.send(json.dumps({"type": "context.subscribe",
                                          "contexts": ["/presence/platform"]}))
                return json.loads(await asyncio.wait_for(ws.recv(), 5))

        assert asyncio.run(subscribe())["type"] == "context.subscribed"
    finally:
        process.send_signal(signal.SIGTERM)
        exit_code = process.wait(timeout=15)
    log = process.stderr.read().decode()
    assert exit_code == 0, log
    assert "event service listening on ws://127.0.0.1:" in log
    assert "event service stopped" in log
    assert SECRET not in log
