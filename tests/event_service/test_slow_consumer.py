"""A client that stops reading is closed with 4008; the others get every event."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket

import websockets

from kilo_web.event_service import EventServiceClient, EventServiceServer, mint_token
from tests.event_service.conftest import SECRET, Inbox, TokenSource, eventually
from tests.helpers import RuleAuthorizer

CONTEXT = "/kiloclaw/s1/c1"
LIMIT = 256 * 1024
# Random, so that permessage-deflate cannot shrink it.
PAYLOAD = base64.b64encode(os.urandom(3072)).decode()


async def test_slow_reader_is_closed_and_others_keep_up():
    server = EventServiceServer(secret=SECRET, authorizer=RuleAuthorizer(),
                                max_buffered_bytes=LIMIT, close_timeout=1.0,
                                max_frames_per_second=1000)
    await server.start()
    healthy = EventServiceClient(server.url, TokenSource("healthy"), name="healthy")
    inbox = Inbox()
    healthy.on("message.created", inbox)
    # A small receive buffer, so the slow client's kernel stops taking data early.
    raw = socket.create_connection(("127.0.0.1", server.port))
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow = await websockets.connect(
        server.url, sock=raw, max_queue=1,
        additional_headers={"Authorization": f"Bearer {mint_token(SECRET, 'slow')}"},
    )
    try:
        await asyncio.wait_for(healthy.connect(), 5)
        await healthy.subscribe([CONTEXT])
        await slow.send(json.dumps({"type": "context.subscribe", "contexts": [CONTEXT]}))
        await eventually(lambda: server.subscriptions_of("slow") and
                         server.subscriptions_of("healthy"), message="both subscriptions")

        # Events of 4 KiB until the slow client is found out (the kernel's buffers
        # take a few MiB first), then 100 more. The publisher stays at most 48
        # events (192 KiB) ahead of the healthy client, as a reader that keeps up
        # would be. The slow one falls behind without bound.
        total, window, extra = 0, 32, None
        while extra is None or total < extra:
            await server.publish(CONTEXT, "message.created", {"n": total, "text": PAYLOAD})
            total += 1
            if extra is None and any(s.slow for s in server._sessions.values()):
                extra = total + 100
            assert total < 20_000, "the server never found the slow client out"
            if total >= window and total % 16 == 0:
                await inbox.wait_for_count(total - window)
        # Nothing was added for the slow client once it was found out.
        for session in server._sessions.values():
            if session.slow and session.connection.transport is not None:
                assert session.connection.transport.get_write_buffer_size() <= LIMIT + 8192
        await inbox.wait_for_count(total, timeout=30)
        assert [event.data["n"] for event in inbox.events] == list(range(total))
        await eventually(lambda: server.connection_count("slow") == 0, timeout=10,
                         message="the slow client to be closed")
        assert server.connection_count("healthy") == 1
    finally:
        await healthy.close()
        # The slow client reads nothing, so it would wait out a closing handshake.
        slow.transport.abort()
        await server.close()


async def test_close_code_reaches_a_client_that_reads_again():
    server = EventServiceServer(secret=SECRET, authorizer=RuleAuthorizer(),
                                max_buffered_bytes=LIMIT, close_timeout=30.0)
    await server.start()
    # A normal receive buffer this time, so that reading again drains quickly.
    slow = await websockets.connect(
        server.url, max_queue=1, ping_interval=None,
        additional_headers={"Authorization": f"Bearer {mint_token(SECRET, 'slow')}"},
    )
    try:
        await slow.send(json.dumps({"type": "context.subscribe", "contexts": [CONTEXT]}))
        await eventually(lambda: server.subscriptions_of("slow"), message="the subscription")
        n = 0
        while not any(s.slow for s in server._sessions.values()):
            await server.publish(CONTEXT, "message.created", {"n": n, "text": PAYLOAD})
            n += 1
            assert n < 10_000, "the server never found the client too slow"
        # Reading again drains the buffer, and the close frame arrives after it.
        try:
            while True:
                await asyncio.wait_for(slow.recv(), timeout=10)
        except websockets.ConnectionClosed as closed:
            assert closed.rcvd is not None
            assert closed.rcvd.code == 4008
    finally:
        await slow.close()
        await server.close()
