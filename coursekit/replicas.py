"""N uvicorn replicas of one service for step 06 (load balancing, SIGTERM, rolling restarts).

    from coursekit.replicas import ReplicaSet

    with ReplicaSet("steps/06-optimization", n=2, env={"REDIS_URL": redis.url, **sim.env()}) as rs:
        rs.urls          # ["http://127.0.0.1:41234", "http://127.0.0.1:41235"]
        rs.addresses     # ["127.0.0.1:41234", "127.0.0.1:41235"]  (for Balancer(replicas=...))
        rs.sigterm(0)    # SIGTERM only (uvicorn finishes in-flight requests, then exits)
        rs.restart(1)    # SIGTERM, wait for the exit, start again on the SAME port, wait for /health
        rs.rolling_restart()   # one replica after the other; [seconds per replica]
        rs.logs(0)       # stdout+stderr of replica 0 over all its restarts

Each replica runs `python -m uvicorn main:app --host 127.0.0.1 --port <free> --timeout-graceful-shutdown 10`
with cwd = the folder, in its own process group (a Ctrl-C in a notebook does not reach it), its
output appended to one log file per replica (kept across restarts: the JSON log lines of every
incarnation). Everything is stopped by PID at exit. Why not grader.harness.run_service or
coursekit.lesson.start_service: they start one process once (the grader's reports a FAILED check,
the lesson's adds the lesson simulator); a replica must come back on the same port after SIGTERM.

Measured on this repository's 2-core machine with step 05's solution (two replicas, idle, simulator
env): both started until /health answers 2.7 s (imports: FastAPI, langchain, OpenTelemetry, in
parallel); `restart(i)` 1.4–1.7 s (SIGTERM to exit 0.16–0.22 s, start 1.1–1.5 s); `rolling_restart()`
of two 2.8 s without pause (add 2 × pause behind nginx, see rolling_restart). With a tiny FastAPI
app: restart 0.55 s each. A SIGTERMed uvicorn (>= 0.29) exits with code -15 after a clean graceful
shutdown (it re-raises the signal), so `restart()` reports exit_code -15, not 0.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import httpx

from .procs import Registry, free_port, port_open, stop_process, wait_until

__all__ = ["Replica", "ReplicaError", "ReplicaSet", "running", "stop_all"]


class ReplicaError(RuntimeError):
    """A replica did not start, did not become healthy, or did not exit (Korean, with its log tail)."""


# What this module started: listed by running(), stopped by stop_all() and at exit (by PID).
_STARTED = Registry("stop", only_alive=False)
running = _STARTED.running
stop_all = _STARTED.stop_all


class Replica:
    """One uvicorn process on a fixed loopback port (restartable)."""

    def __init__(self, index: int, port: int, log_path: Path):
        self.index, self.port, self.log_path = index, port, log_path
        self.process: subprocess.Popen | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, lines: int = 25) -> str:
        return "\n".join(self.log().splitlines()[-lines:])


class ReplicaSet:
    """`n` uvicorn replicas of `module:app` in `folder`, each on its own free loopback port.

    `env` is added on top of this process's environment (`inherit_env=False`: only `env` plus
    PATH/HOME/LANG); `health_path` is polled (HTTP 200) after every start; `graceful_seconds` is
    uvicorn's `--timeout-graceful-shutdown`.
    """

    def __init__(self, folder: str | os.PathLike, n: int = 2, *, env: Mapping[str, str] | None = None,
                 module: str = "main", app: str = "app", health_path: str = "/health",
                 graceful_seconds: float = 10, startup_timeout: float = 60.0, inherit_env: bool = True,
                 extra_args: list[str] | None = None):
        self.folder = Path(folder).expanduser().resolve()
        if not (self.folder / f"{module}.py").is_file():
            raise ReplicaError(f"{self.folder / (module + '.py')} 파일이 없습니다.")
        self.n, self.module, self.app = n, module, app
        self.health_path = health_path
        self.graceful_seconds = graceful_seconds
        self.startup_timeout = startup_timeout
        self.extra_args = list(extra_args or [])
        base = dict(os.environ) if inherit_env else {k: os.environ[k] for k in ("PATH", "HOME", "LANG")
                                                     if k in os.environ}
        self.env = {**base, "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1", **(env or {})}
        self.log_dir = Path(tempfile.mkdtemp(prefix="course-replicas-"))
        self.replicas: list[Replica] = []
        self.last_logs: list[str] = []

    # ---- access -------------------------------------------------------------------
    @property
    def ports(self) -> list[int]:
        return [r.port for r in self.replicas]

    @property
    def urls(self) -> list[str]:
        return [r.url for r in self.replicas]

    @property
    def addresses(self) -> list[str]:
        return [r.address for r in self.replicas]

    @property
    def pids(self) -> list[int | None]:
        return [r.pid for r in self.replicas]

    def logs(self, i: int) -> str:
        """Output of replica `i` over all its starts."""
        if not self.replicas and self.last_logs:
            return self.last_logs[i]
        return self.replicas[i].log()

    def __getitem__(self, i: int) -> Replica:
        return self.replicas[i]

    def __len__(self) -> int:
        return len(self.replicas)

    # ---- lifecycle ----------------------------------------------------------------
    def start(self) -> ReplicaSet:
        """Start all replicas (in parallel) and wait until each answers `health_path`."""
        if self.replicas:
            return self
        _STARTED.add(self)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for i in range(self.n):
            port = free_port()
            self.replicas.append(Replica(i, port, self.log_dir / f"replica-{i + 1}-{port}.log"))
        try:
            for r in self.replicas:
                self._spawn(r)
            for r in self.replicas:
                self._wait_healthy(r)
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(self, r: Replica) -> None:
        if port_open(r.port):
            raise ReplicaError(f"복제본 {r.index + 1} 의 포트 {r.port} 를 다른 프로세스가 쓰고 있습니다.")
        cmd = [sys.executable, "-m", "uvicorn", f"{self.module}:{self.app}", "--host", "127.0.0.1",
               "--port", str(r.port), "--timeout-graceful-shutdown", f"{self.graceful_seconds:g}", *self.extra_args]
        with open(r.log_path, "ab") as out:
            out.write(f"--- coursekit.replicas: start {r.starts + 1} of replica {r.index + 1} "
                      f"({time.strftime('%H:%M:%S')}) ---\n".encode())
            out.flush()
            r.process = subprocess.Popen(cmd, cwd=self.folder, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        r.starts += 1

    def _wait_healthy(self, r: Replica, timeout: float | None = None) -> float:
        began = time.monotonic()
        deadline = began + (timeout or self.startup_timeout)
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if r.process.poll() is not None:
                    raise ReplicaError(f"복제본 {r.index + 1} (`uvicorn {self.module}:{self.app}`, 포트 {r.port}) 가 "
                                       f"시작하자마자 종료되었습니다 (종료 코드 {r.process.returncode}).\n"
                                       f"--- 로그 (마지막 줄) ---\n{r.tail()}")
                if port_open(r.port):
                    try:
                        if client.get(r.url + self.health_path).status_code == 200:
                            return time.monotonic() - began
                    except httpx.HTTPError:
                        pass
                time.sleep(0.05)
        raise ReplicaError(f"복제본 {r.index + 1} (포트 {r.port}) 의 {self.health_path} 가 "
                           f"{timeout or self.startup_timeout:.0f}초 안에 200 을 돌려주지 않았습니다.\n"
                           f"--- 로그 (마지막 줄) ---\n{r.tail()}")

    def sigterm(self, i: int) -> None:
        """Send SIGTERM to replica `i` (by PID) and return at once; uvicorn stops accepting, finishes
        in-flight requests (up to graceful_seconds), runs the lifespan shutdown and exits."""
        r = self.replicas[i]
        if r.alive:
            os.kill(r.process.pid, signal.SIGTERM)

    def wait_exit(self, i: int, timeout: float | None = None) -> int:
        """Wait until replica `i` exits; its exit code. ReplicaError if it is still running."""
        r = self.replicas[i]
        limit = timeout if timeout is not None else self.graceful_seconds + 10
        try:
            return r.process.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            raise ReplicaError(f"복제본 {i + 1} 이(가) SIGTERM 뒤 {limit:.0f}초 안에 끝나지 않았습니다.\n"
                               f"--- 로그 (마지막 줄) ---\n{r.tail()}") from None

    def start_replica(self, i: int) -> float:
        """Start replica `i` again on its port (after it exited); seconds until healthy."""
        r = self.replicas[i]
        if r.alive:
            raise ReplicaError(f"복제본 {i + 1} 이(가) 아직 실행 중입니다.")
        wait_until(lambda: not port_open(r.port), 5, interval=0.02)
        self._spawn(r)
        return self._wait_healthy(r)

    def restart(self, i: int) -> dict[str, float]:
        """SIGTERM, wait for the exit, start again on the same port, wait for health.
        Returns {"exit_seconds", "start_seconds", "total_seconds", "exit_code"}."""
        t0 = time.monotonic()
        self.sigterm(i)
        code = self.wait_exit(i)
        t1 = time.monotonic()
        start = self.start_replica(i)
        return {"exit_seconds": round(t1 - t0, 3), "start_seconds": round(start, 3),
                "total_seconds": round(time.monotonic() - t0, 3), "exit_code": code}

    def rolling_restart(self, pause: float = 0.0, after=None, *, balancer=None,
                        settle: float = 0.3) -> list[dict[str, float]]:
        """Restart the replicas one after the other (the next only once the previous is healthy
        again), so at least n-1 serve at any moment; `pause` seconds between two.

        With `balancer` (the coursekit.balancer.Balancer in front of this set), each replica is first
        taken out of rotation: nginx reloaded without it (new connections go elsewhere, requests in
        flight to it go on), `settle` s, then SIGTERM (uvicorn finishes those requests), start, and
        back into rotation. That is a load balancer's deregistration, or Kubernetes removing the pod
        from the Service's endpoints before SIGTERM (with a preStop pause). Without it a connection
        nginx opens in the instant uvicorn closes its listening socket is reset, and nginx does not
        resend a POST it has already sent (measured: 1 POST answered 502 in 902 at ~150 req/s).

        Without a balancer, behind nginx give `pause` > the upstream's `fail_timeout` (nginx keeps a
        replica that refused a connection marked failed for fail_timeout even when it is healthy
        again; if the next one stops meanwhile it has "no live upstreams"), or better
        `after=lambda i, t: balancer.wait_served(rs.addresses[i])`: `after(i, timing)` runs once
        replica i is healthy, before the next one stops (what readiness probes and minReadySeconds do)."""
        out = []
        rotation = list(balancer.replicas) if balancer is not None else None
        for i in range(len(self.replicas)):
            if i and pause:
                time.sleep(pause)
            if balancer is not None:
                balancer.reload(replicas=balancer.drained(self.replicas[i].address), wait_old=False)
                time.sleep(settle)
            timing = self.restart(i)
            if balancer is not None:
                balancer.reload(replicas=rotation, wait_old=False)
            if after is not None:
                after(i, timing)
            out.append(timing)
        return out

    def stop(self, grace: float | None = None) -> None:
        """Stop every replica by PID (SIGTERM, SIGKILL after grace) and remove the log folder."""
        _STARTED.discard(self)
        limit = grace if grace is not None else self.graceful_seconds + 5
        for r in self.replicas:
            if r.process is not None and r.process.poll() is None:
                r.process.send_signal(signal.SIGTERM)
        for r in self.replicas:
            if r.process is not None:
                stop_process(r.process, limit)
        if self.replicas:
            self.last_logs = [r.log() for r in self.replicas]
        self.replicas = []
        shutil.rmtree(self.log_dir, ignore_errors=True)

    def __enter__(self) -> ReplicaSet:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<ReplicaSet {self.folder.name} x{self.n}: {', '.join(self.urls) or '멈춤'}>"
