"""Plumbing for the step 06 lesson (reliability and scaling), so its cells teach and measure.

    from coursekit import lesson, lesson_optimization as lo

    widget = lo.start_widget({"WIDGET_RETRY": "deadline"})   # the demo service, a real uvicorn
    run = lo.load(widget.url, users=20, seconds=4)             # a small asyncio load: statuses, latencies
    redis = lo.start_redis()                                   # a real redis-server on a free port
    lb = lo.start_balancer([w1, w2])                           # a real nginx in front of two replicas (TLS)
    b = lo.burst(widget.url, 100)                              # 100 identical concurrent /ask: X-Cache values
    t = lo.stream_timing(widget.url)                           # POST /ask/stream: first delta vs done
    lo.disconnect_after_first(widget.url)                      # read one delta, leave (simulator: abandoned)

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

from . import lesson, sse

__all__ = ["DEMO_SOURCE", "OTHER_KEY", "WIDGET_KEY", "BurstResult", "LoadResult", "StreamTiming", "burst",
           "disconnect_after_first", "load", "metric", "show", "start_balancer", "start_redis", "start_replicas",
           "start_widget", "stream_timing"]

DEMO_SOURCE = Path(__file__).resolve().parent / "data" / "faq_widget_prod"
WIDGET_KEY = "lab-service-key"
OTHER_KEY = "second-client-key"
QUESTIONS = ["요금제가 어떻게 돼요?", "API 키를 잃어버렸어요", "서울 리전이 있나요?", "로그는 얼마나 보관하나요?"]
LONG_QUESTION = "요금제는 어떻게 되나요?"   # the demo's longest answer (7 stream chunks)


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


# --------------------------------------------------------------------------- cache, coalescing, streaming
def _in_thread(main):
    """Run the coroutine function `main` with asyncio.run in a thread (a notebook's loop is already running)
    and return its result, re-raising its exception here."""
    out: list = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            out.append(asyncio.run(main()))
        except BaseException as exc:  # noqa: BLE001 (surfaced in the caller's thread)
            error.append(exc)

    worker = threading.Thread(target=run, name="lesson-burst", daemon=True)
    worker.start()
    worker.join()
    if error:
        raise error[0]
    return out[0]


@dataclass
class BurstResult:
    """n identical concurrent requests: per request (in order sent) status, X-Cache header (None when absent),
    latency in seconds and JSON body."""

    statuses: list[int] = field(default_factory=list)
    caches: list[str | None] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    bodies: list[dict] = field(default_factory=list, repr=False)
    seconds: float = 0.0

    @property
    def cache_counts(self) -> Counter:
        return Counter(self.caches)

    def summary(self, label: str = "") -> str:
        xs = sorted(self.latencies)
        p50 = xs[max(0, math.ceil(0.5 * len(xs)) - 1)] if xs else math.nan
        caches = {("(없음)" if k is None else k): v for k, v in self.cache_counts.items()}
        return (f"{label}동시 요청 {len(self.statuses)}개 / {self.seconds:.2f}초, 상태 {dict(Counter(self.statuses))}, "
                f"X-Cache {caches}, p50 {p50:.3f}s 최대 {max(xs, default=math.nan):.3f}s")


def burst(url: str, n: int = 100, path: str = "/ask", json: Mapping[str, Any] | None = None,
          headers: Mapping[str, str] | None = None, timeout: float = 30.0) -> BurstResult:
    """`n` identical requests sent at the same instant (asyncio.gather, one connection each): statuses,
    X-Cache values and latencies. Default body {"q": QUESTIONS[0]}, default header X-API-Key: WIDGET_KEY.
    A request without an answer within `timeout` counts as status 0."""
    body = dict(json) if json is not None else {"q": QUESTIONS[0]}
    hdrs = dict(headers) if headers is not None else {"X-API-Key": WIDGET_KEY}
    result = BurstResult()
    rows: list = [None] * n

    async def main() -> BurstResult:
        limits = httpx.Limits(max_connections=n + 5, max_keepalive_connections=n + 5)
        async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:
            async def one(i: int) -> None:
                start = time.monotonic()
                try:
                    r = await client.post(path, json=body, headers=hdrs)
                    ok_json = r.headers.get("content-type", "").startswith("application/json")
                    rows[i] = (r.status_code, r.headers.get("x-cache"), time.monotonic() - start,
                               r.json() if ok_json else {})
                except httpx.HTTPError as exc:
                    rows[i] = (0, None, time.monotonic() - start, {"error": type(exc).__name__})
            t0 = time.monotonic()
            await asyncio.gather(*(one(i) for i in range(n)))
            result.seconds = time.monotonic() - t0
        return result

    _in_thread(main)
    for status, cache, latency, data in rows:
        result.statuses.append(status)
        result.caches.append(cache)
        result.latencies.append(latency)
        result.bodies.append(data)
    return result


@dataclass
class StreamTiming:
    """One SSE response read as it arrived: `ttfb_s` = seconds until the first `delta` event (NaN if none),
    `total_s` = seconds until the stream ended (or until we left), `text` = the deltas' texts joined,
    `events` = [(seconds, event name, data parsed as JSON when it is JSON)], `status`, `content_type`."""

    ttfb_s: float = math.nan
    total_s: float = math.nan
    text: str = ""
    events: list[tuple[float, str, Any]] = field(default_factory=list)
    status: int = 0
    content_type: str = ""

    @property
    def names(self) -> list[str]:
        return [e[1] for e in self.events]

    @property
    def last(self) -> tuple[str, Any] | None:
        """(event name, data) of the last event, e.g. ("done", {...}) or ("error", {"code": ...})."""
        return (self.events[-1][1], self.events[-1][2]) if self.events else None

    def summary(self, label: str = "") -> str:
        end = self.last[0] if self.last else "(이벤트 없음)"
        return (f"{label}첫 조각 {self.ttfb_s:.3f}s, 전체 {self.total_s:.3f}s, delta {self.names.count('delta')}개, "
                f"마지막 이벤트 {end}, 글자 {len(self.text)}자")


def _read_stream(url: str, path: str, json: Mapping[str, Any] | None, headers: Mapping[str, str] | None,
                 timeout: float, stop_after_first: bool) -> StreamTiming:
    body = dict(json) if json is not None else {"q": LONG_QUESTION}
    hdrs = dict(headers) if headers is not None else {"X-API-Key": WIDGET_KEY}
    out = StreamTiming()
    texts: list[str] = []
    start = time.monotonic()
    with httpx.Client(timeout=timeout) as client:
        with client.stream("POST", url.rstrip("/") + path, json=body, headers=hdrs) as r:
            out.status = r.status_code
            out.content_type = r.headers.get("content-type", "")
            if r.status_code == 200 and out.content_type.startswith("text/event-stream"):
                for name, data in sse.events(r.iter_lines()):
                    t = time.monotonic() - start
                    out.events.append((t, name, data))
                    if name == "delta":
                        texts.append(str(data.get("text", "")) if isinstance(data, dict) else str(data))
                        if math.isnan(out.ttfb_s):
                            out.ttfb_s = t
                            if stop_after_first:
                                break      # leaving the with-block closes the connection
            else:
                r.read()
                try:
                    out.events.append((time.monotonic() - start, "http_error", r.json()))
                except ValueError:
                    out.events.append((time.monotonic() - start, "http_error", r.text))
    out.total_s = time.monotonic() - start
    out.text = "".join(texts)
    return out


def stream_timing(url: str, path: str = "/ask/stream", json: Mapping[str, Any] | None = None,
                  headers: Mapping[str, str] | None = None, timeout: float = 30.0) -> StreamTiming:
    """POST an SSE endpoint and read it to the end as it arrives (httpx streaming): time to the first
    `delta` vs time to the end, the joined text and every event. Default body {"q": LONG_QUESTION}, default
    header X-API-Key: WIDGET_KEY. A non-SSE answer (401, 422, 429 ...) gives `status` and one "http_error" event."""
    return _read_stream(url, path, json, headers, timeout, stop_after_first=False)


def disconnect_after_first(url: str, path: str = "/ask/stream", json: Mapping[str, Any] | None = None,
                           headers: Mapping[str, str] | None = None, timeout: float = 30.0) -> StreamTiming:
    """Like stream_timing, but close the connection right after the first `delta` event (a user who closed
    the tab). Whether the service then stopped its upstream stream shows in the simulator's
    `stats()["streams"]["abandoned"]`."""
    return _read_stream(url, path, json, headers, timeout, stop_after_first=True)
