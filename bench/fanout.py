"""Fan-out: one publisher, N subscribers on one context, for every server under test.

For each subscriber count the driver starts every server under test. Each
gets counting receivers, spread over several processes, and one probe
process. The ``probes`` connections connect last, so that every server
sends to them after the rest of the room. Then, for each payload size:

1. warm-up: a few events per server, not measured;
2. throughput: a burst of events published back to back, the servers
   taking turns for ``repeats`` rounds. The rate is the events delivered to
   all subscribers divided by the time from the first publish to the last
   arrival. The median burst is reported;
3. latency: events paced at a light, fixed load that is the same for every
   server; each probe records arrival time minus the publish time carried
   in the event (CLOCK_MONOTONIC in both processes).

The CPU use of every process and of the machine is recorded for each
measured phase, ``bound_by`` names what limited each figure, and the
server's CPU time per delivery gives a figure that does not depend on how
the two cores were shared.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from bench.measure import CpuWindow, bound_by, latency_summary_ms
from bench.servers import SERVER_AGENTS
from bench.workers import Worker, stop_all

logger = logging.getLogger(__name__)

CONTEXT = "/bench/fanout"
RECEIVER_AGENT = "bench.receivers:ReceiverAgent"


@dataclasses.dataclass
class FanoutPlan:
    """Settings of one fan-out run."""

    servers: tuple[str, ...] = ("kilo", "ws", "sio")
    subscriber_counts: tuple[int, ...] = (100, 1000)
    sizes: tuple[int, ...] = (256, 4096)
    deliveries_per_burst: int = 200_000
    """Deliveries (events times subscribers) in one throughput burst."""
    burst_scale: dict[str, float] = dataclasses.field(default_factory=lambda: {"sio": 0.4})
    """Smaller bursts for servers that are several times slower, so a run stays short."""
    latency_deliveries_per_second: int = 10_000
    """Paced load of the latency phase: at N subscribers, this divided by N events a second."""
    latency_seconds: float = 5.0
    repeats: int = 1
    """Throughput bursts per server and case; the median is reported."""
    receiver_processes: int = 3
    probes: int = 5
    offer_deflate: bool = False
    """Whether clients offer permessage-deflate, as browsers and the SDK do."""


def server_spec(server: str, secret: str, *, compression: bool = True) -> dict[str, Any]:
    """Constructor arguments of a server agent."""
    if server == "kilo":
        return {"secret": secret, "compression": compression}
    return {"compression": compression}


def _split(total: int, parts: int) -> list[int]:
    base, extra = divmod(total, parts)
    return [base + (1 if index < extra else 0) for index in range(parts)]


def _connect(receivers: list[Worker], counts: list[int]) -> None:
    for worker, count in zip(receivers, counts, strict=True):
        worker.send("connect", count=count, context=CONTEXT)
    for worker, count in zip(receivers, counts, strict=True):
        result = worker.result("connect", timeout=300)
        if result["failed"]:
            raise RuntimeError(f"{worker.name}: {result['failed']} of {count} connections "
                               "failed; see the worker's log above for the first error")


def _collect(receivers: list[Worker], timeout: float) -> list[dict[str, Any]]:
    for worker in receivers:
        worker.send("collect", timeout=timeout)
    return [worker.result("collect", timeout=timeout + 30) for worker in receivers]


def _reset(receivers: list[Worker], events_per_connection: int) -> None:
    for worker in receivers:
        worker.call("reset", events_per_connection=events_per_connection)


def _cpu_fields(window: CpuWindow, server: Worker, generators: list[Worker],
                delivered: int) -> dict[str, Any]:
    assert window.percents is not None and window.seconds is not None
    server_percent = window.percents[server.name]
    generator_percents = [window.percents[worker.name] for worker in generators]
    return {
        "server_cpu_percent": server_percent,
        "generator_cpu_percents": generator_percents,
        "machine_cpu_percent": window.machine_percent,
        "other_cpu_percent": window.other_percent,
        "server_cpu_us_per_delivery": 1e6 * window.seconds[server.name] / max(1, delivered),
        "bound_by": bound_by(server_percent, generator_percents, window.machine_percent,
                             window.other_percent),
    }


@dataclasses.dataclass
class _Group:
    """A server under test with its connected receivers."""

    name: str
    server: Worker
    receivers: list[Worker]


def _start_group(plan: FanoutPlan, server_name: str, secret: str, subscribers: int,
                 workers: list[Worker]) -> _Group:
    server = Worker(SERVER_AGENTS[server_name], server_spec(server_name, secret),
                    name=f"{server_name}-server")
    workers.append(server)
    spec = {"dialect": server_name, "host": "127.0.0.1", "port": server.info["port"],
            "secret": secret, "offer_deflate": plan.offer_deflate}
    counting = [
        Worker(RECEIVER_AGENT, {**spec, "user_prefix": f"count{index}"},
               name=f"{server_name}-receiver-{index}")
        for index in range(plan.receiver_processes)
    ]
    workers.extend(counting)
    probe = Worker(RECEIVER_AGENT, {**spec, "probe": True, "user_prefix": "probe"},
                   name=f"{server_name}-probe")
    workers.append(probe)
    _connect(counting, _split(subscribers - plan.probes, plan.receiver_processes))
    _connect([probe], [plan.probes])
    return _Group(server_name, server, [*counting, probe])


def warm_up(publisher: Worker, receivers: list[Worker], size: int) -> None:
    """Publish a few events that are not measured and wait until every receiver has them."""
    events = 20
    _reset(receivers, events)
    publisher.call("publish_burst", context=CONTEXT, count=events, size=size)
    _collect(receivers, timeout=60)


def timed_burst(publisher: Worker, receivers: list[Worker], measured: list[Any], *,
                count: int, size: int) -> tuple[dict[str, Any], CpuWindow]:
    """Publish ``count`` events back to back and time their delivery to every receiver.

    Returns the figures and the CPU window of ``measured`` over the burst.
    """
    _reset(receivers, count)
    with CpuWindow(measured) as window:
        published = publisher.call("publish_burst", context=CONTEXT, count=count, size=size,
                                   timeout=600)
        results = _collect(receivers, timeout=600)
    delivered = sum(result["count"] for result in results)
    last_ns = max(result["last_ns"] for result in results)
    elapsed = (last_ns - published["start_ns"]) / 1e9
    figures = {
        "events": count,
        "delivered": delivered,
        "seconds": elapsed,
        "deliveries_per_second": delivered / elapsed if elapsed > 0 else 0.0,
    }
    return figures, window


def paced_run(publisher: Worker, receivers: list[Worker], measured: list[Any], *,
              rate: float, seconds: float,
              size: int) -> tuple[dict[str, Any], list[dict[str, Any]], CpuWindow]:
    """Publish ``rate`` events a second for ``seconds`` and collect what each receiver saw.

    Returns the figures, each receiver's result (its latencies included) and
    the CPU window of ``measured``.
    """
    _reset(receivers, max(1, int(rate * seconds)))
    with CpuWindow(measured) as window:
        paced = publisher.call("publish_paced", context=CONTEXT, rate=rate, seconds=seconds,
                               size=size, timeout=seconds + 120)
        results = _collect(receivers, timeout=60)
    figures = {
        "events_per_second": rate,
        "events": paced["published"],
        "delivered": sum(result["count"] for result in results),
        "publisher_max_lag_ms": paced["max_lag_seconds"] * 1e3,
    }
    return figures, results, window


def measure_throughput(plan: FanoutPlan, group: _Group, subscribers: int,
                       size: int) -> dict[str, Any]:
    """Publish one burst and measure the rate at which all subscribers received it."""
    server, receivers = group.server, group.receivers
    scale = plan.burst_scale.get(group.name, 1.0)
    burst = max(20, int(plan.deliveries_per_burst * scale) // subscribers)
    figures, window = timed_burst(server, receivers, [server, *receivers], count=burst,
                                  size=size)
    return {
        **figures,
        "expected": burst * subscribers,
        **_cpu_fields(window, server, receivers, figures["delivered"]),
    }


def measure_latency(plan: FanoutPlan, group: _Group, subscribers: int, size: int) -> dict[str, Any]:
    """Publish at the plan's light, fixed load and summarise the probes' latencies."""
    server, receivers = group.server, group.receivers
    rate = max(1.0, plan.latency_deliveries_per_second / subscribers)
    figures, results, window = paced_run(server, receivers, [server, *receivers], rate=rate,
                                         seconds=plan.latency_seconds, size=size)
    latencies = [value for result in results for value in result["latencies_ns"]]
    return {
        **figures,
        "expected": figures["events"] * subscribers,
        **latency_summary_ms(latencies),
        **_cpu_fields(window, server, receivers, figures["delivered"]),
    }


def run(plan: FanoutPlan, secret: str) -> list[dict[str, Any]]:
    """Measure every server of the plan at every subscriber count and payload size.

    All servers of one subscriber count are connected at once, and their
    throughput bursts take turns (kilo, ws, sio, kilo, ...), so a drift of
    the machine during the run affects every server alike. The throughput
    reported is the median of ``repeats`` bursts.
    """
    rows: list[dict[str, Any]] = []
    for subscribers in plan.subscriber_counts:
        workers: list[Worker] = []
        try:
            groups = [_start_group(plan, name, secret, subscribers, workers)
                      for name in plan.servers]
            for size in plan.sizes:
                bursts: dict[str, list[dict[str, Any]]] = {group.name: [] for group in groups}
                for group in groups:
                    warm_up(group.server, group.receivers, size)
                for _ in range(plan.repeats):
                    for group in groups:
                        bursts[group.name].append(
                            measure_throughput(plan, group, subscribers, size))
                for group in groups:
                    ranked = sorted(bursts[group.name], key=lambda b: b["deliveries_per_second"])
                    throughput = {
                        **ranked[len(ranked) // 2],
                        "repeats": len(ranked),
                        "range": [ranked[0]["deliveries_per_second"],
                                  ranked[-1]["deliveries_per_second"]],
                    }
                    row = {
                        "server": group.name,
                        "deflate": plan.offer_deflate,
                        "subscribers": subscribers,
                        "size": size,
                        "throughput": throughput,
                        "latency": measure_latency(plan, group, subscribers, size),
                    }
                    logger.info(
                        "fan-out %s, %d subscribers, %d B: %.0f deliveries/s (%s), p99 %.2f ms",
                        group.name, subscribers, size, throughput["deliveries_per_second"],
                        throughput["bound_by"], row["latency"]["p99_ms"],
                    )
                    rows.append(row)
        finally:
            stop_all(workers)
    return rows


def profile_server(
    plan: FanoutPlan, server_name: str, secret: str, *, subscribers: int, size: int,
    seconds: float,
) -> dict[str, Any]:
    """Profile one server with py-spy while it publishes back to back to ``subscribers``."""
    from bench.profile import Recording, summarise

    workers: list[Worker] = []
    try:
        server = Worker(SERVER_AGENTS[server_name], server_spec(server_name, secret),
                        name=f"{server_name}-server")
        workers.append(server)
        spec = {"dialect": server_name, "host": "127.0.0.1", "port": server.info["port"],
                "secret": secret, "offer_deflate": plan.offer_deflate}
        receivers = [
            Worker(RECEIVER_AGENT, {**spec, "user_prefix": f"count{index}"},
                   name=f"{server_name}-receiver-{index}")
            for index in range(plan.receiver_processes)
        ]
        workers.extend(receivers)
        _connect(receivers, _split(subscribers, plan.receiver_processes))
        recording = Recording(server.pid, seconds)
        published = server.call("publish_for", context=CONTEXT, seconds=seconds, size=size,
                                timeout=seconds + 120)
        summary = summarise(recording.wait())
    finally:
        stop_all(workers)
    return {
        "server": server_name,
        "subscribers": subscribers,
        "size": size,
        "deflate": plan.offer_deflate,
        "seconds": seconds,
        "events": published["published"],
        **summary,
    }
