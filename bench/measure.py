"""Measuring helpers: percentiles, CPU use of worker processes, the machine's description."""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import psutil

from bench.workers import Worker

PROJECT_DIR = Path(__file__).resolve().parent.parent

BUSY_CPU_PERCENT = 85.0
"""A process at or above this share of one core is counted as saturated."""

DISTURBED_CPU_PERCENT = 20.0
"""Processes outside the benchmark at or above this share of one core disturb a phase."""


def percentile(values: Sequence[float], fraction: float) -> float:
    """Return the nearest-rank percentile (``fraction`` in 0..1) of ``values``; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def latency_summary_ms(latencies_ns: Sequence[int]) -> dict[str, float]:
    """Return p50, p99 and max of nanosecond latencies, in milliseconds, and the sample count."""
    values = [value / 1e6 for value in latencies_ns]
    return {
        "p50_ms": percentile(values, 0.50),
        "p99_ms": percentile(values, 0.99),
        "max_ms": max(values) if values else math.nan,
        "samples": len(values),
    }


def _machine_busy_seconds() -> float:
    """CPU seconds all cores spent on anything but idling, since boot."""
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


def _process_cpu_seconds(exclude: set[int]) -> dict[int, float]:
    """CPU seconds of every user-space process except ``exclude``, by pid."""
    seconds: dict[int, float] = {}
    for process in psutil.process_iter(["pid", "ppid", "cpu_times"]):
        info = process.info
        # pid 2 is kthreadd; its children are kernel threads, counted in the machine figure.
        if info["pid"] in exclude or info["pid"] in (0, 2) or info["ppid"] == 2:
            continue
        times = info["cpu_times"]
        if times is not None:
            seconds[info["pid"]] = times.user + times.system
    return seconds


@dataclass
class CpuWindow:
    """CPU use of a set of workers, and of the whole machine, over one measured phase.

    The machine figure includes what no worker is charged for, such as the
    kernel's loopback network processing in softirq threads.
    """

    workers: Sequence[Worker]
    _start_cpu: list[float] | None = None
    _start_machine: float = 0.0
    _start_wall: float = 0.0
    seconds: dict[str, float] | None = None
    percents: dict[str, float] | None = None
    machine_percent: float = 0.0
    """Busy share of all cores, 0 to 100."""
    other_percent: float = 0.0
    """CPU of user-space processes that are not part of the benchmark, in % of one core."""
    wall_seconds: float = 0.0
    _start_others: dict[int, float] | None = None

    def _excluded(self) -> set[int]:
        return {os.getpid(), *(worker.pid for worker in self.workers)}

    def __enter__(self) -> CpuWindow:
        self._start_others = _process_cpu_seconds(self._excluded())
        self._start_cpu = [worker.cpu_seconds() for worker in self.workers]
        self._start_machine = _machine_busy_seconds()
        self._start_wall = time.monotonic()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.wall_seconds = time.monotonic() - self._start_wall
        assert self._start_cpu is not None
        wall = max(self.wall_seconds, 1e-9)
        self.seconds = {
            worker.name: worker.cpu_seconds() - start
            for worker, start in zip(self.workers, self._start_cpu, strict=True)
        }
        self.percents = {name: 100.0 * value / wall for name, value in self.seconds.items()}
        busy = _machine_busy_seconds() - self._start_machine
        self.machine_percent = 100.0 * busy / wall / (os.cpu_count() or 1)
        assert self._start_others is not None
        # A process that started in the window counts whole; one that ended is missed.
        others = sum(
            value - self._start_others.get(pid, 0.0)
            for pid, value in _process_cpu_seconds(self._excluded()).items()
        )
        self.other_percent = 100.0 * max(0.0, others) / wall


def wait_for_quiet(max_seconds: float, *, logger: logging.Logger) -> float:
    """Wait until processes outside the benchmark use little CPU; return their last share.

    Samples one second at a time and returns after three quiet seconds in a
    row, or after ``max_seconds`` with a warning, because a run must end.
    """
    deadline = time.monotonic() + max_seconds
    quiet = 0
    share = 0.0
    while True:
        with CpuWindow([]) as window:
            time.sleep(1.0)
        share = window.other_percent
        quiet = quiet + 1 if share < DISTURBED_CPU_PERCENT else 0
        if quiet >= 3:
            return share
        if time.monotonic() >= deadline:
            logger.warning("other processes still use %.0f %% of a core; measuring anyway", share)
            return share


def bound_by(server_percent: float, generator_percents: Sequence[float],
             machine_percent: float, other_percent: float = 0.0) -> str:
    """Name what limited a phase, judged from CPU use (see BUSY_CPU_PERCENT).

    ``server_percent``, ``generator_percents`` and ``other_percent`` (processes
    outside the benchmark) are shares of one core; ``machine_percent`` is
    the busy share of all cores.
    """
    if other_percent >= DISTURBED_CPU_PERCENT:
        return "disturbed: other processes used the cores"
    if server_percent >= BUSY_CPU_PERCENT:
        return "server CPU"
    if machine_percent >= BUSY_CPU_PERCENT:
        return "machine: cores shared by server, generator and kernel"
    if sum(generator_percents) >= BUSY_CPU_PERCENT:
        return "load generator"
    return "not CPU-bound"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", *args], cwd=PROJECT_DIR, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine_description() -> dict[str, str]:
    """Describe the machine, the interpreter, the key packages and the checkout."""
    commit = _git("rev-parse", "--short", "HEAD")
    dirty = bool(_git("status", "--porcelain", "--", "kilo_web"))
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": _cpu_model(),
        "cores": str(os.cpu_count()),
        "memory": f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB",
        "python": sys.version.split()[0],
        "kernel": platform.release(),
        "commit": f"{commit} (kilo_web/ with uncommitted changes)" if dirty else commit,
        "websockets": _version("websockets"),
        "python-socketio": _version("python-socketio"),
        "python-engineio": _version("python-engineio"),
        "uvicorn": _version("uvicorn"),
        "load_average": " ".join(f"{value:.2f}" for value in os.getloadavg()),
    }
