"""Settings read from the environment: bad values get one clear line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kilo_web.settings import Settings, SettingsError

PROJECT_DIR = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name, value, expected", [
    ("KILO_MESSAGES_PER_MINUTE", "0", "KILO_MESSAGES_PER_MINUTE='0' is below the minimum"),
    ("KILO_MESSAGES_PER_MINUTE", "many", "KILO_MESSAGES_PER_MINUTE='many' is not a number"),
    ("KILO_MESSAGE_BURST", "1.5", "KILO_MESSAGE_BURST='1.5' is not an integer"),
])
def test_settings_bad_value_names_variable(monkeypatch, name, value, expected):
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=expected):
        Settings.from_env()


def test_rxconfig_bad_setting_exits_with_one_line():
    environment = {**os.environ, "KILO_MESSAGES_PER_MINUTE": "0"}
    result = subprocess.run([sys.executable, "-c", "import rxconfig"], cwd=PROJECT_DIR,
                            env=environment, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip() == (
        "kilo_web: invalid setting: KILO_MESSAGES_PER_MINUTE='0' is below the minimum 0.1; "
        "set 0.1 or more"
    )
