"""VAPID key set-up (kilo_web.notifications.vapid)."""

from __future__ import annotations

import base64
import stat
import subprocess
import sys

import pytest

from kilo_web.notifications.vapid import (
    VapidKeyError,
    application_server_key,
    ensure_vapid_key,
    load_vapid_key,
)
from kilo_web.settings import PROJECT_DIR


def test_creates_private_key_once(tmp_path):
    path = tmp_path / "keys" / "vapid-private.pem"

    created = ensure_vapid_key(path)
    first = path.read_bytes()
    created_again = ensure_vapid_key(path)

    assert created is True
    assert created_again is False
    assert path.read_bytes() == first
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_application_server_key_is_uncompressed_point(tmp_path):
    path = tmp_path / "vapid-private.pem"
    ensure_vapid_key(path)

    key = application_server_key(load_vapid_key(path))

    raw = base64.urlsafe_b64decode(key + "=" * (-len(key) % 4))
    assert len(raw) == 65
    assert raw[0] == 4
    assert "=" not in key


def test_missing_key_is_not_generated(tmp_path):
    path = tmp_path / "missing.pem"

    with pytest.raises(VapidKeyError, match="not found"):
        load_vapid_key(path)

    assert not path.exists()


def test_corrupt_key_rejected(tmp_path):
    path = tmp_path / "bad.pem"
    path.write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")

    with pytest.raises(VapidKeyError, match="not a valid"):
        load_vapid_key(path)


def test_module_command_creates_key(tmp_path):
    env = {"KILO_DATA_DIR": str(tmp_path), "KILO_JWT_SECRET": "j" * 40, "PATH": "/usr/bin:/bin"}

    result = subprocess.run(
        [sys.executable, "-m", "kilo_web.notifications.vapid"],
        cwd=PROJECT_DIR, env=env, capture_output=True, text=True, timeout=60, check=False,
    )

    assert result.returncode == 0, result.stderr
    assert (tmp_path / "vapid-private.pem").is_file()
    assert "application server key: " in result.stdout
