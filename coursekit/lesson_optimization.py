"""Plumbing for the step 06 lesson (reliability and scaling), so its cells teach and measure.

    from coursekit import lesson, lesson_optimization as lo

    widget = lo.start_widget({"WIDGET_RETRY": "deadline"})   # the demo service, a real uvicorn
    run = lo.load(widget.url, users=20, seconds=4)             # a small asyncio load: statuses, latencies
    redis = lo.start_redis()                                   # a real redis-server on a free port
    lb = lo.start_balancer([w1, w2])                           # a real nginx in front of two replicas (TLS)

The demo service lives in coursekit/data/faq_widget_prod/ (copied into the lesson's work folder). Everything
started here is stopped by PID when the kernel exits and by `lesson.cleanup()`. Messages meant for people
are Korean.
"""

from __future__ import annotations

import asyncio
import math
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from . import lesson
from .procs import free_port, port_open, stop_process

__all__ = ["DEMO_SOURCE", "OTHER_KEY", "WIDGET_KEY", "LoadResult", "load", "quick_checks", "show", "start_balancer",
           "start_redis", "start_widget"]

DEMO_SOURCE = Path(__file__).resolve().parent / "data" / "faq_widget_prod"
WIDGET_KEY = "lab-service-key"
OTHER_KEY = "second-client-key"
QUESTIONS = ["요금제가 어떻게 돼요?", "API 키를 잃어버렸어요", "서울 리전이 있나요?", "로그는 얼마나 보관하나요?"]


def start_widget(env: Mapping[str, str] | None = None, name: str = "faq-widget") -> lesson.Service:
    """Copy the demo (coursekit/data/faq_widget_prod) into the work folder and run it with uvicorn against
    the lesson's simulator. `env` sets WIDGET_RETRY, WIDGET_FALLBACK, WIDGET_RATE_LIMIT ... (see app.py)."""
    folder = lesson.workdir() / name
    if not folder.exists():
        shutil.copytree(DEMO_SOURCE, folder, ignore=shutil.ignore_patterns("__pycache__"))
    full = {"WIDGET_API_KEYS": f"{WIDGET_KEY},{OTHER_KEY}", **(env or {})}
    return lesson.start_service(folder, module="app", env=full)


def show(file: str = "app.py", start: str | None = None, end: str | None = None):
    """The demo's `file` (or the lines from the first one containing `start` up to the line before the
    next one containing `end`) as highlighted code in the notebook."""
    return lesson.show_source(DEMO_SOURCE / file, start, end)


# --------------------------------------------------------------------------- load
@dataclass
class LoadResult:
    """One load run: every request's (start offset s, latency s, status, body code, model, key)."""

    rows: list[tuple[float, float, int, str, str, str]] = field(default_factory=list)
    seconds: float = 0.0
    headers: list[dict[str, str]] = field(default_factory=list, repr=False)

    @property
    def statuses(self) -> Counter:
        return Counter(r[2] for r in self.rows)

    @property
    def latencies(self) -> list[float]:
        return [r[1] for r in self.rows]

    def quantile(self, q: float, rows: Sequence[tuple] | None = None) -> float:
        xs = sorted(r[1] for r in (self.rows if rows is None else rows))
        return xs[max(0, math.ceil(q * len(xs)) - 1)] if xs else math.nan

    @property
    def p50(self) -> float:
        return self.quantile(0.5)

    @property
    def p95(self) -> float:
        return self.quantile(0.95)

    @property
    def success(self) -> float:
        return sum(r[2] == 200 for r in self.rows) / max(1, len(self.rows))

    def count(self, status: int | None = None, key: str | None = None, code: str | None = None) -> int:
        return sum((status is None or r[2] == status) and (key is None or r[5] == key)
                   and (code is None or r[3] == code) for r in self.rows)

    def summary(self, label: str = "") -> str:
        codes = dict(sorted(self.statuses.items()))
        return (f"{label}요청 {len(self.rows)}개 / {self.seconds:.1f}초, 성공률 {self.success:.1%}, "
                f"p50 {self.p50:.2f}s p95 {self.p95:.2f}s, 상태 {codes}")


def load(url: str, users: int = 20, seconds: float | None = 4.0, requests: int | None = None,
         keys: Sequence[str] = (WIDGET_KEY,), pause: float = 0.0, timeout: float = 15.0,
         verify: Any = True, path: str = "/ask", during=None) -> LoadResult:
    """`users` concurrent clients (asyncio + httpx, in a thread: a notebook's loop is already running)
    each sending POST /ask back to back (`pause` s between) for `seconds`, or `requests` in total.
    User i uses keys[i % len(keys)]. A request that gets no answer within `timeout` counts as status 0.
    `during(elapsed_s)` is called from a thread every 0.1 s while the load runs (chaos: stop Redis ...)."""
    result = LoadResult()
    left = [requests] if requests is not None else None

    async def user(i: int, client: httpx.AsyncClient, t0: float, stop_at: float) -> None:
        key = keys[i % len(keys)]
        n = 0
        while True:
            if left is not None:
                if left[0] <= 0:
                    return
                left[0] -= 1
            elif time.monotonic() >= stop_at:
                return
            q = QUESTIONS[(i + n) % len(QUESTIONS)]
            n += 1
            start = time.monotonic()
            try:
                r = await client.post(path, json={"q": q}, headers={"X-API-Key": key})
                status = r.status_code
                body = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
                code, model = str(body.get("code", "")), str(body.get("model", ""))
                result.headers.append(dict(r.headers))
            except httpx.HTTPError as exc:
                status, code, model = 0, type(exc).__name__, ""
            result.rows.append((start - t0, time.monotonic() - start, status, code, model, key))
            if pause:
                await asyncio.sleep(pause)

    async def main() -> None:
        limits = httpx.Limits(max_connections=users + 5, max_keepalive_connections=users + 5)
        async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits, verify=verify) as client:
            t0 = time.monotonic()
            stop_at = t0 + (seconds or 1e9)
            await asyncio.gather(*(user(i, client, t0, stop_at) for i in range(users)))
            result.seconds = time.monotonic() - t0

    done = threading.Event()
    error: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:  # surfaced in the caller's thread
            error.append(exc)
        finally:
            done.set()

    worker = threading.Thread(target=run, name="lesson-load", daemon=True)
    t0 = time.monotonic()
    worker.start()
    while not done.wait(0.1):
        if during is not None:
            during(time.monotonic() - t0)
    if error:
        raise error[0]
    return result


# --------------------------------------------------------------------------- self-check
QUICK_CHECKS = ("step06.no_retry", "step06.tls")


def quick_checks() -> list[str]:
    """The few step 06 checks the lesson's last cell runs (those of QUICK_CHECKS the manifest has)."""
    from . import manifest

    known = {c.id for c in manifest.load().checks}
    return [c for c in QUICK_CHECKS if c in known]


# --------------------------------------------------------------------------- Redis, nginx
class _Redis:
    """redis-server on a free loopback port (no persistence), stopped by PID; `.stop()` / `.start()` keep the port."""

    def __init__(self):
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self):
        exe = shutil.which("redis-server") or "/usr/bin/redis-server"
        if not Path(exe).exists():
            raise lesson.LessonError("redis-server 가 없습니다 (Debian: apt-get install redis-server, 코스: .ci/install-redis-nginx.sh).")
        self.proc = subprocess.Popen([exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--daemonize", "no"], cwd=lesson.workdir(),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        _wait_port(self.port, self.proc, "redis-server")
        return self

    def stop(self):
        if self.proc is not None:
            stop_process(self.proc, 5)
            self.proc = None

    def client(self):
        import redis

        return redis.Redis.from_url(self.url)


def _wait_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not port_open(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise lesson.LessonError(f"{what} 가 포트 {port} 를 열지 않았습니다 (종료 코드 {proc.poll()}).")
        time.sleep(0.05)


def start_redis():
    """A real redis-server on a free loopback port (coursekit.redis_server.RedisServer when the kit has it);
    `.url`, `.stop()` and `.start()` again on the same port for an outage. Stopped by `lesson.cleanup()`."""
    try:
        from .redis_server import RedisServer  # the kit's own, once it exists
    except ImportError:
        server = _Redis().start()
        lesson.on_cleanup(server.stop)
        return server
    server = RedisServer()
    server.__enter__()
    lesson.on_cleanup(lambda: server.__exit__(None, None, None))
    return server


@dataclass
class _Nginx:
    http_url: str
    https_url: str
    ca_file: str
    prefix: Path
    proc: subprocess.Popen

    def stop(self) -> None:
        stop_process(self.proc, 5)

    def error_log(self) -> str:
        path = self.prefix / "error.log"
        return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""


def _start_nginx(fragment: str, replicas: Sequence[str]) -> _Nginx:
    import trustme

    exe = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(exe).exists():
        raise lesson.LessonError("nginx 가 없습니다 (Debian: apt-get install nginx, 코스: .ci/install-redis-nginx.sh).")
    prefix = Path(tempfile.mkdtemp(prefix="nginx-", dir=lesson.workdir()))
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(prefix / "ca.pem"))
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.cert_chain_pems[0].write_to_path(str(prefix / "cert.pem"))
    cert.private_key_pem.write_to_path(str(prefix / "key.pem"))
    http_port, https_port = free_port(), free_port()
    values = {"REPLICA_1": replicas[0], "REPLICA_2": replicas[1], "HTTP_PORT": str(http_port),
              "HTTPS_PORT": str(https_port), "TLS_CERT": str(prefix / "cert.pem"), "TLS_KEY": str(prefix / "key.pem")}
    rendered = re.sub(r"\$\{([A-Z0-9_]+)\}", lambda m: values.get(m.group(1), m.group(0)), fragment)
    (prefix / "site.conf").write_text(rendered, encoding="utf-8")
    temps = " ".join(f"{d}_temp_path {prefix}/{d};" for d in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    (prefix / "nginx.conf").write_text(
        f"pid {prefix}/nginx.pid;\nerror_log {prefix}/error.log;\nevents {{}}\n"
        f"http {{ access_log off; {temps} include {prefix}/site.conf; }}\n", encoding="utf-8")
    base = [exe, "-p", str(prefix), "-e", str(prefix / "error.log"), "-c", str(prefix / "nginx.conf")]
    test = subprocess.run([*base, "-t"], capture_output=True, text=True)
    if test.returncode != 0:
        raise lesson.LessonError(f"nginx -t 가 설정을 거부했습니다:\n{test.stderr}")
    proc = subprocess.Popen([*base, "-g", "daemon off;"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    _wait_port(https_port, proc, "nginx")
    return _Nginx(f"http://127.0.0.1:{http_port}", f"https://127.0.0.1:{https_port}", str(prefix / "ca.pem"),
                  prefix, proc)


def start_balancer(fragment: str, replicas: Sequence[lesson.Service]):
    """A real nginx in front of the replicas, with HTTPS from a test CA (trustme): the http-context `fragment`
    uses ${REPLICA_1}, ${REPLICA_2}, ${HTTP_PORT}, ${HTTPS_PORT}, ${TLS_CERT}, ${TLS_KEY}. `.http_url`,
    `.https_url`, `.ca_file` (for httpx `verify=`). Stopped by `lesson.cleanup()` and at exit."""
    lb = _start_nginx(fragment, [f"127.0.0.1:{r.port}" for r in replicas])
    lesson.on_cleanup(lb.stop)
    return lb
