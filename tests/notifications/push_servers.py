"""Loopback HTTP servers that follow the Expo push API and the Web Push protocol.

They run the standard library's ``ThreadingHTTPServer`` on 127.0.0.1 in a
thread. Each checks requests the way the real service does (Expo: batch
size, message shape, token format; Web Push: VAPID JWT signature and
audience, aes128gcm payload that must decrypt with the subscription's keys)
and responds with the documented success and error shapes. Tests queue
faults: an HTTP error status, or accepting a request and then stalling past
the client's timeout.
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import http.server
import json
import os
import re
import threading
import time
import uuid
from typing import Any

import http_ece
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

STALL_LIMIT_SECONDS = 30.0
"""A stalled request gets its response after this long at the latest, so threads always end."""

_EXPO_TOKEN = re.compile(r"(?:ExponentPushToken|ExpoPushToken)\[[A-Za-z0-9_-]+\]")


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclasses.dataclass
class Fault:
    """Failure the server injects into its response to the next request."""

    status: int | None = None
    """Answer with this HTTP status."""
    stall: bool = False
    """Record the request as accepted, then hold the response until released or the limit."""
    retry_after: str | None = None


class _LoopbackServer:
    def __init__(self, handler_class: type[http.server.BaseHTTPRequestHandler]) -> None:
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler_class)
        self._server.daemon_threads = True
        self._server.owner = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._condition = threading.Condition()
        self._release = threading.Event()
        self.faults: collections.deque[Fault] = collections.deque()
        self.request_count = 0

    @property
    def origin(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def release_stalled(self) -> None:
        self._release.set()

    def next_fault(self) -> Fault | None:
        with self._condition:
            return self.faults.popleft() if self.faults else None

    def stall(self) -> None:
        self._release.wait(STALL_LIMIT_SECONDS)

    def note_request(self) -> None:
        with self._condition:
            self.request_count += 1
            self._condition.notify_all()

    def wait_for_requests(self, count: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        with self._condition:
            while self.request_count < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"got {self.request_count} requests, expected {count}")
                self._condition.wait(remaining)


class _JsonHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    @property
    def owner(self) -> Any:
        return self.server.owner  # type: ignore[attr-defined]

    def read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length)

    def respond(self, status: int, body: Any = None, headers: dict[str, str] | None = None) -> None:
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if body is not None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        try:
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            # The client gave up (a timeout test); the request still counts as accepted.
            pass


# Expo


@dataclasses.dataclass
class ExpoSend:
    """One accepted or rejected send request."""

    messages: list[dict[str, Any]]
    authorization: str | None
    status: int


class _ExpoHandler(_JsonHandler):
    def do_POST(self) -> None:
        owner: ExpoServer = self.owner
        body = self.read_body()
        if self.path == "/--/api/v2/push/send":
            owner.handle_send(self, body)
        elif self.path == "/--/api/v2/push/getReceipts":
            owner.handle_receipts(self, body)
        else:
            self.respond(404, {"errors": [{"code": "NOT_FOUND", "message": "not found"}]})


class ExpoServer(_LoopbackServer):
    """Expo's push API: ``/--/api/v2/push/send`` and ``/--/api/v2/push/getReceipts``."""

    def __init__(self) -> None:
        super().__init__(_ExpoHandler)
        self.sends: list[ExpoSend] = []
        self.unregistered: set[str] = set()
        """Tokens whose tickets come back with DeviceNotRegistered."""
        self.unregistered_in_receipt: set[str] = set()
        """Tokens accepted at send time whose receipts report DeviceNotRegistered."""
        self.receipt_requests: list[list[str]] = []
        self._receipts: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    @property
    def api_url(self) -> str:
        return f"{self.origin}/--/api/v2"

    def accepted_messages(self) -> list[dict[str, Any]]:
        with self._lock:
            return [m for send in self.sends if send.status == 200 for m in send.messages]

    def handle_send(self, handler: _JsonHandler, body: bytes) -> None:
        try:
            messages = json.loads(body)
        except ValueError:
            handler.respond(400, {"errors": [{"code": "VALIDATION_ERROR", "message": "invalid JSON"}]})
            self.note_request()
            return
        if not isinstance(messages, list) or not 1 <= len(messages) <= 100:
            handler.respond(
                400,
                {"errors": [{"code": "PUSH_TOO_MANY_NOTIFICATIONS",
                             "message": "You are trying to send more than 100 push notifications in one request"}]},
            )
            self.record_send(messages if isinstance(messages, list) else [], handler, 400)
            return
        fault = self.next_fault()
        if fault is not None and fault.status is not None:
            headers = {"Retry-After": fault.retry_after} if fault.retry_after else None
            handler.respond(
                fault.status,
                {"errors": [{"code": "INTERNAL_SERVER_ERROR", "message": "An unknown error occurred."}]},
                headers,
            )
            self.record_send(messages, handler, fault.status)
            return

        tickets = [self._ticket(message) for message in messages]
        self.record_send(messages, handler, 200)
        if fault is not None and fault.stall:
            # Accepted and queued at Expo, but the response never reaches the client in time.
            self.stall()
        handler.respond(200, {"data": tickets})

    def record_send(self, messages: list[Any], handler: _JsonHandler, status: int) -> None:
        with self._lock:
            self.sends.append(ExpoSend(messages, handler.headers.get("Authorization"), status))
        self.note_request()

    def _ticket(self, message: Any) -> dict[str, Any]:
        token = message.get("to") if isinstance(message, dict) else None
        if not isinstance(token, str) or not _EXPO_TOKEN.fullmatch(token):
            return {"status": "error", "message": f"{token!r} is not a valid Expo push token",
                    "details": {"error": "DeviceNotRegistered"}}
        if token in self.unregistered:
            return {
                "status": "error",
                "message": f'"{token}" is not a registered push notification recipient',
                "details": {"error": "DeviceNotRegistered", "expoPushToken": token},
            }
        receipt_id = str(uuid.uuid4())
        if token in self.unregistered_in_receipt:
            receipt = {"status": "error", "message": "The device cannot receive push notifications",
                       "details": {"error": "DeviceNotRegistered"}}
        else:
            receipt = {"status": "ok"}
        with self._lock:
            self._receipts[receipt_id] = receipt
        return {"status": "ok", "id": receipt_id}

    def handle_receipts(self, handler: _JsonHandler, body: bytes) -> None:
        ids = json.loads(body).get("ids")
        if not isinstance(ids, list) or len(ids) > 1000:
            handler.respond(400, {"errors": [{"code": "VALIDATION_ERROR", "message": "ids must be a list"}]})
            self.note_request()
            return
        with self._lock:
            self.receipt_requests.append(list(ids))
            data = {i: self._receipts[i] for i in ids if i in self._receipts}
        handler.respond(200, {"data": data})
        self.note_request()


# Web Push


@dataclasses.dataclass
class BrowserSubscription:
    """A subscription as a browser creates it: its private key stays with the 'browser'."""

    id: str
    endpoint: str
    private_key: ec.EllipticCurvePrivateKey
    auth_secret: bytes

    @classmethod
    def create(cls, subscription_id: str, endpoint: str) -> BrowserSubscription:
        """Generate the browser's key pair and auth secret for a new subscription."""
        return cls(
            id=subscription_id,
            endpoint=endpoint,
            private_key=ec.generate_private_key(ec.SECP256R1()),
            auth_secret=os.urandom(16),
        )

    @property
    def p256dh(self) -> str:
        raw = self.private_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        return b64url(raw)

    @property
    def auth(self) -> str:
        return b64url(self.auth_secret)


@dataclasses.dataclass
class WebPushDelivery:
    """One push the server accepted, decrypted as the browser would."""

    subscription_id: str
    payload: dict[str, Any]
    headers: dict[str, str]
    """Request headers with lower-case names."""
    vapid_claims: dict[str, Any]


class _WebPushHandler(_JsonHandler):
    def do_POST(self) -> None:
        self.owner.handle_push(self, self.read_body())


class WebPushServer(_LoopbackServer):
    """A Web Push service: ``POST /push/{id}`` answers 201 Created on success."""

    def __init__(self) -> None:
        super().__init__(_WebPushHandler)
        self.subscriptions: dict[str, BrowserSubscription] = {}
        self.deliveries: list[WebPushDelivery] = []
        self.gone: dict[str, int] = {}
        """Subscription id -> 404 or 410 for subscriptions that expired."""
        self.errors: list[str] = []
        """Requests the server refused for breaking the protocol."""
        self._lock = threading.Lock()

    def subscribe(self) -> BrowserSubscription:
        subscription_id = uuid.uuid4().hex
        subscription = BrowserSubscription.create(
            subscription_id, f"{self.origin}/push/{subscription_id}"
        )
        self.subscriptions[subscription_id] = subscription
        return subscription

    def payloads_for(self, subscription: BrowserSubscription) -> list[dict[str, Any]]:
        with self._lock:
            return [d.payload for d in self.deliveries if d.subscription_id == subscription.id]

    def _reject(self, handler: _JsonHandler, status: int, reason: str) -> None:
        with self._lock:
            self.errors.append(reason)
        handler.respond(status, {"reason": reason})
        self.note_request()

    def _verify_vapid(self, authorization: str) -> dict[str, Any]:
        match = re.fullmatch(r"vapid t=([^,\s]+),\s*k=([A-Za-z0-9_-]+)", authorization.strip())
        if match is None:
            raise ValueError(f"Authorization is not 'vapid t=..., k=...': {authorization[:40]!r}")
        token, key = match.groups()
        public_key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b64url_decode(key))
        claims = jwt.decode(token, public_key, algorithms=["ES256"], audience=self.origin)
        if not str(claims.get("sub", "")).startswith(("mailto:", "https:")):
            raise ValueError(f"VAPID sub must be a mailto: or https: URL, got {claims.get('sub')!r}")
        if claims["exp"] > time.time() + 24 * 3600:
            raise ValueError("VAPID exp is more than 24 hours ahead")
        return claims

    def handle_push(self, handler: _JsonHandler, body: bytes) -> None:
        match = re.fullmatch(r"/push/([0-9a-f]+)", handler.path)
        subscription = self.subscriptions.get(match.group(1)) if match else None
        if subscription is None:
            self._reject(handler, 404, "unknown subscription")
            return
        if subscription.id in self.gone:
            handler.respond(self.gone[subscription.id], {"reason": "subscription expired"})
            self.note_request()
            return
        if handler.headers.get("TTL") is None:
            self._reject(handler, 400, "missing TTL header")
            return
        if handler.headers.get("Content-Encoding") != "aes128gcm":
            self._reject(handler, 400, "Content-Encoding must be aes128gcm")
            return
        try:
            claims = self._verify_vapid(handler.headers.get("Authorization", ""))
        except (ValueError, jwt.InvalidTokenError) as error:
            self._reject(handler, 403, f"invalid VAPID authorization: {error}")
            return
        try:
            plaintext = http_ece.decrypt(
                body,
                version="aes128gcm",
                private_key=subscription.private_key,
                auth_secret=subscription.auth_secret,
            )
            payload = json.loads(plaintext)
        except Exception as error:  # http_ece raises bare exceptions for bad data.
            self._reject(handler, 400, f"payload does not decrypt: {error!r}")
            return

        fault = self.next_fault()
        if fault is not None and fault.status is not None:
            headers = {"Retry-After": fault.retry_after} if fault.retry_after else None
            handler.respond(fault.status, {"reason": "injected fault"}, headers)
            self.note_request()
            return
        with self._lock:
            self.deliveries.append(
                WebPushDelivery(
                    subscription.id,
                    payload,
                    {name.lower(): value for name, value in handler.headers.items()},
                    claims,
                )
            )
        self.note_request()
        if fault is not None and fault.stall:
            self.stall()
        handler.respond(201, None, {"Location": f"{self.origin}/message/{uuid.uuid4().hex}"})
