"""Churn: how fast subscriptions come and go, in the SDK and on the server.

- ``refcount``: ``SubscriptionCounts.acquire`` plus ``release`` of one
  context, in this process, with no I/O.
- ``sdk``: ``EventServiceClient.subscribe`` plus ``unsubscribe`` against a
  live kilo_web server in another process. "held" cycles a context that is
  already held once, so only the count changes (1 -> 2 -> 1, no frame);
  "transitions" cycles 0 -> 1 -> 0, so every call sends a frame, and the
  run ends when the server has acknowledged the last subscribe.
- ``server``: raw clients (``ChurnAgent``) keep subscribe and unsubscribe
  frames in flight on contexts of their own and count acknowledgements,
  against kilo_web and against the bare ``websockets`` server.

The kilo_web server runs with its frame limit per connection and its
subscribe limit per user (50 a second each by default) raised far out of
the way, because this measures the server, not the limits.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import Any

from bench.fanout import server_spec
from bench.measure import CpuWindow
from bench.servers import SERVER_AGENTS
from bench.workers import Worker, stop_all

logger = logging.getLogger(__name__)

MAX_IN_FLIGHT = 500
"""Subscribes the SDK churn may send before the server acknowledged them."""

UNLIMITED = {
    "server_options": {
        "max_frames_per_second": 1e9,
        "frame_burst": 10**9,
        "user_subscribe_rate": 1e9,
        "user_subscribe_burst": 10**9,
    },
}
"""Server options that lift the per-connection frame and per-user subscribe limits."""


@dataclasses.dataclass
class ChurnPlan:
    """Settings of one churn run."""

    seconds: float = 3.0
    server_processes: int = 2
    """Client processes for the server measurement."""
    connections_per_process: int = 25
    window: int = 8
    """Frames each connection keeps in flight."""
    servers: tuple[str, ...] = ("kilo", "ws")
    profile_seconds: float = 0.0
    """When above zero, profile the kilo_web server for this long after its measurement."""


def measure_refcount(seconds: float) -> dict[str, Any]:
    """Cycle one context through ``SubscriptionCounts`` for ``seconds``."""
    from kilo_web.event_service.refcount import SubscriptionCounts

    counts = SubscriptionCounts()
    contexts = ["/kiloclaw/s1/c1"]
    cycles = 0
    deadline = time.perf_counter() + seconds
    started = time.perf_counter()
    while time.perf_counter() < deadline:
        for _ in range(1000):
            counts.acquire(contexts)
            counts.release(contexts)
        cycles += 1000
    elapsed = time.perf_counter() - started
    return {"operations_per_second": 2 * cycles / elapsed, "seconds": elapsed}


class SdkChurnAgent:
    """An ``EventServiceClient`` in its own process, cycling one context."""

    def __init__(self, *, port: int, secret: str) -> None:
        self._url = f"ws://127.0.0.1:{port}"
        self._secret = secret
        self._client: Any = None
        self._acknowledged = 0

    async def start(self) -> dict[str, Any]:
        from kilo_web.event_service.client import SUBSCRIBED, EventServiceClient
        from kilo_web.event_service.tokens import mint_token

        async def get_token() -> str:
            return mint_token(self._secret, "sdk-churn", ttl_seconds=7200)

        self._client = EventServiceClient(self._url, get_token, name="bench-sdk")
        self._client.on(SUBSCRIBED, self._on_subscribed)
        await asyncio.wait_for(self._client.connect(), 30)
        return {}

    def _on_subscribed(self, event: Any) -> None:
        self._acknowledged += 1

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()

    async def cmd_run(self, mode: str, seconds: float) -> dict[str, Any]:
        """Cycle subscribe and unsubscribe for ``seconds``; ``mode`` is held or transitions."""
        client = self._client
        context = "/kiloclaw/bench/churn"
        if mode == "held":
            await client.subscribe(["/kiloclaw/bench/held"])
            context = "/kiloclaw/bench/held"

        self._acknowledged = 0
        cycles = 0
        started = time.perf_counter()
        deadline = started + seconds
        while time.perf_counter() < deadline:
            for _ in range(100):
                await client.subscribe([context])
                await client.unsubscribe([context])
            cycles += 100
            if mode == "transitions":
                # Keep at most MAX_IN_FLIGHT subscribes unacknowledged: a client
                # that sends without reading is closed by the server (4008).
                while cycles - self._acknowledged > MAX_IN_FLIGHT:
                    await asyncio.sleep(0.001)
        client_seconds = time.perf_counter() - started

        result: dict[str, Any] = {
            "mode": mode,
            "operations": 2 * cycles,
            "client_operations_per_second": 2 * cycles / client_seconds,
        }
        if mode == "transitions":
            # Every subscribe is acknowledged; wait for the last one.
            wait_deadline = time.perf_counter() + 60
            while self._acknowledged < cycles and time.perf_counter() < wait_deadline:
                await asyncio.sleep(0.01)
            total_seconds = time.perf_counter() - started
            result["acknowledged"] = self._acknowledged
            result["acknowledged_operations_per_second"] = 2 * self._acknowledged / total_seconds
        else:
            await client.unsubscribe(["/kiloclaw/bench/held"])
        return result


def measure_sdk(plan: ChurnPlan, secret: str) -> list[dict[str, Any]]:
    """Run the SDK in both modes against a kilo_web server; report rates and CPU."""
    workers: list[Worker] = []
    rows: list[dict[str, Any]] = []
    try:
        server = Worker(SERVER_AGENTS["kilo"], {**server_spec("kilo", secret), **UNLIMITED},
                        name="kilo-server")
        workers.append(server)
        sdk = Worker("bench.churn:SdkChurnAgent", {"port": server.info["port"], "secret": secret},
                     name="sdk-client")
        workers.append(sdk)
        for mode in ("held", "transitions"):
            with CpuWindow([server, sdk]) as window:
                result = sdk.call("run", mode=mode, seconds=plan.seconds, timeout=plan.seconds + 90)
            assert window.percents is not None
            result["server_cpu_percent"] = window.percents[server.name]
            result["client_cpu_percent"] = window.percents[sdk.name]
            result["other_cpu_percent"] = window.other_percent
            rows.append(result)
    finally:
        stop_all(workers)
    return rows


def measure_server(plan: ChurnPlan, server_name: str, secret: str) -> dict[str, Any]:
    """Measure subscribe and unsubscribe frames a second that one server acknowledges."""
    workers: list[Worker] = []
    try:
        spec = server_spec(server_name, secret)
        if server_name == "kilo":
            spec.update(UNLIMITED)
        server = Worker(SERVER_AGENTS[server_name], spec, name=f"{server_name}-server")
        workers.append(server)
        clients = [
            Worker("bench.receivers:ChurnAgent",
                   {"dialect": server_name, "host": "127.0.0.1", "port": server.info["port"],
                    "secret": secret, "user_prefix": f"churn{index}"},
                   name=f"{server_name}-churn-{index}")
            for index in range(plan.server_processes)
        ]
        workers.extend(clients)
        for client in clients:
            client.call("connect", count=plan.connections_per_process, window=plan.window)
        with CpuWindow([server, *clients]) as window:
            for client in clients:
                client.send("run", seconds=plan.seconds)
            results = [client.result("run", timeout=plan.seconds + 60) for client in clients]
        assert window.percents is not None
        acks = sum(result["acks"] for result in results)
        return {
            "server": server_name,
            "connections": plan.server_processes * plan.connections_per_process,
            "window": plan.window,
            "frames_per_second": acks / plan.seconds,
            "errors": sum(result["errors"] for result in results),
            "server_cpu_percent": window.percents[server.name],
            "generator_cpu_percents": [window.percents[client.name] for client in clients],
            "other_cpu_percent": window.other_percent,
            **_profile(plan, server, clients, server_name),
        }
    finally:
        stop_all(workers)


def _profile(plan: ChurnPlan, server: Worker, clients: list[Worker],
             server_name: str) -> dict[str, Any]:
    """Profile the kilo_web server while the clients churn, when ``plan.profile_seconds`` is set."""
    if plan.profile_seconds <= 0 or server_name != "kilo":
        return {}
    from bench.profile import Recording, summarise

    recording = Recording(server.pid, plan.profile_seconds)
    for client in clients:
        client.send("run", seconds=plan.profile_seconds)
    for client in clients:
        client.result("run", timeout=plan.profile_seconds + 60)
    return {"profile": summarise(recording.wait())}


def run(plan: ChurnPlan, secret: str) -> dict[str, Any]:
    """Run every churn measurement of the plan."""
    refcount = measure_refcount(plan.seconds)
    logger.info("refcount: %.0f operations/s", refcount["operations_per_second"])
    sdk = measure_sdk(plan, secret)
    server = [measure_server(plan, name, secret) for name in plan.servers]
    for row in server:
        logger.info("server churn %s: %.0f frames/s", row["server"], row["frames_per_second"])
    return {"refcount": refcount, "sdk": sdk, "server": server}
