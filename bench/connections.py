"""Connections: resident memory of a server per idle, subscribed connection.

For each server and permessage-deflate setting, the driver starts the
server and opens and closes a few connections, so that lazy imports and
first allocations are behind it. It then reads the server's RSS and opens
idle connections in steps up to each level. Every connection subscribes to a
context of its own, as each user subscribes to ``/users/{id}``, so the figure
includes the server's per-context state. The clients always offer
permessage-deflate, as browsers and the SDK do; "deflate off" means the
server declines it (``compression=None``).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

from bench.fanout import RECEIVER_AGENT, server_spec
from bench.servers import SERVER_AGENTS
from bench.workers import Worker, stop_all

logger = logging.getLogger(__name__)

SETTLE_SECONDS = 1.0


@dataclasses.dataclass
class ConnectionsPlan:
    """Settings of one connections run."""

    levels: tuple[int, ...] = (1000, 5000, 10000)
    variants: tuple[tuple[str, bool], ...] = (
        ("kilo", True), ("kilo", False), ("ws", True), ("ws", False),
    )
    """(server, server compression) pairs."""
    client_processes: int = 4


def _open(clients: list[Worker], total: int, *, context_prefix: str) -> float:
    """Open ``total`` more connections spread over ``clients``; return the seconds taken."""
    base, extra = divmod(total, len(clients))
    started = time.monotonic()
    for index, worker in enumerate(clients):
        count = base + (1 if index < extra else 0)
        worker.send("connect", count=count, context=f"{context_prefix}/c{index}/{{i}}")
    for worker in clients:
        result = worker.result("connect", timeout=600)
        if result["failed"]:
            raise RuntimeError(f"{worker.name}: {result['failed']} connections failed; "
                               "see the worker's log above for the first error")
    return time.monotonic() - started


def run_variant(plan: ConnectionsPlan, server_name: str, compression: bool,
                secret: str) -> list[dict[str, Any]]:
    """Measure one server at one compression setting, at every level of the plan."""
    rows: list[dict[str, Any]] = []
    workers: list[Worker] = []
    try:
        server = Worker(SERVER_AGENTS[server_name],
                        server_spec(server_name, secret, compression=compression),
                        name=f"{server_name}-server")
        workers.append(server)
        spec = {"dialect": server_name, "host": "127.0.0.1", "port": server.info["port"],
                "secret": secret, "offer_deflate": True, "concurrency": 20}
        clients = [
            Worker(RECEIVER_AGENT, {**spec, "user_prefix": f"idle{index}"},
                   name=f"{server_name}-clients-{index}")
            for index in range(plan.client_processes)
        ]
        workers.extend(clients)

        _open(clients, 4 * len(clients), context_prefix="/bench/warm")
        for worker in clients:
            worker.call("disconnect")
        time.sleep(SETTLE_SECONDS)
        server.call("gc")
        baseline = server.rss_bytes()

        opened = 0
        for level in plan.levels:
            seconds = _open(clients, level - opened, context_prefix=f"/bench/idle/l{level}")
            opened = level
            time.sleep(SETTLE_SECONDS)
            server.call("gc")
            rss = server.rss_bytes()
            negotiated = sum(worker.call("status")["deflate"]
                             for worker in clients)
            row = {
                "server": server_name,
                "compression": compression,
                "connections": level,
                "deflate_negotiated": negotiated,
                "baseline_rss_mib": baseline / 2**20,
                "rss_mib": rss / 2**20,
                "kib_per_connection": (rss - baseline) / level / 1024,
                "connect_seconds": seconds,
            }
            logger.info("connections %s deflate=%s %d: %.1f KiB each",
                        server_name, compression, level, row["kib_per_connection"])
            rows.append(row)
    finally:
        stop_all(workers)
    return rows


def run(plan: ConnectionsPlan, secret: str) -> list[dict[str, Any]]:
    """Measure every variant of the plan."""
    rows: list[dict[str, Any]] = []
    for server_name, compression in plan.variants:
        rows.extend(run_variant(plan, server_name, compression, secret))
    return rows
