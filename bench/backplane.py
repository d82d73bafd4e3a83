"""Backplane: fan-out through two event-service nodes joined by Redis, against one node.

Three set-ups take turns in one run, each with the same subscriber count
and the same load generators:

- ``one node``: one ``EventServiceServer`` on the ``InMemoryBackplane``, as
  in ``bench.fanout``;
- ``one node, Redis``: the same node on a ``RedisBackplane``. Every event
  makes a round trip through Redis before it is sent, so the difference
  from the first row is the cost of Redis alone;
- ``two nodes, Redis``: two nodes on one Redis backplane, the subscribers
  split evenly between them and the publisher on node A, so node B gets
  every event from Redis only.

Throughput is a burst of events published back to back, divided by the time
until the last subscriber on any node had all of them. Latency is measured
at a light load on probe connections on every node and reported per node.
The CPU of every node, of the load generators and of the Redis server is
recorded. The Redis server is found by the ``process_id`` it reports, so
its CPU is known only when it runs on this machine.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
from typing import Any

import psutil

from bench.fanout import RECEIVER_AGENT, _connect, _split, paced_run, timed_burst, warm_up
from bench.measure import CpuWindow, bound_by, latency_summary_ms
from bench.servers import SERVER_AGENTS
from bench.workers import Worker, stop_all

logger = logging.getLogger(__name__)

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


@dataclasses.dataclass
class BackplanePlan:
    """Settings of one backplane run."""

    subscriber_counts: tuple[int, ...] = (100, 1000)
    size: int = 256
    deliveries_per_burst: int = 200_000
    latency_deliveries_per_second: int = 10_000
    latency_seconds: float = 5.0
    repeats: int = 1
    receiver_processes: int = 4
    """Counting receiver processes in all, split evenly between the set-up's nodes."""
    probes: int = 4
    """Probe connections on each node."""
    redis_url: str = dataclasses.field(
        default_factory=lambda: os.environ.get("KILO_BENCH_REDIS_URL", DEFAULT_REDIS_URL))


SETUPS: tuple[tuple[str, int, bool], ...] = (
    ("one node", 1, False),
    ("one node, Redis", 1, True),
    ("two nodes, Redis", 2, True),
)
"""Name, number of nodes and whether Redis joins them, of each set-up."""


class ExternalProcess:
    """A process the benchmark did not start, measured like a ``Worker`` by ``CpuWindow``."""

    def __init__(self, name: str, pid: int) -> None:
        self.name = name
        self.pid = pid
        self._process = psutil.Process(pid)

    def cpu_seconds(self) -> float:
        times = self._process.cpu_times()
        return times.user + times.system


def redis_process(url: str) -> ExternalProcess | None:
    """Return the local Redis server process behind ``url``, or None when it is not local."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        pid = int(client.info("server")["process_id"])
    finally:
        client.close()
    try:
        return ExternalProcess("redis", pid)
    except psutil.Error:
        logger.warning("Redis reports pid %d, which is not a process of this machine, "
                       "so its CPU is not measured", pid)
        return None


@dataclasses.dataclass
class _Node:
    server: Worker
    counting: list[Worker]
    probe: Worker


@dataclasses.dataclass
class _Setup:
    name: str
    redis: bool
    nodes: list[_Node]

    @property
    def publisher(self) -> Worker:
        return self.nodes[0].server

    @property
    def servers(self) -> list[Worker]:
        return [node.server for node in self.nodes]

    @property
    def receivers(self) -> list[Worker]:
        return [worker for node in self.nodes for worker in (*node.counting, node.probe)]


def _start_setup(plan: BackplanePlan, name: str, node_count: int, redis: bool, secret: str,
                 subscribers: int, prefix: str, workers: list[Worker]) -> _Setup:
    options: dict[str, Any] = {"secret": secret, "compression": False}
    if redis:
        options |= {"redis_url": plan.redis_url, "redis_prefix": prefix}
    processes_per_node = max(1, plan.receiver_processes // node_count)
    counting_per_node = _split(subscribers - plan.probes * node_count, node_count)
    nodes: list[_Node] = []
    for index in range(node_count):
        label = f"{name.replace(' ', '').replace(',', '-')}-{'ab'[index]}"
        server = Worker(SERVER_AGENTS["kilo"], options, name=f"{label}-server")
        workers.append(server)
        spec = {"dialect": "kilo", "host": "127.0.0.1", "port": server.info["port"],
                "secret": secret, "offer_deflate": False}
        counting = [
            Worker(RECEIVER_AGENT, {**spec, "user_prefix": f"count{index}{part}"},
                   name=f"{label}-receiver-{part}")
            for part in range(processes_per_node)
        ]
        probe = Worker(RECEIVER_AGENT, {**spec, "probe": True, "user_prefix": f"probe{index}"},
                       name=f"{label}-probe")
        workers.extend([*counting, probe])
        _connect(counting, _split(counting_per_node[index], processes_per_node))
        _connect([probe], [plan.probes])
        nodes.append(_Node(server, counting, probe))
    return _Setup(name, redis, nodes)


def _cpu_fields(window: CpuWindow, setup: _Setup, redis: ExternalProcess | None,
                delivered: int) -> dict[str, Any]:
    assert window.percents is not None and window.seconds is not None
    node_percents = [window.percents[server.name] for server in setup.servers]
    generator_percents = [window.percents[worker.name] for worker in setup.receivers]
    node_seconds = sum(window.seconds[server.name] for server in setup.servers)
    fields: dict[str, Any] = {
        "node_cpu_percents": node_percents,
        "generator_cpu_percent": sum(generator_percents),
        "machine_cpu_percent": window.machine_percent,
        "other_cpu_percent": window.other_percent,
        "server_cpu_us_per_delivery": 1e6 * node_seconds / max(1, delivered),
        "bound_by": bound_by(max(node_percents), generator_percents, window.machine_percent,
                             window.other_percent),
    }
    if redis is not None and setup.redis:
        fields["redis_cpu_percent"] = window.percents[redis.name]
    return fields


def _measured(setup: _Setup, redis: ExternalProcess | None) -> list[Any]:
    extra = [redis] if redis is not None and setup.redis else []
    return [*setup.servers, *setup.receivers, *extra]


def measure_throughput(plan: BackplanePlan, setup: _Setup, subscribers: int,
                       redis: ExternalProcess | None) -> dict[str, Any]:
    """Publish one burst on node A and measure the rate at which every node delivered it."""
    burst = max(20, plan.deliveries_per_burst // subscribers)
    figures, window = timed_burst(setup.publisher, setup.receivers, _measured(setup, redis),
                                  count=burst, size=plan.size)
    return {
        **figures,
        "expected": burst * subscribers,
        **_cpu_fields(window, setup, redis, figures["delivered"]),
    }


def measure_latency(plan: BackplanePlan, setup: _Setup, subscribers: int,
                    redis: ExternalProcess | None) -> dict[str, Any]:
    """Publish on node A at a light load and summarise the probes' latencies node by node."""
    rate = max(1.0, plan.latency_deliveries_per_second / subscribers)
    figures, results, window = paced_run(setup.publisher, setup.receivers,
                                         _measured(setup, redis), rate=rate,
                                         seconds=plan.latency_seconds, size=plan.size)
    by_worker = dict(zip([worker.name for worker in setup.receivers], results, strict=True))
    return {
        **figures,
        "expected": figures["events"] * subscribers,
        "nodes": [latency_summary_ms(by_worker[node.probe.name]["latencies_ns"])
                  for node in setup.nodes],
        **_cpu_fields(window, setup, redis, figures["delivered"]),
    }


def _unreachable(url: str, error: Exception) -> dict[str, Any]:
    note = (f"Redis at {url} could not be reached ({type(error).__name__}: {error}); "
            "start it or set KILO_BENCH_REDIS_URL")
    logger.warning("backplane section skipped: %s", note)
    return {"measured": False, "note": note}


def run(plan: BackplanePlan, secret: str) -> dict[str, Any]:
    """Measure every set-up at every subscriber count of ``plan``."""
    try:
        redis = redis_process(plan.redis_url)
    except Exception as exc:  # Any failure to reach Redis skips the section.
        return _unreachable(plan.redis_url, exc)
    # A prefix of its own keeps the run's channels apart from anything else on the server.
    prefix = f"kilo-bench-{secrets.token_hex(4)}:"
    rows: list[dict[str, Any]] = []
    for subscribers in plan.subscriber_counts:
        workers: list[Worker] = []
        try:
            # A prefix per set-up, so the nodes of one never get the other's events.
            setups = [
                _start_setup(plan, name, nodes, uses_redis, secret, subscribers,
                             f"{prefix}{index}:", workers)
                for index, (name, nodes, uses_redis) in enumerate(SETUPS)
            ]
            for setup in setups:
                warm_up(setup.publisher, setup.receivers, plan.size)
            bursts: dict[str, list[dict[str, Any]]] = {setup.name: [] for setup in setups}
            for _ in range(plan.repeats):
                for setup in setups:
                    bursts[setup.name].append(measure_throughput(plan, setup, subscribers, redis))
            for setup in setups:
                ranked = sorted(bursts[setup.name], key=lambda b: b["deliveries_per_second"])
                row = {
                    "setup": setup.name,
                    "nodes": len(setup.nodes),
                    "subscribers": subscribers,
                    "size": plan.size,
                    "throughput": {
                        **ranked[len(ranked) // 2],
                        "repeats": len(ranked),
                        "range": [ranked[0]["deliveries_per_second"],
                                  ranked[-1]["deliveries_per_second"]],
                    },
                    "latency": measure_latency(plan, setup, subscribers, redis),
                }
                logger.info(
                    "backplane %s, %d subscribers: %.0f deliveries/s (%s), p99 %s ms",
                    setup.name, subscribers, row["throughput"]["deliveries_per_second"],
                    row["throughput"]["bound_by"],
                    " / ".join(f"{node['p99_ms']:.2f}" for node in row["latency"]["nodes"]),
                )
                rows.append(row)
        finally:
            stop_all(workers)
    return {"measured": True, "redis_url": plan.redis_url, "rows": rows}
