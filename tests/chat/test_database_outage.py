"""The HTTP API while PostgreSQL is unreachable: a clear 503, nothing half-written, then recovery.

The API reaches PostgreSQL through a proxy that the test blocks, as a
network partition or a database restart would.
"""

from __future__ import annotations

import threading
import time
import uuid

import httpx
import pytest
import sqlalchemy as sa
import uvicorn
from sqlalchemy.engine import make_url
from sqlmodel import Session

from kilo_web.chat import service
from kilo_web.chat.api import create_api
from kilo_web.chat.database import upgrade_database
from kilo_web.settings import Settings
from tests.chat.conftest import SECRET, auth_headers, insert_user
from tests.conftest import POSTGRES_ADMIN_URL
from tests.helpers import ProxyThread, free_port


@pytest.fixture
def postgres_database():
    """A fresh, migrated PostgreSQL database; yields (name, direct URL)."""
    name = f"kilo_web_outage_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(make_url(POSTGRES_ADMIN_URL), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = make_url(POSTGRES_ADMIN_URL).set(database=name)
    upgrade_database(url.render_as_string(hide_password=False))
    try:
        yield url
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_api_survives_a_database_outage(postgres_database, tmp_path):
    direct = sa.create_engine(postgres_database)
    with Session(direct) as session:
        alice = insert_user(session, "alice")
        instance = service.create_instance(session, owner_id=alice.id, label="Sandbox")
        conversation = service.create_conversation(
            session, instance_id=instance.id, title="General", creator_id=alice.id)
        headers = auth_headers(session, alice)
        conversation_id = conversation.id

    proxy = ProxyThread(postgres_database.port or 5432)
    proxied = postgres_database.set(host="127.0.0.1", port=proxy.proxy.port)
    settings = Settings(data_dir=tmp_path, jwt_secret=SECRET,
                        database_url=proxied.render_as_string(hide_password=False))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_api(settings), host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        assert thread.is_alive()
        time.sleep(0.01)
    url = f"http://127.0.0.1:{port}/api/conversations/{conversation_id}/messages"

    def count() -> int:
        with direct.connect() as connection:
            return connection.execute(sa.text("SELECT count(*) FROM message")).scalar()

    try:
        assert httpx.post(url, headers=headers, json={"text": "before"}).status_code == 201

        proxy.call(proxy.proxy.block)
        refused = [httpx.post(url, headers=headers, timeout=30,
                              json={"text": f"during {n}", "clientMessageId": f"during-{n}"})
                   for n in range(3)]
        for response in refused:
            assert response.status_code == 503
            assert response.json()["error"]["code"] == "database_unavailable"
            assert response.headers["Retry-After"] == "5"
        assert count() == 1

        proxy.call(proxy.proxy.unblock)
        # Pooled connections cut by the outage are dropped as they fail, so
        # a retry of the same message succeeds within a few attempts.
        statuses = []
        for _ in range(10):
            response = httpx.post(url, headers=headers, timeout=30,
                                  json={"text": "during 0", "clientMessageId": "during-0"})
            statuses.append(response.status_code)
            if response.status_code in (200, 201):
                break
        assert statuses[-1] == 201, statuses
        assert count() == 2
        with direct.connect() as connection:
            seqs = connection.execute(sa.text("SELECT seq FROM message ORDER BY seq")).scalars()
            assert list(seqs) == [1, 2]
            last = connection.execute(sa.text("SELECT last_message_seq FROM conversation")).scalar()
            assert last == 2
    finally:
        server.should_exit = True
        thread.join(10)
        proxy.stop()
        direct.dispose()
