"""Backplane: two event-service nodes joined through Redis against one node.

Not measured yet. The measurement belongs here. It is the fan-out of
``bench.fanout`` with the subscribers split over two ``EventServiceServer``
processes that share a Redis backplane (Redis at 127.0.0.1:6379) and the
publisher on one of them. In the same run it is compared with one node on
the ``InMemoryBackplane``. It reports deliveries per second, the
publish-to-receive latency on each node, and the CPU of Redis.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)

NOT_MEASURED = (
    "two nodes with a Redis backplane against one node: not measured yet; "
    "bench/backplane.py is where the measurement goes"
)


def run() -> dict[str, Any]:
    """Return the placeholder result of the two-node measurement."""
    # TODO: start two kilo server agents on a Redis backplane and reuse
    # bench.fanout.measure_throughput and measure_latency with receivers split between their ports.
    logger.info(NOT_MEASURED)
    return {"measured": False, "note": NOT_MEASURED}
