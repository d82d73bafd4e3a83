"""The VAPID key pair that signs Web Push requests.

``python -m kilo_web.notifications.vapid`` creates the private key file
(PEM, mode 0600) at ``Settings.vapid_key_path`` when it is missing and
prints the application server key: the public key that the browser passes
to ``PushManager.subscribe({applicationServerKey})``. It never replaces an
existing key, because every browser subscription is bound to it.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from py_vapid import Vapid
from py_vapid.utils import b64urlencode

from kilo_web.settings import get_settings

logger = logging.getLogger(__name__)


class VapidKeyError(RuntimeError):
    """Raised when the VAPID key file is missing or unreadable."""


def ensure_vapid_key(path: Path) -> bool:
    """Create a VAPID private key at ``path`` unless one exists; tell if it created one."""
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    vapid = Vapid()
    vapid.generate_keys()
    pem = vapid.private_pem()
    # O_EXCL makes a second process that races us keep the first one's key.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    logger.info("created VAPID key %s", path)
    return True


def load_vapid_key(path: Path) -> Vapid:
    """Read the VAPID private key (PEM) from ``path`` or raise VapidKeyError."""
    # Not Vapid.from_file: py_vapid 1.9 silently generates and saves a new key
    # when the file is missing, which would break every existing subscription.
    try:
        pem = path.read_bytes()
    except FileNotFoundError:
        raise VapidKeyError(
            f"VAPID key {path} not found; create it with: python -m kilo_web.notifications.vapid"
        ) from None
    try:
        return Vapid.from_pem(pem)
    except Exception as error:  # py_vapid raises bare exceptions for bad PEM data.
        raise VapidKeyError(f"VAPID key {path} is not a valid EC private key: {error}") from error


def application_server_key(vapid: Vapid) -> str:
    """Return the public key as the browser wants it: an uncompressed P-256 point, base64url."""
    raw = vapid.public_key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return b64urlencode(raw)


def main() -> int:
    """Create the key file if missing and print the application server key."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    path = get_settings().vapid_key_path
    if not ensure_vapid_key(path):
        print(f"kept VAPID key {path}")
    key = application_server_key(load_vapid_key(path))
    print(f"application server key: {key}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
