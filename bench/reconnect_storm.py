"""Reconnect storm: SIGKILL the event service under 1,000 SDK clients and start it again.

    .venv/bin/python -m bench.reconnect_storm --clients 1000

The event service runs as its own process (``python -m kilo_web.event_service``)
on a SQLite database with one user. The clients, all in this process, each
hold two contexts. The run kills the service with SIGKILL and starts it
again on the same port. It reports how the clients came back: the spread of
their reconnect times after the restart (their backoff has full jitter) and
how many subscribe acknowledgements each got (one per context means each
context was resubscribed once). It also reports the new service's CPU time
and peak resident memory while it took them back.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from sqlmodel import Session

from kilo_web.chat.database import make_engine, upgrade_database
from kilo_web.event_service import EventServiceClient, mint_token
from kilo_web.event_service.client import SUBSCRIBED
from kilo_web.settings import PROJECT_DIR
from tests.helpers import free_port

SECRET = "reconnect-storm-" + "r" * 40


def _start(port: int, environment: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "kilo_web.event_service", "--port", str(port)],
            cwd=PROJECT_DIR, env=environment, stdout=output, stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return process
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"the event service did not listen on {port}")


async def storm(clients: int, backoff_max: float) -> dict[str, object]:
    """Run the scenario and return its figures."""
    folder = Path(tempfile.mkdtemp(prefix="kilo-storm-"))
    database_url = f"sqlite:///{folder / 'kilo_web.db'}"
    upgrade_database(database_url)
    from tests.chat.conftest import insert_user

    engine = make_engine(database_url)
    with Session(engine) as session:
        user_id = str(insert_user(session, "storm").id)
    engine.dispose()
    port = free_port()
    environment = {**os.environ, "KILO_DATA_DIR": str(folder),
                   "KILO_DATABASE_URL": database_url, "KILO_JWT_SECRET": SECRET,
                   "KILO_MAX_FRAMES_PER_SECOND": "100"}
    environment.pop("KILO_REDIS_URL", None)
    log = folder / "event-service.log"
    process = _start(port, environment, log)
    contexts = [f"/users/{user_id}", "/presence/platform"]
    token = mint_token(SECRET, user_id, ttl_seconds=3600)

    async def get_token() -> str:
        return token

    acks: list[int] = [0] * clients
    reconnected_at: list[float | None] = [None] * clients
    sdk: list[EventServiceClient] = []
    for index in range(clients):
        client = EventServiceClient(f"ws://127.0.0.1:{port}", get_token,
                                    reconnect_min_seconds=0.1,
                                    reconnect_max_seconds=backoff_max,
                                    name=f"storm-{index}")

        def on_ack(event, index=index) -> None:
            acks[index] += 1

        def on_state(state: str, index=index) -> None:
            if state == "connected" and restarted_at is not None:
                reconnected_at[index] = time.monotonic()

        client.on(SUBSCRIBED, on_ack)
        client.on_state_change(on_state)
        sdk.append(client)
    restarted_at: float | None = None
    try:
        await asyncio.gather(*(asyncio.wait_for(c.connect(), 60) for c in sdk))
        await asyncio.gather(*(c.subscribe(contexts) for c in sdk))
        while sum(acks) < clients * len(contexts):
            await asyncio.sleep(0.05)
        acks[:] = [0] * clients

        process.send_signal(signal.SIGKILL)
        process.wait()
        while any(c.connected for c in sdk):
            await asyncio.sleep(0.05)
        # Let the clients back off for a while, as they would during a real outage.
        await asyncio.sleep(1.0)
        process = _start(port, environment, log)
        restarted_at = time.monotonic()
        watched = psutil.Process(process.pid)
        peak_rss = 0
        deadline = time.monotonic() + 120
        while (any(t is None for t in reconnected_at) or sum(acks) < clients * len(contexts)) \
                and time.monotonic() < deadline:
            peak_rss = max(peak_rss, watched.memory_info().rss)
            await asyncio.sleep(0.05)
        cpu = watched.cpu_times()
        delays = sorted(t - restarted_at for t in reconnected_at if t is not None)
        return {
            "clients": clients,
            "contexts_per_client": len(contexts),
            "backoff_max_seconds": backoff_max,
            "reconnected": len(delays),
            "reconnect_after_restart_seconds": {
                "min": round(delays[0], 3),
                "p50": round(statistics.median(delays), 3),
                "p90": round(delays[int(len(delays) * 0.9) - 1], 3),
                "max": round(delays[-1], 3),
            },
            "acks_per_client": sorted(set(acks)),
            "resubscribed_each_context_once": all(a == len(contexts) for a in acks),
            "service_cpu_seconds": round(cpu.user + cpu.system, 2),
            "service_peak_rss_mib": round(peak_rss / 2**20, 1),
        }
    finally:
        await asyncio.gather(*(c.close() for c in sdk))
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=20)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.reconnect_storm",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--backoff-max", type=float, default=5.0,
                        help="the clients' reconnect_max_seconds")
    args = parser.parse_args()
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
    print(json.dumps(asyncio.run(storm(args.clients, args.backoff_max)), indent=2))


if __name__ == "__main__":
    main()
