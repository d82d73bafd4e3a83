"""Sampling profiles of a server process under load, with py-spy.

py-spy reads the target's memory from outside (it needs ptrace, which root
has here), so the server runs unmodified. ``--nonblocking`` keeps py-spy
from pausing the target at each sample. py-spy still takes CPU from the
processes it shares the 2 cores with, so profiled runs are not timed.
The raw output has one line per distinct stack,
``frame;frame;...;frame count``, which ``summarise`` folds into self and
inclusive shares per function.
"""

from __future__ import annotations

import collections
import logging
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from bench.measure import PROJECT_DIR

logger = logging.getLogger(__name__)

_FRAME = re.compile(r"^(?P<function>.+?) \((?P<file>[^()]+?)(?::(?P<line>\d+))?\)$")
_IDLE_FUNCTIONS = ("select", "poll", "epoll_wait")


def py_spy_path() -> str | None:
    """Return the py-spy executable beside this interpreter, or on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    if beside.exists():
        return str(beside)
    return shutil.which("py-spy")


def _short_file(path: str) -> str:
    marker = "site-packages/"
    if marker in path:
        return path.split(marker, 1)[1]
    try:
        return str(Path(path).resolve().relative_to(PROJECT_DIR))
    except ValueError:
        return Path(path).name


def _frame_name(frame: str) -> str:
    match = _FRAME.match(frame.strip())
    if match is None:
        return frame.strip()
    return f"{_short_file(match['file'])}:{match['function']}"


class Recording:
    """A py-spy recording running in the background; ``wait`` returns its raw output."""

    def __init__(self, pid: int, seconds: float, *, rate: int = 200) -> None:
        executable = py_spy_path()
        if executable is None:
            raise RuntimeError("py-spy is not installed; run pip install -r requirements.txt")
        self._output = Path(tempfile.mkstemp(prefix="kilo-bench-profile-", suffix=".txt")[1])
        self._seconds = seconds
        self._process = subprocess.Popen(
            [executable, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))),
             "--rate", str(rate), "--format", "raw", "--nonblocking",
             "--output", str(self._output)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        self._log: list[str] = []
        self._reader = threading.Thread(target=self._read_log, daemon=True)
        self._reader.start()

    def _read_log(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            self._log.append(line.rstrip())

    def wait(self) -> str:
        """Wait for py-spy to finish and return the collapsed stacks."""
        try:
            code = self._process.wait(timeout=self._seconds + 60)
        except subprocess.TimeoutExpired:
            self._process.kill()
            raise RuntimeError("py-spy did not finish in time") from None
        self._reader.join(timeout=5)
        text = self._output.read_text() if self._output.exists() else ""
        self._output.unlink(missing_ok=True)
        if code != 0 or not text:
            raise RuntimeError(f"py-spy failed with exit code {code}: {' | '.join(self._log[-5:])}; "
                               "it needs ptrace permission on the server process")
        return text


def _is_interesting(name: str) -> bool:
    """Return whether an inclusive entry is worth listing: not the loop, the runner or the harness."""
    boring = ("asyncio/", "multiprocessing/", "<string>", "bench/", "threading.py", "runpy")
    return not name.startswith(boring)


def summarise(raw: str, *, top: int = 15) -> dict[str, Any]:
    """Fold collapsed stacks into the top functions by self and inclusive samples.

    Samples whose innermost frame is the event loop waiting for I/O count as
    idle and are reported apart, so shares are of busy samples.
    """
    self_counts: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    busy = idle = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame_name(frame) for frame in stack.split(";") if frame]
        # py-spy puts a process and thread label first; real frames carry a file.
        frames = [frame for frame in frames if ":" in frame]
        if not frames:
            continue
        leaf = frames[-1]
        if leaf.rsplit(":", 1)[-1].rsplit(".", 1)[-1] in _IDLE_FUNCTIONS:
            idle += count
            continue
        busy += count
        self_counts[leaf] += count
        for frame in set(frames):
            inclusive[frame] += count

    def share(counter: collections.Counter[str], keep: Any) -> list[dict[str, Any]]:
        rows = [(name, value) for name, value in counter.most_common() if keep(name)]
        return [
            {"function": name, "samples": value, "percent": 100.0 * value / busy if busy else 0.0}
            for name, value in rows[:top]
        ]

    return {
        "busy_samples": busy,
        "idle_samples": idle,
        "self": share(self_counts, lambda name: True),
        "inclusive_kilo_web": share(inclusive, lambda name: name.startswith("kilo_web/")),
        "inclusive_all": share(inclusive, _is_interesting),
    }
