"""A real Redis (Debian `redis-server`) on loopback for step 06's shared limits, tests and lessons.

    from coursekit.redis_server import RedisServer

    with RedisServer() as redis_srv:
        env = {"REDIS_URL": redis_srv.url}          # "redis://127.0.0.1:<port>/0"
        redis_srv.client().ping()                   # sync redis.Redis
        redis_srv.stop()                            # outage: the port refuses connections
        redis_srv.start()                           # back, on the SAME port (empty: nothing is saved)
        redis_srv.freeze(); redis_srv.thaw()        # outage that hangs (SIGSTOP / SIGCONT)

The server runs `redis-server --port <free> --bind 127.0.0.1 --save "" --appendonly no
--daemonize no` in a temporary folder (no persistence: a restart starts empty, like a cache
node replaced by a new one), is waited for with a deadline (PING), and is stopped by its PID
(SIGTERM, then SIGKILL). `running()` lists servers still running; all are stopped at exit.
When redis-server is missing, `require_redis()` skips with a Korean note, or fails under
COURSE_REQUIRE_TOOLS=1 (the rule of coursekit.procs.skip_or_fail). Install:
`sudo bash .ci/install-redis-nginx.sh`.

Measured on this repository's 2-core machine (Debian redis-server 7.0): start until PING
answers ≈ 0.01–0.03 s, stop (SIGTERM until exit) ≈ 0.1 s, stop + start on the same port ≈ 0.1 s
(tests/test_step06_kit.py prints them).

What an outage costs a caller (measured, redis-py 8.1, limits 5.8):
- sync `redis.Redis(socket_timeout=0.2, socket_connect_timeout=0.2)`: a stopped server raises
  `redis.ConnectionError` after ≈4.8 s and a frozen one `redis.TimeoutError` after ≈5.5 s,
  because redis-py's default `Retry` (3 retries, exponential backoff) runs first; with
  `retry=None` the same calls fail in 0.001 s and 0.20 s. `client()` here passes what you give it.
- `limits.storage.storage_from_string("async+" + url, implementation="redispy",
  socket_timeout=0.2, socket_connect_timeout=0.2)` + `limits.aio.strategies.MovingWindowRateLimiter`:
  `hit()` on a stopped server raises `redis.exceptions.ConnectionError` in ≈0.001 s, on a frozen one
  `redis.exceptions.TimeoutError` in 0.20 s, and works again right after `start()` (no reconnect
  delay). Without `implementation="redispy"` limits 5.8 asks for `coredis` (not installed) and raises
  `limits.errors.ConfigurationError`.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from .procs import Registry, free_port, port_open, skip_or_fail, stop_process

__all__ = ["RedisError", "RedisServer", "find_redis", "missing_note", "require_redis", "running", "stop_all"]

INSTALL_HINT = "설치: sudo bash .ci/install-redis-nginx.sh (Debian/Ubuntu 패키지 redis-server)"


class RedisError(RuntimeError):
    """redis-server did not start or did not answer (Korean message with the log tail)."""


def find_redis() -> str | None:
    """Absolute path of redis-server, or None."""
    return shutil.which("redis-server") or (
        "/usr/bin/redis-server" if os.access("/usr/bin/redis-server", os.X_OK) else None)


def missing_note(reason: str) -> str:
    return f"redis-server 가 없어 건너뜁니다: {reason}. {INSTALL_HINT}"


def require_redis(reason: str = "Redis 가 필요한 검사입니다") -> None:
    """Inside pytest: skip with a Korean note when redis-server is missing, or fail under
    COURSE_REQUIRE_TOOLS=1."""
    if find_redis() is None:
        skip_or_fail(missing_note(reason))


# What this module started: listed by running(), stopped by stop_all() and at exit (by PID).
_STARTED = Registry("close")
running = _STARTED.running
stop_all = _STARTED.stop_all


class RedisServer:
    """One redis-server on 127.0.0.1:<free port>; `start()` after `stop()` reuses the same port."""

    port_retries = 3

    def __init__(self, *, port: int | None = None, timeout: float = 10.0, extra_args: list[str] | None = None):
        self.port: int = port or 0
        self.timeout = timeout
        self.extra_args = list(extra_args or [])
        self.folder: Path | None = None
        self.process: subprocess.Popen | None = None
        self.startup_seconds: float | None = None
        self.frozen = False
        self.last_log = ""

    # ---- properties ---------------------------------------------------------------
    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """redis-py / limits URL of database 0 (`limits` wants "async+redis://..." for its async storage)."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def client(self, **kwargs: Any):
        """A sync `redis.Redis` for this server (short timeouts unless given)."""
        import redis

        kwargs.setdefault("socket_timeout", 2.0)
        kwargs.setdefault("socket_connect_timeout", 2.0)
        return redis.Redis(host="127.0.0.1", port=self.port, db=0, **kwargs)

    def log(self) -> str:
        if self.folder is None:
            return self.last_log
        try:
            return (self.folder / "redis.log").read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return self.last_log

    def tail(self, lines: int = 15) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    # ---- lifecycle ----------------------------------------------------------------
    def start(self) -> RedisServer:
        """Start (or start again on the same port after `stop()`) and wait for PING."""
        binary = find_redis()
        if binary is None:
            raise RedisError(f"redis-server 가 설치되어 있지 않습니다. {INSTALL_HINT}")
        if self.alive:
            return self
        if self.folder is None:
            self.folder = Path(tempfile.mkdtemp(prefix="course-redis-"))
        began = time.monotonic()
        restarting = bool(self.port)
        for attempt in range(1 if restarting else self.port_retries):
            if not restarting:
                self.port = free_port()
            with open(self.folder / "redis.log", "ab") as out:
                self.process = subprocess.Popen(
                    [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                     "--daemonize", "no", "--dir", str(self.folder), "--logfile", "", *self.extra_args],
                    cwd=self.folder, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    start_new_session=True)
            self.frozen = False
            _STARTED.add(self)
            if self._wait_ready(began + self.timeout):
                self.startup_seconds = time.monotonic() - began
                return self
            exited = self.process.poll() is not None
            stop_process(self.process, 2.0)
            if "Address already in use" in self.log() and not restarting and attempt + 1 < self.port_retries:
                continue
            what = (f"시작하자마자 종료되었습니다 (종료 코드 {self.process.returncode})" if exited
                    else f"{self.timeout:.0f}초 안에 PING 에 답하지 않았습니다")
            busy = " 포트가 다른 프로세스에 잡혀 있습니다." if "Address already in use" in self.log() else ""
            raise RedisError(f"redis-server ({self.address}) 가 {what}.{busy}\n"
                             f"--- redis-server 로그 (마지막 줄) ---\n{self.tail()}")
        raise AssertionError("unreachable")

    def _wait_ready(self, deadline: float) -> bool:
        import redis

        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            if port_open(self.port):
                try:
                    with self.client(socket_timeout=1.0, socket_connect_timeout=1.0) as c:
                        # our process, not another server that holds the port
                        if c.ping() and int(c.info("server")["process_id"]) == self.process.pid:
                            return True
                except redis.RedisError:
                    pass
            time.sleep(0.01)
        return False

    def stop(self, grace: float = 5.0) -> None:
        """Stop the process by PID (an outage: connections are refused); the port and folder stay
        reserved for `start()`."""
        if self.process is not None:
            if self.frozen and self.process.poll() is None:
                os.kill(self.process.pid, signal.SIGCONT)
                self.frozen = False
            stop_process(self.process, grace)

    def freeze(self) -> None:
        """SIGSTOP: the port still accepts connections but nothing answers (a hanging Redis)."""
        if not self.alive:
            raise RedisError("redis-server 가 실행 중이 아닙니다 (start() 먼저).")
        os.kill(self.process.pid, signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        """SIGCONT after `freeze()`."""
        if self.alive and self.frozen:
            os.kill(self.process.pid, signal.SIGCONT)
        self.frozen = False

    def close(self) -> None:
        """Stop and remove the temporary folder (the end of the context manager)."""
        self.stop()
        _STARTED.discard(self)
        if self.folder is not None:
            self.last_log = self.log()
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = f"PID {self.pid}, {self.url}" if self.alive else "멈춤"
        return f"<RedisServer {state}>"
