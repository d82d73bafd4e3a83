"""Read state, badge accounting and the cleanup timer on PostgreSQL.

Each test migrates a fresh database on the server named by
``KILO_TEST_POSTGRES_URL`` (see ``postgres_url``); they are skipped only
when nothing listens there.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlmodel import Session

from kilo_web.chat import read_state, service
from kilo_web.chat.database import make_engine, upgrade_database
from kilo_web.chat.models import utc_now
from kilo_web.notifications import accounting
from kilo_web.notifications.accounting import DispatchStep
from kilo_web.notifications.cleanup import CleanupTimer, next_cleanup_at
from kilo_web.notifications.devices import register_expo_device
from kilo_web.notifications.dispatcher import PushDispatcher, load_message_context
from kilo_web.notifications.models import DeviceKind, PushDelivery
from tests.notifications.conftest import (
    TTL,
    ManualClock,
    RecordingPublisher,
    badge_of,
    build_world,
    expo_token,
    post,
    wait_until,
)
from tests.notifications.test_badge_property import operations, run_scenario
from tests.notifications.test_idempotency import SimulatedCrash, crash_at
from tests.notifications.test_migration import TABLES, schema_differences


@pytest.fixture
def pg_engine(postgres_url: str) -> Iterator[sa.Engine]:
    upgrade_database(postgres_url)
    engine = make_engine(postgres_url)
    yield engine
    engine.dispose()


@pytest.fixture
def pg_factory(pg_engine):
    return lambda: Session(pg_engine)


@pytest.fixture
def pg_world(pg_factory):
    with pg_factory() as session:
        return build_world(session)


def test_postgres_schema_matches_models(pg_engine):
    with pg_engine.connect() as connection:
        differences = schema_differences(connection)
        active_default = connection.execute(sa.text(
            "SELECT column_default FROM information_schema.columns "
            "WHERE table_name = 'push_device' AND column_name = 'active'"
        )).scalar()

    assert differences == []
    assert TABLES <= set(sa.inspect(pg_engine).get_table_names())
    assert active_default == "true"


async def test_postgres_reading_one_conversation_keeps_others(pg_factory, pg_world):
    world = pg_world
    with pg_factory() as session:
        for _ in range(2):
            await post(session, world, world.general, world.alice)
        for _ in range(3):
            await post(session, world, world.random, world.alice)

        result = await read_state.mark_read(session, world.general, world.bob, dispatch_window=TTL)

        assert result.summary.counts == {world.general: 0, world.random: 3}
        assert result.summary.total == 3


@pytest.mark.parametrize("step", list(DispatchStep), ids=[s.value for s in DispatchStep])
async def test_postgres_crash_then_retry_counts_once(step, pg_factory, pg_world, expo_server, expo_transport):
    world = pg_world

    def dispatcher(checkpoint=None):
        return PushDispatcher(
            session_factory=pg_factory, transports={DeviceKind.EXPO: expo_transport}, window=TTL,
            publisher=RecordingPublisher(), max_attempts=1, checkpoint=checkpoint,
        )

    with pg_factory() as session:
        register_expo_device(session, user_id=world.bob, token=expo_token("bob"))
        message_id = await post(session, world, world.general, world.alice)

    with pytest.raises(SimulatedCrash):
        await dispatcher(crash_at(step, world.bob)).send_push_for_conversation(message_id)
    report = await dispatcher().send_push_for_conversation(message_id)

    assert report.delivered == [world.bob]
    assert badge_of(pg_factory, world.bob) == 1
    assert {m["badge"] for m in expo_server.accepted_messages()} == {1}


async def test_postgres_concurrent_claims_count_once(pg_engine, pg_factory, pg_world):
    world = pg_world
    with pg_factory() as session:
        message_id = await post(session, world, world.general, world.alice)
    now = utc_now()

    def claim(_):
        with Session(pg_engine) as session:
            facts = load_message_context(session, message_id).facts
            return accounting.claim_delivery(session, facts, world.bob, now=now, window=TTL)

    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        claims = list(pool.map(claim, range(8)))

    assert sum(c.created for c in claims) == 1
    assert {c.badge for c in claims} == {1}
    assert badge_of(pg_factory, world.bob) == 1


async def test_postgres_claims_race_reads(pg_engine, pg_factory, pg_world):
    # Claims of new messages and reads of the same user run at once in threads.
    world = pg_world
    with pg_factory() as session:
        message_ids = [await post(session, world, world.random, world.alice) for _ in range(12)]
    now = utc_now()

    def claim(message_id):
        with Session(pg_engine) as session:
            facts = load_message_context(session, message_id).facts
            accounting.claim_delivery(session, facts, world.bob, now=now, window=TTL)

    def read(seq):
        with Session(pg_engine) as session:
            read_state.mark_read_in_transaction(session, world.random, world.bob, seq,
                                                now=now, dispatch_window=TTL)
            session.commit()

    with concurrent.futures.ThreadPoolExecutor(max_workers=6) as pool:
        futures = [pool.submit(claim, m) for m in message_ids]
        futures += [pool.submit(read, seq) for seq in (3, 6, 9)]
        for future in futures:
            future.result()

    with pg_factory() as session:
        assert accounting.device_badge(session, world.bob) == read_state.unread_total(session, world.bob)
        assert read_state.unread_total(session, world.bob) == 3


async def test_postgres_claims_race_removal(pg_engine, pg_factory, pg_world):
    # Claims of bob's pushes run at once with his removal from one conversation.
    world = pg_world
    with pg_factory() as session:
        general = [await post(session, world, world.general, world.alice) for _ in range(10)]
        random = [await post(session, world, world.random, world.alice) for _ in range(3)]
    now = utc_now()

    def claim(message_id):
        with Session(pg_engine) as session:
            facts = load_message_context(session, message_id).facts
            accounting.claim_delivery(session, facts, world.bob, now=now, window=TTL)

    def remove(_):
        with Session(pg_engine) as session:
            return asyncio.run(service.remove_conversation_member(
                session, conversation_id=world.general, user_id=world.bob,
                removed_by=world.bob, publisher=RecordingPublisher(), dispatch_window=TTL))

    with concurrent.futures.ThreadPoolExecutor(max_workers=6) as pool:
        futures = [pool.submit(claim, m) for m in general[:5]]
        futures.append(pool.submit(remove, None))
        futures += [pool.submit(claim, m) for m in general[5:] + random]
        results = [future.result() for future in futures]

    assert True in results
    with pg_factory() as session:
        assert read_state.unread_total(session, world.bob) == 3
        assert accounting.device_badge(session, world.bob) == 3


async def test_postgres_timer_survives_restart(pg_factory, pg_world):
    world = pg_world
    clock = ManualClock(datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=12))
    with pg_factory() as session:
        message_id = await post(session, world, world.general, world.alice)
        facts = load_message_context(session, message_id).facts
        accounting.claim_delivery(session, facts, world.bob, now=clock.now(), window=TTL)
        armed = next_cleanup_at(session)
    assert armed == clock.now() + TTL

    clock.advance((TTL + datetime.timedelta(seconds=1)).total_seconds())
    timer = CleanupTimer(pg_factory, clock=clock, poll_seconds=10 * TTL.total_seconds())
    timer.start()
    try:
        await wait_until(lambda: timer.runs == 1, message="cleanup after restart")
    finally:
        await timer.stop()

    with pg_factory() as session:
        assert session.execute(sa.select(sa.func.count()).select_from(PushDelivery)).scalar() == 0
        assert next_cleanup_at(session) is None


@pytest.fixture(scope="module")
def shared_postgres_engine(request) -> Iterator[sa.Engine]:
    # One database for every Hypothesis example; each example uses its own users and ids.
    from tests.notifications.conftest import POSTGRES_ADMIN_URL
    import socket
    import uuid

    from sqlalchemy.engine import make_url

    admin_url = make_url(POSTGRES_ADMIN_URL)
    try:
        with socket.create_connection((admin_url.host or "127.0.0.1", admin_url.port or 5432), timeout=3):
            pass
    except OSError as error:
        pytest.skip(f"PostgreSQL is not reachable: {error}")
    database = f"kilo_web_property_{uuid.uuid4().hex[:12]}"
    admin_engine = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin_engine.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{database}"'))
    url = admin_url.set(database=database).render_as_string(hide_password=False)
    upgrade_database(url)
    engine = make_engine(url)
    try:
        yield engine
    finally:
        engine.dispose()
        with admin_engine.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
        admin_engine.dispose()


@pytest.fixture(scope="module")
def module_expo_server():
    from tests.notifications.push_servers import ExpoServer

    server = ExpoServer()
    server.start()
    yield server
    server.stop()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(operations, min_size=1, max_size=25))
def test_postgres_badge_equals_unread_property(ops, shared_postgres_engine, module_expo_server):
    run_scenario(shared_postgres_engine, module_expo_server, ops)
