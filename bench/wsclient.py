"""A minimal WebSocket client on asyncio.Protocol, cheap enough to be a load generator.

The benchmarks keep thousands of connections open on a 2-core machine, and
every microsecond a client spends per message is taken from the server
under test. A full client library (``websockets``, ``python-socketio``)
runs a task and a queue per connection. This client does the RFC 6455
opening handshake and parses server frames in one loop per received chunk.
It replies to pings and close frames and can negotiate permessage-deflate
(RFC 7692). It does not validate UTF-8 and it does not
send fragmented messages; it is a measuring tool, not a general client.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import os
import time
import zlib
from collections.abc import Callable

logger = logging.getLogger(__name__)

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_DEFLATE_TAIL = b"\x00\x00\xff\xff"

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

MessageHandler = Callable[["RawWebSocket", bytes, int], None]
"""Called with the connection, a whole message and ``time.monotonic_ns()`` of its arrival."""


class HandshakeError(ConnectionError):
    """Raised when the server does not switch protocols (a 401, say)."""


def _mask(payload: bytes, key: bytes) -> bytes:
    if not payload:
        return payload
    repeated = (key * (len(payload) // 4 + 1))[: len(payload)]
    masked = int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")
    return masked.to_bytes(len(payload), "big")


def encode_client_frame(opcode: int, payload: bytes, *, rsv1: bool = False) -> bytes:
    """Build one masked, final client frame."""
    first = 0x80 | (0x40 if rsv1 else 0) | opcode
    length = len(payload)
    if length < 126:
        header = bytes((first, 0x80 | length))
    elif length < 65536:
        header = bytes((first, 0x80 | 126)) + length.to_bytes(2, "big")
    else:
        header = bytes((first, 0x80 | 127)) + length.to_bytes(8, "big")
    key = os.urandom(4)
    return header + key + _mask(payload, key)


class RawWebSocket(asyncio.Protocol):
    """One client connection; ``on_message`` gets each complete text or binary message."""

    def __init__(
        self,
        host: str,
        port: int,
        path: str,
        on_message: MessageHandler,
        *,
        headers: dict[str, str] | None = None,
        offer_deflate: bool = False,
    ) -> None:
        self._host = host
        self._port = port
        self._path = path
        self._headers = headers or {}
        self._offer_deflate = offer_deflate
        self.on_message = on_message
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self.deflate = False
        self._inflater: zlib._Decompress | None = None
        self._deflater: zlib._Compress | None = None
        self._inflate_reset = False
        self._key = base64.b64encode(os.urandom(16))
        self._open = False
        self._handshake = bytearray()
        self._buffer = b""
        self._fragments: list[bytes] = []
        self._fragment_compressed = False

    # asyncio.Protocol --------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        lines = [
            f"GET {self._path} HTTP/1.1",
            f"Host: {self._host}:{self._port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {self._key.decode()}",
            "Sec-WebSocket-Version: 13",
        ]
        if self._offer_deflate:
            lines.append("Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits")
        lines += [f"{name}: {value}" for name, value in self._headers.items()]
        transport.write(("\r\n".join(lines) + "\r\n\r\n").encode())

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(exc or ConnectionResetError("closed during the handshake"))
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        now = time.monotonic_ns()
        if not self._open:
            self._handshake += data
            end = self._handshake.find(b"\r\n\r\n")
            if end < 0:
                return
            data = bytes(self._handshake[end + 4 :])
            self._finish_handshake(bytes(self._handshake[:end]))
            if not self._open or not data:
                return
        buffer = self._buffer + data if self._buffer else data
        position = self._parse(buffer, now)
        self._buffer = buffer[position:]

    # Handshake ---------------------------------------------------------------

    def _finish_handshake(self, head: bytes) -> None:
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        headers: dict[str, str] = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if not status_line.startswith("HTTP/1.1 101"):
            self.opened.set_exception(HandshakeError(f"handshake rejected: {status_line}"))
            assert self.transport is not None
            self.transport.close()
            return
        expected = base64.b64encode(hashlib.sha1(self._key + _GUID).digest()).decode()
        if headers.get("sec-websocket-accept") != expected:
            self.opened.set_exception(HandshakeError("invalid Sec-WebSocket-Accept"))
            assert self.transport is not None
            self.transport.close()
            return
        extensions = headers.get("sec-websocket-extensions", "")
        if "permessage-deflate" in extensions:
            self.deflate = True
            self._inflate_reset = "server_no_context_takeover" in extensions
            # 15 bits decode any server window; 9 bits is the smallest window
            # zlib writes, and a sender may always use less than agreed.
            self._inflater = zlib.decompressobj(wbits=-15)
            self._deflater = zlib.compressobj(wbits=-9)
        self._open = True
        self.opened.set_result(None)

    # Frames ------------------------------------------------------------------

    def _parse(self, buffer: bytes, now: int) -> int:
        """Handle every whole frame in ``buffer``; return where the rest starts."""
        position = 0
        size = len(buffer)
        while size - position >= 2:
            first = buffer[position]
            length = buffer[position + 1] & 0x7F
            start = position + 2
            if length == 126:
                if size - position < 4:
                    break
                length = int.from_bytes(buffer[start : start + 2], "big")
                start += 2
            elif length == 127:
                if size - position < 10:
                    break
                length = int.from_bytes(buffer[start : start + 8], "big")
                start += 8
            end = start + length
            if end > size:
                break
            payload = buffer[start:end]
            position = end
            opcode = first & 0x0F
            if opcode >= OP_CLOSE:
                self._control(opcode, payload)
                continue
            if not first & 0x80:
                if opcode != OP_CONTINUATION:
                    self._fragment_compressed = bool(first & 0x40)
                self._fragments.append(payload)
                continue
            compressed = bool(first & 0x40)
            if opcode == OP_CONTINUATION:
                self._fragments.append(payload)
                payload = b"".join(self._fragments)
                self._fragments.clear()
                compressed = self._fragment_compressed
            if compressed:
                payload = self._inflate(payload)
            self.on_message(self, payload, now)
        return position

    def _inflate(self, payload: bytes) -> bytes:
        assert self._inflater is not None
        data = self._inflater.decompress(payload + _DEFLATE_TAIL)
        if self._inflate_reset:
            self._inflater = zlib.decompressobj(wbits=-15)
        return data

    def _control(self, opcode: int, payload: bytes) -> None:
        assert self.transport is not None
        if opcode == OP_PING:
            self.transport.write(encode_client_frame(OP_PONG, payload))
        elif opcode == OP_CLOSE:
            if not self.transport.is_closing():
                self.transport.write(encode_client_frame(OP_CLOSE, payload[:2]))
                self.transport.close()

    # Sending -----------------------------------------------------------------

    def send_text(self, text: str) -> None:
        """Send one text message, compressed when permessage-deflate was agreed."""
        assert self.transport is not None
        data = text.encode()
        if self._deflater is not None:
            compressed = self._deflater.compress(data) + self._deflater.flush(zlib.Z_SYNC_FLUSH)
            self.transport.write(encode_client_frame(OP_TEXT, compressed[:-4], rsv1=True))
        else:
            self.transport.write(encode_client_frame(OP_TEXT, data))

    def close(self) -> None:
        """Send a close frame (1000) and close the TCP connection."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(encode_client_frame(OP_CLOSE, (1000).to_bytes(2, "big")))
            self.transport.close()


async def open_websocket(
    host: str,
    port: int,
    path: str,
    on_message: MessageHandler,
    *,
    headers: dict[str, str] | None = None,
    offer_deflate: bool = False,
    timeout: float = 30.0,
) -> RawWebSocket:
    """Connect and finish the opening handshake; raise HandshakeError or OSError."""
    loop = asyncio.get_running_loop()
    _, protocol = await asyncio.wait_for(
        loop.create_connection(
            lambda: RawWebSocket(
                host, port, path, on_message, headers=headers, offer_deflate=offer_deflate
            ),
            host,
            port,
        ),
        timeout,
    )
    await asyncio.wait_for(asyncio.shield(protocol.opened), timeout)
    return protocol
