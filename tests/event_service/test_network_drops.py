"""Clients behind a proxy that drops every connection every 2 seconds lose no event.

A short run of ``bench/network_drops.py``; docs/reliability.md has the
figures of the minute-long run.
"""

from __future__ import annotations

from bench.network_drops import run_drops


async def test_drops_every_two_seconds_lose_nothing():
    report = await run_drops(duration=9, cut_every=2, clients=4, contexts=2, rate=40)

    assert report.cuts >= 4
    assert report.reconnects >= report.cuts * report.clients
    assert report.published > 300
    assert report.recovery_failures == 0
    assert report.duplicates == 0
    assert report.missing == 0
    assert report.out_of_order == 0
    assert report.delivery_rate == 1.0
