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
import shutil
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from . import lesson

__all__ = ["DEMO_SOURCE", "OTHER_KEY", "WIDGET_KEY", "LoadResult", "load", "metric", "show", "start_balancer",
           "start_redis", "start_replicas", "start_widget"]

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


def start_replicas(env: Mapping[str, str] | None = None, n: int = 2, name: str = "replicas"):
    """`n` replicas of the demo as a coursekit.replicas.ReplicaSet (same port again after a restart, so nginx
    needs no reload): `.restart(i)`, `.rolling_restart(after=...)`, `.addresses`. Health = GET /ready.
    They talk to the lesson's simulator; stopped by `lesson.cleanup()` and at exit."""
    from .replicas import ReplicaSet

    folder = lesson.workdir() / name
    if not folder.exists():
        shutil.copytree(DEMO_SOURCE, folder, ignore=shutil.ignore_patterns("__pycache__"))
    full = {**lesson.simulator().env(), "WIDGET_API_KEYS": f"{WIDGET_KEY},{OTHER_KEY}", **(env or {})}
    rs = ReplicaSet(folder, n=n, env=full, module="app", health_path="/ready", graceful_seconds=10).start()
    lesson.on_cleanup(rs.stop)
    return rs


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
         verify: Any = True, path: str = "/ask", during=None, obey_retry_after: bool = False,
         until: threading.Event | None = None, keepalive: bool = True) -> LoadResult:
    """`users` concurrent clients (asyncio + httpx, in a thread: a notebook's loop is already running)
    each sending POST /ask back to back (`pause` s between) for `seconds`, or `requests` in total.
    User i uses keys[i % len(keys)]. A request that gets no answer within `timeout` counts as status 0.
    `during(elapsed_s)` is called from a thread every 0.1 s while the load runs (chaos: stop Redis ...).
    With `obey_retry_after` a user waits the `Retry-After` seconds of a 429/503 before its next request.
    `until`: users stop early once this event is set (`seconds` is then the upper bound).
    `keepalive=False`: one connection per request (`Connection: close`), for loads across an nginx reload,
    which closes the old workers' idle keep-alive connections (a POST sent on one at that instant is lost)."""
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
            if until is not None and until.is_set():
                return
            q = QUESTIONS[(i + n) % len(QUESTIONS)]
            n += 1
            start = time.monotonic()
            try:
                headers = {"X-API-Key": key} if keepalive else {"X-API-Key": key, "Connection": "close"}
                r = await client.post(path, json={"q": q}, headers=headers)
                status = r.status_code
                body = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
                code, model = str(body.get("code", "")), str(body.get("model", ""))
                result.headers.append(dict(r.headers))
            except httpx.HTTPError as exc:
                status, code, model = 0, type(exc).__name__, ""
            result.rows.append((start - t0, time.monotonic() - start, status, code, model, key))
            wait = pause
            if obey_retry_after and status in (429, 503) and result.headers[-1].get("retry-after", "").isdigit():
                wait = max(wait, float(result.headers[-1]["retry-after"]))
            if wait:
                await asyncio.sleep(wait)

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
        except BaseException as exc:  # noqa: BLE001 (surfaced in the caller's thread)
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


def metric(url: str, name: str) -> float:
    """Sum of the samples called `name` on <url>/metrics (0.0 when none)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(url.rstrip("/") + "/metrics", timeout=10).text
    return sum(s.value for fam in text_string_to_metric_families(text) for s in fam.samples if s.name == name)


# --------------------------------------------------------------------------- Redis, nginx
def start_redis():
    """A real redis-server (coursekit.redis_server.RedisServer) on a free loopback port: `.url`, `.client()`,
    `.stop()` and `.start()` again on the same port for an outage. Stopped by `lesson.cleanup()` and at exit."""
    from .redis_server import RedisServer, find_redis

    if find_redis() is None:
        raise lesson.LessonError("이 절은 진짜 Redis 가 필요합니다 (Debian: apt-get install redis-server, 코스: .ci/install-redis-nginx.sh).")
    server = RedisServer().start()
    lesson.on_cleanup(server.stop)
    return server


def start_balancer(fragment: str, replicas):
    """A real nginx (coursekit.balancer.Balancer) in front of the replicas, with HTTPS from its own test CA
    (trustme): the http-context `fragment` uses ${REPLICA_1}, ${REPLICA_2}, ${HTTP_PORT}, ${HTTPS_PORT},
    ${TLS_CERT}, ${TLS_KEY}. `.http_url`, `.https_url`, `.ssl_context()` (for httpx `verify=`),
    `.reload(replicas=[...])`, `.wait_served(address)`. `replicas`: lesson services or a ReplicaSet.
    Stopped by `lesson.cleanup()` and at exit."""
    from .balancer import Balancer, find_nginx

    if find_nginx() is None:
        raise lesson.LessonError("이 절은 진짜 nginx 가 필요합니다 (Debian: apt-get install nginx, 코스: .ci/install-redis-nginx.sh).")
    addresses = replicas.addresses if hasattr(replicas, "addresses") else [r.port for r in replicas]
    lb = Balancer(fragment, replicas=addresses).start()
    lesson.on_cleanup(lb.stop)
    return lb
