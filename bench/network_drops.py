"""Network drops: a proxy cuts every client connection every few seconds while events flow.

    .venv/bin/python -m bench.network_drops --duration 60 --cut-every 2

SDK clients reach an event service through a loopback TCP proxy that drops
every connection at once on a timer. A publisher sends numbered events to a
few contexts at a steady rate. Every client must end with every event of
every context exactly once and in order: the clients resume with ``since``
after each drop, and the server replays what they missed. The run prints the
delivery rate (events received once, in order, over events expected) and
the number of drops and reconnects. ``tests/event_service/test_network_drops.py``
runs a short version of it.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import time

from kilo_web.event_service import EventServiceClient, EventServiceServer, mint_token
from kilo_web.event_service.client import RECOVERY_FAILED
from kilo_web.event_service.protocol import Event
from tests.helpers import CuttingProxy, RuleAuthorizer

logger = logging.getLogger(__name__)

SECRET = "network-drops-" + "d" * 40


@dataclasses.dataclass
class DropReport:
    """The events the clients received, compared with those published."""

    clients: int
    contexts: int
    published: int
    """Events published per context."""
    cuts: int
    reconnects: int
    recovery_failures: int
    duplicates: int
    missing: int
    out_of_order: int
    delivered_once_in_order: int
    expected: int

    @property
    def delivery_rate(self) -> float:
        return self.delivered_once_in_order / self.expected if self.expected else 1.0


class _Recorder:
    """One client's events per context, and its recovery failures."""

    def __init__(self) -> None:
        self.events: dict[str, list[int]] = {}
        self.recovery_failures = 0

    def on_event(self, event: Event) -> None:
        self.events.setdefault(event.context, []).append(event.data["n"])

    def on_recovery_failed(self, event: Event) -> None:
        self.recovery_failures += 1


async def run_drops(
    *,
    duration: float,
    cut_every: float,
    clients: int = 5,
    contexts: int = 2,
    rate: float = 50.0,
    settle_timeout: float = 20.0,
) -> DropReport:
    """Run the scenario and return its report."""
    server = EventServiceServer(secret=SECRET, authorizer=RuleAuthorizer(), history_size=50_000,
                                max_frames_per_second=1000)
    await server.start()
    proxy = CuttingProxy(server.port)
    await proxy.start()
    names = [f"/kiloclaw/drops/c{i}" for i in range(contexts)]
    recorders = [_Recorder() for _ in range(clients)]
    sdk_clients: list[EventServiceClient] = []
    try:
        for index, recorder in enumerate(recorders):

            async def token(user: str = f"user{index}") -> str:
                return mint_token(SECRET, user)

            client = EventServiceClient(proxy.url, token, reconnect_min_seconds=0.05,
                                        reconnect_max_seconds=0.5, name=f"drops-{index}")
            client.on("tick", recorder.on_event)
            client.on(RECOVERY_FAILED, recorder.on_recovery_failed)
            await asyncio.wait_for(client.connect(), 10)
            await client.subscribe(names)
            sdk_clients.append(client)
        deadline = time.monotonic() + 10
        while not all(server.subscriptions_of(f"user{i}") for i in range(clients)):
            if time.monotonic() > deadline:
                raise TimeoutError("the clients did not subscribe within 10 s")
            await asyncio.sleep(0.01)

        published = 0
        stop = asyncio.Event()

        async def publish() -> None:
            nonlocal published
            while not stop.is_set():
                for name in names:
                    await server.publish(name, "tick", {"n": published})
                published += 1
                await asyncio.sleep(1 / rate)

        async def cut() -> None:
            while not stop.is_set():
                try:
                    await asyncio.wait_for(stop.wait(), cut_every)
                except TimeoutError:
                    proxy.cut()

        tasks = [asyncio.create_task(publish()), asyncio.create_task(cut())]
        await asyncio.sleep(duration)
        stop.set()
        await asyncio.gather(*tasks)

        # Let every client reconnect and catch up, however the last cut fell.
        deadline = time.monotonic() + settle_timeout
        while any(len(r.events.get(n, ())) < published for r in recorders for n in names):
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)

        duplicates = missing = out_of_order = delivered = 0
        for recorder in recorders:
            for name in names:
                received = recorder.events.get(name, [])
                duplicates += len(received) - len(set(received))
                missing += len(set(range(published)) - set(received))
                out_of_order += sum(1 for a, b in zip(received, received[1:]) if b <= a)
                if received == list(range(published)):
                    delivered += published
                else:
                    seen: set[int] = set()
                    for position, n in enumerate(received):
                        if n == position and n not in seen:
                            delivered += 1
                        seen.add(n)
        return DropReport(
            clients=clients,
            contexts=contexts,
            published=published,
            cuts=proxy.cuts,
            reconnects=sum(c.connect_count - 1 for c in sdk_clients),
            recovery_failures=sum(r.recovery_failures for r in recorders),
            duplicates=duplicates,
            missing=missing,
            out_of_order=out_of_order,
            delivered_once_in_order=delivered,
            expected=published * clients * contexts,
        )
    finally:
        for client in sdk_clients:
            await client.close()
        await proxy.close()
        await server.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.network_drops",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of traffic")
    parser.add_argument("--cut-every", type=float, default=2.0, help="seconds between drops")
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--contexts", type=int, default=3)
    parser.add_argument("--rate", type=float, default=50.0, help="events a second per context")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    report = asyncio.run(run_drops(duration=args.duration, cut_every=args.cut_every,
                                   clients=args.clients, contexts=args.contexts, rate=args.rate))
    print(json.dumps({**dataclasses.asdict(report),
                      "delivery_rate": round(report.delivery_rate, 6)}, indent=2))


if __name__ == "__main__":
    main()
