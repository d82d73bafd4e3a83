"""Worker processes that the benchmark driver commands over a pipe.

Every server under test and every load generator runs in a process of its
own, started with the ``spawn`` method so that it imports only what it
needs. A worker is an *agent* object with an async ``start()`` and
``cmd_<name>(**arguments)`` methods. The driver calls them one at a time
with ``Worker.call`` and gets a dict back. The driver itself is plain
synchronous code and stays idle while the workers run.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import multiprocessing
import multiprocessing.connection
import resource
import threading
from typing import Any

import psutil

logger = logging.getLogger(__name__)


class WorkerError(RuntimeError):
    """Raised in the driver when a worker's command failed or timed out."""


def raise_fd_limit() -> int:
    """Raise this process's open-file limit to the hard limit; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return soft


def _configure_worker_logging(level: int) -> None:
    logging.basicConfig(
        level=level, format="%(asctime)s %(processName)s %(levelname)s %(name)s: %(message)s"
    )
    # The servers under test log every connection at INFO; thousands of
    # lines would cost the CPU that is being measured.
    logging.getLogger("kilo_web").setLevel(max(level, logging.WARNING))
    logging.getLogger("websockets").setLevel(logging.ERROR)
    logging.getLogger("uvicorn").setLevel(logging.WARNING)
    logging.getLogger("engineio").setLevel(logging.WARNING)
    logging.getLogger("socketio").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)


async def _serve(connection: multiprocessing.connection.Connection, agent: Any) -> None:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    def read_commands() -> None:
        while True:
            try:
                message = connection.recv()
            except (EOFError, OSError):
                message = {"cmd": "stop"}
            loop.call_soon_threadsafe(queue.put_nowait, message)
            if message.get("cmd") == "stop":
                return

    threading.Thread(target=read_commands, name="commands", daemon=True).start()
    try:
        info = await agent.start()
    except Exception as exc:
        logger.exception("worker failed to start")
        connection.send({"ok": False, "error": f"{type(exc).__name__}: {exc}"})
        return
    connection.send({"ok": True, **(info or {})})
    while True:
        message = await queue.get()
        command = message.pop("cmd")
        if command == "stop":
            try:
                await agent.close()
            finally:
                connection.send({"ok": True})
            return
        try:
            result = await getattr(agent, f"cmd_{command}")(**message)
        except Exception as exc:
            logger.exception("command %s failed", command)
            connection.send({"ok": False, "error": f"{type(exc).__name__}: {exc}"})
        else:
            connection.send({"ok": True, **(result or {})})


def _worker_main(
    agent_path: str,
    spec: dict[str, Any],
    connection: multiprocessing.connection.Connection,
    log_level: int,
) -> None:
    _configure_worker_logging(log_level)
    raise_fd_limit()
    module_name, _, class_name = agent_path.partition(":")
    agent_class = getattr(importlib.import_module(module_name), class_name)
    asyncio.run(_serve(connection, agent_class(**spec)))


class Worker:
    """A process running one agent; ``call`` sends it a command and returns its reply."""

    def __init__(
        self, agent_path: str, spec: dict[str, Any], *, name: str, start_timeout: float = 120.0
    ) -> None:
        context = multiprocessing.get_context("spawn")
        self._connection, child = context.Pipe()
        self.name = name
        self.process = context.Process(
            target=_worker_main,
            args=(agent_path, spec, child, logging.getLogger().getEffectiveLevel()),
            name=name,
            daemon=True,
        )
        self.process.start()
        child.close()
        assert self.process.pid is not None
        self.pid = self.process.pid
        self._ps = psutil.Process(self.pid)
        self.info = self._receive("start", start_timeout)

    def _receive(self, command: str, timeout: float) -> dict[str, Any]:
        if not self._connection.poll(timeout):
            raise WorkerError(f"{self.name}: no reply to {command!r} within {timeout:g} s")
        try:
            reply = self._connection.recv()
        except EOFError:
            raise WorkerError(f"{self.name}: the process exited during {command!r}") from None
        if not reply.pop("ok"):
            raise WorkerError(f"{self.name}: {command!r} failed: {reply.get('error')}")
        return reply

    def call(self, command: str, *, timeout: float = 120.0, **arguments: Any) -> dict[str, Any]:
        """Run ``cmd_<command>(**arguments)`` in the worker and return its result."""
        self._connection.send({"cmd": command, **arguments})
        return self._receive(command, timeout)

    def send(self, command: str, **arguments: Any) -> None:
        """Start a command without waiting; collect its reply with ``result``."""
        self._connection.send({"cmd": command, **arguments})

    def result(self, command: str, *, timeout: float = 120.0) -> dict[str, Any]:
        """Wait for the reply to a command started with ``send``."""
        return self._receive(command, timeout)

    def cpu_seconds(self) -> float:
        """User plus system CPU time the process has used so far."""
        times = self._ps.cpu_times()
        return times.user + times.system

    def rss_bytes(self) -> int:
        """Resident set size of the process now."""
        return self._ps.memory_info().rss

    def stop(self, timeout: float = 30.0) -> None:
        """Ask the agent to close, then end the process if it has not exited."""
        if self.process.is_alive():
            try:
                self.call("stop", timeout=timeout)
            except (WorkerError, OSError) as exc:
                logger.warning("%s did not stop cleanly: %s", self.name, exc)
        self.process.join(timeout=10)
        if self.process.is_alive():
            logger.warning("%s still running; terminating pid %d", self.name, self.pid)
            self.process.terminate()
            self.process.join(timeout=10)
        self._connection.close()


def stop_all(workers: list[Worker]) -> None:
    """Stop workers in reverse order of start, logging failures instead of raising."""
    for worker in reversed(workers):
        try:
            worker.stop()
        except Exception:
            logger.exception("failed to stop %s", worker.name)
