"""Load-generating clients: subscribers that count events, probes that time them.

One ``ReceiverAgent`` runs in each receiver process and keeps many raw
WebSocket connections open (``bench.wsclient``). Every server under test is
spoken to in its own dialect but by the same client code:

- ``kilo``: kilo_web's event service (wire protocol v1, a JWT per connection);
- ``ws``: the bare ``websockets`` server of ``bench.servers``, which takes
  the same subscribe frames and sends the same event frames;
- ``sio``: a python-socketio server over the engine.io WebSocket transport.

Each published event carries ``"t"``, the publisher's ``time.monotonic_ns()``.
On Linux that clock is CLOCK_MONOTONIC, one clock for every process of the
machine, so a probe in another process can subtract it from its own reading
taken when the frame arrived. Counting connections never parse JSON.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from bench.wsclient import HandshakeError, RawWebSocket, open_websocket

logger = logging.getLogger(__name__)

DIALECTS = ("kilo", "ws", "sio")

_EVENT_PREFIX = {
    "kilo": b'{"type":"event"',
    "ws": b'{"type":"event"',
    "sio": b'42["bench"',
}
# kilo_web writes the fields of acknowledgements and errors in no fixed
# order, so these are searched for anywhere in the frame.
_SUBSCRIBED = b'"type":"context.subscribed"'
_UNSUBSCRIBED = b'"type":"context.unsubscribed"'
_ERROR = b'"type":"error"'
_TIME_KEY = b'"t":'


class Tally:
    """Counts of one receiver process, shared by all its connections."""

    __slots__ = ("count", "first_ns", "last_ns", "latencies", "target", "done")

    def __init__(self) -> None:
        self.count = 0
        self.first_ns = 0
        self.last_ns = 0
        self.latencies: list[int] = []
        self.target = 0
        self.done = asyncio.Event()


class Subscriber:
    """One connection: counts events into the tally; a probe also records latency."""

    __slots__ = ("dialect", "ws", "tally", "probe", "prefix", "control")

    def __init__(self, dialect: str, tally: Tally, *, probe: bool) -> None:
        self.dialect = dialect
        self.tally = tally
        self.probe = probe
        self.prefix = _EVENT_PREFIX[dialect]
        self.ws: RawWebSocket | None = None
        self.control: asyncio.Queue[bytes] = asyncio.Queue()

    def on_message(self, ws: RawWebSocket, payload: bytes, now: int) -> None:
        if payload.startswith(self.prefix):
            tally = self.tally
            tally.count += 1
            if not tally.first_ns:
                tally.first_ns = now
            tally.last_ns = now
            if self.probe:
                start = payload.find(_TIME_KEY) + len(_TIME_KEY)
                end = payload.find(b",", start)
                tally.latencies.append(now - int(payload[start:end]))
            if tally.count == tally.target:
                tally.done.set()
            return
        if self.dialect == "sio" and payload == b"2":
            ws.send_text("3")  # The server sent an engine.io ping, so reply with a pong.
            return
        self.control.put_nowait(payload)

    async def expect(self, marker: bytes, *, prefix: bool = True, timeout: float = 30.0) -> bytes:
        """Wait for the next control message; raise unless it starts with (or contains) ``marker``."""
        message = await asyncio.wait_for(self.control.get(), timeout)
        found = message.startswith(marker) if prefix else marker in message
        if not found:
            raise ConnectionError(f"expected a message with {marker!r}, got {message[:200]!r}; "
                                  "the server speaks another dialect or rejected the frame")
        return message


def subscribe_frame(context: str) -> str:
    return json.dumps({"type": "context.subscribe", "contexts": [context]}, separators=(",", ":"))


def unsubscribe_frame(context: str) -> str:
    return json.dumps(
        {"type": "context.unsubscribe", "contexts": [context]}, separators=(",", ":")
    )


async def open_subscriber(
    dialect: str,
    host: str,
    port: int,
    context: str,
    tally: Tally,
    *,
    token: str | None = None,
    probe: bool = False,
    offer_deflate: bool = False,
) -> Subscriber:
    """Connect, subscribe to ``context`` and wait for the acknowledgement."""
    subscriber = Subscriber(dialect, tally, probe=probe)
    headers = {"Authorization": f"Bearer {token}"} if token else None
    path = "/socket.io/?EIO=4&transport=websocket" if dialect == "sio" else "/"
    ws = await open_websocket(
        host, port, path, subscriber.on_message, headers=headers, offer_deflate=offer_deflate
    )
    subscriber.ws = ws
    if dialect == "sio":
        await subscriber.expect(b"0{")  # engine.io open packet
        ws.send_text("40")  # socket.io connect to the default namespace
        await subscriber.expect(b"40")
        ws.send_text("420" + json.dumps(["subscribe", context]))  # event with ack id 0
        await subscriber.expect(b"430")
    else:
        ws.send_text(subscribe_frame(context))
        await subscriber.expect(_SUBSCRIBED, prefix=False)
    return subscriber


class ReceiverAgent:
    """Holds subscribers in one process; counts what they receive."""

    def __init__(
        self,
        *,
        dialect: str,
        host: str,
        port: int,
        probe: bool = False,
        offer_deflate: bool = False,
        secret: str = "",
        user_prefix: str = "user",
        concurrency: int = 25,
    ) -> None:
        if dialect not in DIALECTS:
            raise ValueError(f"unknown dialect {dialect!r}; use one of {DIALECTS}")
        self._dialect = dialect
        self._host = host
        self._port = port
        self._probe = probe
        self._offer_deflate = offer_deflate
        self._secret = secret
        self._user_prefix = user_prefix
        self._concurrency = concurrency
        self._subscribers: list[Subscriber] = []
        self._tally = Tally()

    async def start(self) -> dict[str, Any]:
        return {}

    async def close(self) -> None:
        await self.cmd_disconnect()

    def _token(self, index: int) -> str | None:
        if self._dialect != "kilo":
            return None
        from kilo_web.event_service.tokens import mint_token

        return mint_token(self._secret, f"{self._user_prefix}-{index}", ttl_seconds=7200)

    async def cmd_connect(self, count: int, context: str) -> dict[str, Any]:
        """Open ``count`` more subscribers; ``context`` may contain ``{i}``, the connection index."""
        semaphore = asyncio.Semaphore(self._concurrency)
        failures: list[str] = []
        first = len(self._subscribers)
        started = time.monotonic()

        async def one(index: int) -> None:
            async with semaphore:
                for attempt in range(3):
                    try:
                        subscriber = await open_subscriber(
                            self._dialect, self._host, self._port,
                            context.format(i=index), self._tally,
                            token=self._token(index), probe=self._probe,
                            offer_deflate=self._offer_deflate,
                        )
                    except (OSError, HandshakeError, ConnectionError, TimeoutError) as exc:
                        if attempt == 2:
                            failures.append(f"{type(exc).__name__}: {exc}")
                        else:
                            await asyncio.sleep(0.2 * (attempt + 1))
                        continue
                    self._subscribers.append(subscriber)
                    return

        await asyncio.gather(*(one(first + i) for i in range(count)))
        if failures:
            logger.warning("%d of %d connections failed; first: %s",
                           len(failures), count, failures[0])
        return {
            "connected": len(self._subscribers),
            "failed": len(failures),
            "seconds": time.monotonic() - started,
        }

    async def cmd_status(self) -> dict[str, Any]:
        """Count open connections and those that agreed on permessage-deflate."""
        return {
            "connected": len(self._subscribers),
            "deflate": sum(1 for s in self._subscribers if s.ws is not None and s.ws.deflate),
        }

    async def cmd_reset(self, events_per_connection: int = 0) -> dict[str, Any]:
        """Zero the tally; ``collect`` then waits for this many events on every connection."""
        self._tally = Tally()
        self._tally.target = events_per_connection * len(self._subscribers)
        for subscriber in self._subscribers:
            subscriber.tally = self._tally
        return {}

    async def cmd_collect(self, timeout: float = 60.0, idle_timeout: float = 5.0) -> dict[str, Any]:
        """Wait until the target is reached, or no event came for ``idle_timeout`` seconds."""
        tally = self._tally
        deadline = time.monotonic() + timeout
        last_count, last_change = tally.count, time.monotonic()
        while tally.target and not tally.done.is_set():
            now = time.monotonic()
            if now >= deadline or now - last_change >= idle_timeout:
                break
            try:
                await asyncio.wait_for(tally.done.wait(), 0.1)
            except TimeoutError:
                pass
            if tally.count != last_count:
                last_count, last_change = tally.count, time.monotonic()
        return {
            "count": tally.count,
            "target": tally.target,
            "first_ns": tally.first_ns,
            "last_ns": tally.last_ns,
            "latencies_ns": tally.latencies,
        }

    async def cmd_disconnect(self) -> dict[str, Any]:
        """Close every connection."""
        subscribers, self._subscribers = self._subscribers, []
        for subscriber in subscribers:
            if subscriber.ws is not None:
                subscriber.ws.close()
        waiters = [s.ws.closed for s in subscribers if s.ws is not None]
        if waiters:
            await asyncio.wait(waiters, timeout=10)
        return {"closed": len(subscribers)}


class ChurnAgent:
    """Connections that subscribe and unsubscribe as fast as the server acknowledges.

    Each connection owns one context and keeps ``window`` frames in flight:
    subscribe, unsubscribe, subscribe, ... Each acknowledgement sends the
    next frame, so the rate is what the server sustains, not what the
    client offers.
    """

    def __init__(
        self, *, dialect: str, host: str, port: int, secret: str = "", user_prefix: str = "churn",
    ) -> None:
        if dialect not in ("kilo", "ws"):
            raise ValueError(f"churn supports the kilo and ws dialects, not {dialect!r}")
        self._dialect = dialect
        self._host = host
        self._port = port
        self._secret = secret
        self._user_prefix = user_prefix
        self._connections: list[_ChurnConnection] = []

    async def start(self) -> dict[str, Any]:
        return {}

    async def close(self) -> None:
        for connection in self._connections:
            connection.ws.close()

    async def cmd_connect(self, count: int, window: int) -> dict[str, Any]:
        from kilo_web.event_service.tokens import mint_token

        for index in range(count):
            user = f"{self._user_prefix}-{index}"
            token = mint_token(self._secret, user, ttl_seconds=7200) if self._dialect == "kilo" else None
            connection = _ChurnConnection(f"/churn/{self._user_prefix}/{index}", window)
            headers = {"Authorization": f"Bearer {token}"} if token else None
            connection.ws = await open_websocket(
                self._host, self._port, "/", connection.on_message, headers=headers
            )
            self._connections.append(connection)
        return {"connected": len(self._connections)}

    async def cmd_run(self, seconds: float) -> dict[str, Any]:
        """Churn for ``seconds``; return acknowledgements and errors counted."""
        for connection in self._connections:
            connection.begin()
        await asyncio.sleep(seconds)
        acks = sum(c.acks for c in self._connections)
        errors = sum(c.errors for c in self._connections)
        for connection in self._connections:
            connection.running = False
        # Let frames in flight come back so the next run starts clean.
        await asyncio.sleep(0.2)
        return {"acks": acks, "errors": errors}


class _ChurnConnection:
    def __init__(self, context: str, window: int) -> None:
        self.context = context
        self.window = window
        self.ws: RawWebSocket = None  # type: ignore[assignment]
        self.acks = 0
        self.errors = 0
        self.running = False
        self._subscribed = False
        self._frames = (subscribe_frame(context), unsubscribe_frame(context))

    def begin(self) -> None:
        self.acks = self.errors = 0
        self.running = True
        for _ in range(self.window):
            self._send_next()

    def _send_next(self) -> None:
        # Alternate subscribe and unsubscribe; both are idempotent on the
        # server, so frames in flight never make an invalid sequence.
        self.ws.send_text(self._frames[1 if self._subscribed else 0])
        self._subscribed = not self._subscribed

    def on_message(self, ws: RawWebSocket, payload: bytes, now: int) -> None:
        if _SUBSCRIBED in payload or _UNSUBSCRIBED in payload:
            self.acks += 1
        elif _ERROR in payload:
            self.errors += 1
        else:
            return
        if self.running:
            self._send_next()
