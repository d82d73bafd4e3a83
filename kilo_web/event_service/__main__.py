"""Run the event service as its own process.

    python -m kilo_web.event_service --host 127.0.0.1 --port 8765

With KILO_REDIS_URL set, the node receives what the app and other nodes
publish through Redis, and shares presence with the other nodes. Flags
override the KILO_EVENT_SERVICE_* settings; the secret comes from
``--secret-file``, ``--secret`` or KILO_JWT_SECRET, in that order (a
secret on the command line shows in the process list).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import signal
import sys
from pathlib import Path

from kilo_web.event_service.backplane import Backplane, InMemoryBackplane
from kilo_web.event_service.redis_backplane import RedisBackplane
from kilo_web.event_service.embedded import server_from_settings
from kilo_web.settings import Settings, SettingsError, get_settings

logger = logging.getLogger("kilo_web.event_service")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line; defaults come from the settings."""
    parser = argparse.ArgumentParser(
        prog="python -m kilo_web.event_service",
        description="Run the kilo_web event service (WebSocket, wire protocol v1).",
    )
    parser.add_argument("--host", help="interface to listen on (default: KILO_EVENT_SERVICE_HOST)")
    parser.add_argument("--port", type=int, help="TCP port (default: KILO_EVENT_SERVICE_PORT)")
    parser.add_argument(
        "--secret",
        help="HS256 token secret; visible in the process list, so prefer --secret-file",
    )
    parser.add_argument(
        "--secret-file",
        type=Path,
        help="file holding the HS256 token secret (default: KILO_JWT_SECRET)",
    )
    parser.add_argument(
        "--node-id",
        help="this node's name in Redis, stable across restarts (default: KILO_NODE_ID, "
        "else HOST:PORT)",
    )
    parser.add_argument("--log-level", help="logging level (default: KILO_LOG_LEVEL)")
    return parser.parse_args(argv)


async def serve(settings: Settings, host: str, port: int, node_id: str) -> None:
    """Serve until SIGINT or SIGTERM."""
    backplane: Backplane
    if settings.redis_url:
        backplane = RedisBackplane(settings.redis_url, prefix=settings.redis_prefix)
    else:
        # Nothing in another process can publish to this node without Redis.
        logger.warning("KILO_REDIS_URL is not set: this node receives events from no other "
                       "process; set it to run beside the app")
        backplane = InMemoryBackplane()
    server = server_from_settings(settings, backplane=backplane, host=host, port=port,
                                  node_id=node_id)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        async with server:
            logger.info("node %s ready", node_id)
            await stop.wait()
    finally:
        if isinstance(backplane, RedisBackplane):
            await backplane.close()


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit status."""
    args = parse_args(argv)
    try:
        settings = get_settings()
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=(args.log_level or settings.log_level).upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    secret = args.secret or settings.jwt_secret
    if args.secret_file is not None:
        try:
            secret = args.secret_file.read_text().strip()
        except OSError as exc:
            print(f"error: cannot read --secret-file {args.secret_file}: {exc}", file=sys.stderr)
            return 2
    settings = dataclasses.replace(settings, jwt_secret=secret)
    host = args.host or settings.event_service_host
    port = settings.event_service_port if args.port is None else args.port
    node_id = args.node_id or os.environ.get("KILO_NODE_ID", "").strip() or f"{host}:{port}"
    asyncio.run(serve(settings, host, port, node_id))
    return 0


if __name__ == "__main__":
    sys.exit(main())
