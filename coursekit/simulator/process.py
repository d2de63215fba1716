"""Run the simulator as a real subprocess (for tests, graders, notebooks)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

import httpx

from .config import validate

__all__ = ["SimulatorProcess", "SimulatorError"]


class SimulatorError(RuntimeError):
    pass


def _flags(config: dict[str, Any]) -> list[str]:
    out = []
    for key, value in config.items():
        if value is None:
            continue
        flag = "--" + key.replace("_", "-")
        if isinstance(value, (list, tuple)):
            value = ",".join(value)
        out += [flag, str(value)]
    return out


class SimulatorProcess:
    """Start `python -m coursekit.simulator` on a free loopback port and wait until healthy.

        with SimulatorProcess(latency="zero") as sim:
            os.environ["GOOGLE_GEMINI_BASE_URL"] = sim.base_url
            ...
            sim.stats()["requests_total"]

    The listening socket is bound here and inherited by the child, so there is no port race.
    """

    def __init__(self, host: str = "127.0.0.1", startup_timeout: float = 20.0,
                 env: dict[str, str] | None = None, **config: Any):
        self.host = host
        self.startup_timeout = startup_timeout
        self._config = validate(config)
        self._env = env
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None
        self._log = None
        self._client: httpx.Client | None = None

    # ---- lifecycle ------------------------------------------------------------
    def start(self) -> "SimulatorProcess":
        if self.proc is not None:
            return self
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, 0))
        sock.listen(4096)
        self.port = sock.getsockname()[1]
        fd = sock.fileno()
        os.set_inheritable(fd, True)
        env = dict(os.environ)
        # SIM_* variables of the parent must not silently change a test's simulator
        for k in list(env):
            if k.startswith("SIM_"):
                del env[k]
        if self._env:
            env.update(self._env)
        self._log = tempfile.TemporaryFile()
        cmd = [sys.executable, "-m", "coursekit.simulator", "--host", self.host, "--port", str(self.port),
               "--fd", str(fd)] + _flags(self._config)
        try:
            self.proc = subprocess.Popen(cmd, pass_fds=(fd,), stdout=self._log, stderr=subprocess.STDOUT,
                                         env=env)
        finally:
            sock.close()
        self._client = httpx.Client(base_url=self.base_url, timeout=5.0)
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self.proc.poll() is not None:
                out = self.output()
                self.stop()
                raise SimulatorError(f"시뮬레이터가 시작하자마자 종료되었습니다 (코드 {self.proc.returncode}):\n{out}")
            try:
                if self._client.get("/_sim/health", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                out = self.output()
                self.stop()
                raise SimulatorError(f"시뮬레이터가 {self.startup_timeout}초 안에 준비되지 않았습니다:\n{out}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> "SimulatorProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- access -----------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def env(self, api_key: str = "sim-key") -> dict[str, str]:
        """Environment variables that point a client at this simulator."""
        return {"GOOGLE_GEMINI_BASE_URL": self.base_url, "GOOGLE_API_KEY": api_key}

    def output(self) -> str:
        if self._log is None:
            return ""
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def _req(self, method: str, path: str, **kw) -> Any:
        if self._client is None:
            raise SimulatorError("시뮬레이터가 실행 중이 아닙니다")
        r = self._client.request(method, path, **kw)
        if r.status_code >= 400:
            raise SimulatorError(f"{method} {path} -> {r.status_code}: {r.text}")
        return r.json()

    def stats(self) -> dict:
        return self._req("GET", "/_sim/stats")

    def upstream_calls(self) -> int:
        """generateContent + streamGenerateContent calls since the last reset (each retry counts)."""
        by_action = self.stats().get("by_action", {})
        return int(by_action.get("generateContent", 0)) + int(by_action.get("streamGenerateContent", 0))

    def requests(self, limit: int | None = None) -> list[dict]:
        """The last `limit` answered generate/stream requests, oldest first (GET /_sim/requests):
        model, question, system_hash, grounding, brevity, entry_id, outcome, tokens, ...; judge calls also
        judge_verdict and judge_score (README 10)."""
        params = {"limit": limit} if limit is not None else None
        return self._req("GET", "/_sim/requests", params=params)["requests"]

    def reset(self, config: bool = False) -> dict:
        """Counters, quota windows and RNG back to the start; config=True also restores the
        configuration the simulator was started with."""
        return self._req("POST", "/_sim/reset", json={"config": True} if config else None)

    def config(self) -> dict:
        return self._req("GET", "/_sim/config")

    def configure(self, **changes: Any) -> dict:
        return self._req("PATCH", "/_sim/config", json=changes)
