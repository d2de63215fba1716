"""Plumbing for the step 06 lesson (reliability and scaling), so its cells teach and measure.

    from coursekit import lesson, lesson_optimization as lo

    widget = lo.start_widget({"WIDGET_RETRY": "deadline"})   # the demo service, a real uvicorn
    run = lo.load(widget.url, users=20, seconds=4)             # a small asyncio load: statuses, latencies
    redis = lo.start_redis()                                   # a real redis-server on a free port
    lb = lo.start_balancer([w1, w2])                           # a real nginx in front of two replicas (TLS)
    b = lo.burst(widget.url, 100)                              # 100 identical concurrent /ask: X-Cache values
    t = lo.stream_timing(widget.url)                           # POST /ask/stream: first delta vs done
    lo.disconnect_after_first(widget.url)                      # read one delta, leave (simulator: abandoned)
    bt = lo.batch_timing(widget.url, n=8, sim=sim)             # 8 x POST /ask one by one vs one POST /ask/batch
    lo.token_summary(sim)                                      # output/thoughts tokens, MAX_TOKENS cuts, cost
    split = lo.users_split(widget.url, n_users=400)            # A/B: each user_id's variant (X-Variant)
    lo.variant_quality(sim)                                    # per variant: good/bad answers from the sim's log
    tl = lo.canary_timeline(widget.url, n=200)                 # per request: canary?, ok? (+ GET /canary)
    lr = lo.locust_run(widget.url, sim, users=10, seconds=8)   # step 04's headless Locust + the sim's tokens, cost

The demo service lives in coursekit/data/faq_widget_prod/ (copied into the lesson's work folder). Everything
started here is stopped by PID when the kernel exits and by `lesson.cleanup()`. Messages meant for people
are Korean.
"""

from __future__ import annotations

import ast
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

__all__ = ["DEMO_SOURCE", "OTHER_KEY", "WIDGET_KEY", "BatchTiming", "BurstResult", "CanaryTimeline", "LoadResult",
           "LocustRun", "SplitResult", "StreamTiming", "ab_questions", "batch_timing", "burst", "canary_timeline",
           "disconnect_after_first", "load", "locust_run", "metric", "show", "sim_rows", "start_balancer", "start_redis",
           "start_replicas", "start_widget", "stream_timing", "token_summary", "users_split", "variant_quality",
           "widget_prompts"]

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

    # the demo mounts prometheus_client's ASGI app: /metrics answers 307 -> /metrics/ (follow it)
    text = httpx.get(url.rstrip("/") + "/metrics", timeout=10, follow_redirects=True).text
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


# --------------------------------------------------------------------------- batching, token budgets
def _kb_questions() -> list[str]:
    from .simulator import knowledge

    return [e.questions[0] for e in knowledge.entries()]


def _off_kb_questions() -> list[str]:
    from .simulator import knowledge

    return list(knowledge.must_refuse())


def sim_rows(sim, limit: int | None = None) -> list[dict]:
    """The simulator's request log (GET /_sim/requests, oldest first, at most its log size of 1000 since the
    last reset): model, question, system_hash, entry_id, outcome, input/output/thoughts tokens, finish_reason ..."""
    path = "/_sim/requests" + (f"?limit={limit}" if limit is not None else "")
    return sim._call("GET", path)["requests"]


def token_summary(sim) -> dict[str, Any]:
    """Totals over the simulator's log since the last reset (answer calls only, judge calls skipped):
    `requests`, `input_tokens`, `output_tokens`, `thoughts_tokens`, `truncated` (finish_reason MAX_TOKENS)
    and `cost_usd` (coursekit/data/models.toml prices; thoughts billed as output)."""
    from .simulator.models import cost_usd

    rows = [r for r in sim_rows(sim) if r.get("judge_verdict") is None]
    out = {"requests": len(rows), "input_tokens": 0, "output_tokens": 0, "thoughts_tokens": 0, "truncated": 0,
           "cost_usd": 0.0}
    for r in rows:
        out["input_tokens"] += r["input_tokens"] or 0
        out["output_tokens"] += r["output_tokens"] or 0
        out["thoughts_tokens"] += r["thoughts_tokens"] or 0
        out["truncated"] += r["finish_reason"] == "MAX_TOKENS"
        out["cost_usd"] += cost_usd(r["model"], r["input_tokens"] or 0, r["output_tokens"] or 0,
                                    r["thoughts_tokens"] or 0)
    out["cost_usd"] = round(out["cost_usd"], 8)
    return out


@dataclass
class BatchTiming:
    """The same `n` questions sent as n POST /ask one after another and as one POST /ask/batch:
    wall-clock seconds, the batch's status and items, and (with a simulator) the simulator's peak
    concurrency (`max_in_flight`) and upstream calls of each way."""

    n: int = 0
    sequential_s: float = math.nan
    batch_s: float = math.nan
    batch_status: int = 0
    results: list[dict] = field(default_factory=list, repr=False)
    sequential_in_flight: int | None = None
    batch_in_flight: int | None = None
    sequential_calls: int | None = None
    batch_calls: int | None = None

    @property
    def ok(self) -> int:
        return sum(bool(r.get("ok")) for r in self.results)

    @property
    def speedup(self) -> float:
        return self.sequential_s / self.batch_s if self.batch_s else math.nan

    def summary(self, label: str = "") -> str:
        peak = ("" if self.batch_in_flight is None else
                f", 시뮬레이터 최대 동시 요청 {self.sequential_in_flight} → {self.batch_in_flight}, "
                f"위로 간 호출 {self.sequential_calls} → {self.batch_calls}")
        return (f"{label}질문 {self.n}개: 하나씩 {self.sequential_s:.2f}s, 배치 한 번 {self.batch_s:.2f}s "
                f"({self.speedup:.1f}배), 배치 상태 {self.batch_status}, 성공 항목 {self.ok}/{len(self.results)}{peak}")


def batch_timing(url: str, n: int = 8, sim=None, questions: Sequence[str] | None = None,
                 headers: Mapping[str, str] | None = None, timeout: float = 60.0) -> BatchTiming:
    """Send `n` distinct questions (default: the first n knowledge-base questions) as n sequential POST /ask,
    then as one POST /ask/batch {"qs": [...]}. With `sim`, its counters are reset before each way to read
    `max_in_flight` and the upstream calls. Start the widget without a cache (the default) so both ways
    ask upstream."""
    qs = list(questions) if questions is not None else _kb_questions()[:n]
    hdrs = dict(headers) if headers is not None else {"X-API-Key": WIDGET_KEY}
    out = BatchTiming(n=len(qs))
    with httpx.Client(base_url=url, timeout=timeout) as client:
        if sim is not None:
            sim.reset()
        t = time.monotonic()
        for q in qs:
            client.post("/ask", json={"q": q}, headers=hdrs)
        out.sequential_s = time.monotonic() - t
        if sim is not None:
            stats = sim.stats()
            out.sequential_in_flight, out.sequential_calls = stats["max_in_flight"], sim.upstream_calls()
            sim.reset()
        t = time.monotonic()
        r = client.post("/ask/batch", json={"qs": qs}, headers=hdrs)
        out.batch_s = time.monotonic() - t
        out.batch_status = r.status_code
        out.results = r.json().get("results", []) if r.status_code == 200 else []
        if sim is not None:
            stats = sim.stats()
            out.batch_in_flight, out.batch_calls = stats["max_in_flight"], sim.upstream_calls()
    return out


# --------------------------------------------------------------------------- A/B test
def widget_prompts() -> dict[str, str]:
    """The demo's prompt versions (the PROMPTS dict of app.py, read from its source: version -> system text)."""
    tree = ast.parse((DEMO_SOURCE / "app.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "PROMPTS" for t in node.targets):
            return ast.literal_eval(node.value)
    raise lesson.LessonError("데모 app.py 에 PROMPTS 가 없습니다.")


def ab_questions(n: int, off_kb_share: float = 0.25) -> list[str]:
    """`n` questions, round(off_kb_share x n) of them outside the knowledge base (they must be refused),
    spread evenly; the rest cycle through the knowledge base's questions. Deterministic."""
    kb, off = _kb_questions(), _off_kb_questions()
    out, k, o, acc = [], 0, 0, 0.0
    for _ in range(n):
        acc += off_kb_share
        if acc >= 1 - 1e-9:
            acc -= 1
            out.append(off[o % len(off)])
            o += 1
        else:
            out.append(kb[k % len(kb)])
            k += 1
    return out


@dataclass
class SplitResult:
    """Every answered request of users_split: (user_id, variant or None, status, question, reply)."""

    rows: list[tuple[str, str | None, int, str, str]] = field(default_factory=list)

    @property
    def counts(self) -> Counter:
        """Users per variant (a user counted once, with the variant of their first answer)."""
        first: dict[str, str | None] = {}
        for user, variant, *_ in self.rows:
            first.setdefault(user, variant)
        return Counter(first.values())

    def shares(self) -> dict[str | None, float]:
        c = self.counts
        total = sum(c.values()) or 1
        return {k: round(v / total, 4) for k, v in sorted(c.items(), key=lambda kv: str(kv[0]))}

    @property
    def sticky(self) -> bool:
        """Every user got the same variant on every answer."""
        seen: dict[str, set] = {}
        for user, variant, *_ in self.rows:
            seen.setdefault(user, set()).add(variant)
        return all(len(v) == 1 for v in seen.values())

    @property
    def statuses(self) -> Counter:
        return Counter(r[2] for r in self.rows)

    def summary(self, label: str = "") -> str:
        users = sum(self.counts.values())
        return (f"{label}사용자 {users}명, 요청 {len(self.rows)}개, 변형별 사용자 {dict(self.counts)} "
                f"(비율 {self.shares()}), 매번 같은 변형: {'예' if self.sticky else '아니요'}, "
                f"상태 {dict(self.statuses)}")


def users_split(url: str, n_users: int = 200, repeats: int = 1, prefix: str = "user", off_kb_share: float = 0.25,
                concurrency: int = 16, headers: Mapping[str, str] | None = None,
                timeout: float = 30.0) -> SplitResult:
    """`n_users` users (user_id f"{prefix}-{i}") each ask `repeats` questions (POST /ask with user_id;
    questions from ab_questions, user i's j-th is question (i + j x n_users)) with `concurrency` requests at a
    time. Each answer's variant is read from the X-Variant header. The simulator keeps the last 1000 answers
    for variant_quality: keep n_users x repeats <= 1000 after a reset."""
    qs = ab_questions(n_users * repeats, off_kb_share)
    hdrs = dict(headers) if headers is not None else {"X-API-Key": WIDGET_KEY}
    jobs = [(f"{prefix}-{i}", qs[i + j * n_users]) for j in range(repeats) for i in range(n_users)]
    result = SplitResult()

    async def main() -> SplitResult:
        gate = asyncio.Semaphore(concurrency)
        limits = httpx.Limits(max_connections=concurrency + 5, max_keepalive_connections=concurrency + 5)
        async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:
            async def one(user: str, q: str) -> None:
                async with gate:
                    try:
                        r = await client.post("/ask", json={"q": q, "user_id": user}, headers=hdrs)
                        reply = r.json().get("reply", "") if r.status_code == 200 else ""
                        result.rows.append((user, r.headers.get("x-variant"), r.status_code, q, reply))
                    except httpx.HTTPError:
                        result.rows.append((user, None, 0, q, ""))
            await asyncio.gather(*(one(u, q) for u, q in jobs))
        return result

    return _in_thread(main)


def variant_quality(sim, prompts: Mapping[str, str] | None = None, first: int | None = None) -> dict[str, dict[str, Any]]:
    """Per prompt version, from the simulator's own log since the last reset (rows grouped by the hash of
    their system prompt; judge calls skipped): `n`, `good` (a knowledge-base question answered correctly,
    or a question outside it refused), `bad` (everything else: wrong, made up, generic, refused wrongly),
    `good_rate`, `outcomes` (correct/refused/hallucinated/generic) and `output_tokens` (total).
    Versions with no answers are left out. `prompts`: version -> system text (default: widget_prompts()).
    `first`: count only each version's first `first` answers in the log's order (an experiment stopped early)."""
    from .simulator.prompts import system_hash

    by_hash = {system_hash(text): name for name, text in (prompts or widget_prompts()).items()}
    out: dict[str, dict[str, Any]] = {}
    for r in sim_rows(sim):
        name = by_hash.get(r.get("system_hash"))
        if name is None or r.get("judge_verdict") is not None or r.get("outcome") is None:
            continue
        v = out.setdefault(name, {"n": 0, "good": 0, "bad": 0, "good_rate": 0.0, "outcomes": Counter(),
                                  "output_tokens": 0})
        if first is not None and v["n"] >= first:
            continue
        good = r["outcome"] == "correct" if r.get("entry_id") else r["outcome"] == "refused"
        v["n"] += 1
        v["good" if good else "bad"] += 1
        v["outcomes"][r["outcome"]] += 1
        v["output_tokens"] += r["output_tokens"] or 0
    for v in out.values():
        v["good_rate"] = round(v["good"] / v["n"], 4)
    return dict(sorted(out.items()))


# --------------------------------------------------------------------------- canary
@dataclass
class CanaryTimeline:
    """Requests in the order sent: (i, routed to the canary (X-Canary), ok (HTTP 200), status), and the
    widget's GET /canary at the end (`state`)."""

    rows: list[tuple[int, bool, bool, int]] = field(default_factory=list)
    state: dict = field(default_factory=dict)

    @property
    def canary_requests(self) -> int:
        return sum(r[1] for r in self.rows)

    @property
    def errors(self) -> int:
        return sum(not r[2] for r in self.rows)

    def rolling_error_rate(self, window: int = 20) -> list[float]:
        """Error rate of the last `window` requests after each request (for a plot over i)."""
        fails = [not r[2] for r in self.rows]
        return [sum(fails[max(0, i + 1 - window):i + 1]) / min(window, i + 1) for i in range(len(fails))]

    @property
    def last_canary(self) -> int | None:
        """Index of the last request routed to the canary (None if none)."""
        idx = [r[0] for r in self.rows if r[1]]
        return idx[-1] if idx else None

    def summary(self, label: str = "") -> str:
        return (f"{label}요청 {len(self.rows)}개, 카나리로 {self.canary_requests}개, 실패 {self.errors}개, "
                f"마지막 카나리 요청 #{self.last_canary}, 상태 {self.state.get('state')} "
                f"(이유 {self.state.get('reason')})")


def canary_timeline(url: str, n: int = 200, users: int = 4, questions: Sequence[str] | None = None,
                    headers: Mapping[str, str] | None = None, timeout: float = 30.0) -> CanaryTimeline:
    """`n` POST /ask, `users` at a time (request i is sent in order), each recorded as (i, canary?, ok?,
    status); then GET /canary. Run it with the widget's WIDGET_CANARY_* switches and, for a bad canary,
    inside `lesson.sim_faults(fault_models=[<canary model>], error_503_rate=1.0)`."""
    qs = list(questions) if questions is not None else QUESTIONS
    hdrs = dict(headers) if headers is not None else {"X-API-Key": WIDGET_KEY}
    out = CanaryTimeline()
    rows: list = [None] * n
    counter = iter(range(n))

    async def main() -> None:
        limits = httpx.Limits(max_connections=users + 5, max_keepalive_connections=users + 5)
        async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:
            async def user() -> None:
                for i in counter:
                    try:
                        r = await client.post("/ask", json={"q": qs[i % len(qs)]}, headers=hdrs)
                        rows[i] = (i, r.headers.get("x-canary") == "true", r.status_code == 200, r.status_code)
                    except httpx.HTTPError:
                        rows[i] = (i, False, False, 0)
            await asyncio.gather(*(user() for _ in range(users)))
            r = await client.get("/canary", headers=hdrs)
            out.state = r.json() if r.status_code == 200 else {}

    _in_thread(main)
    out.rows = rows
    return out


# --------------------------------------------------------------------------- closing comparison with Locust
@dataclass
class LocustRun:
    """One headless Locust run against the widget (step 04's runner and locustfile,
    `coursekit.lesson_monitoring.load`) and what the simulator counted meanwhile: `upstream_calls`
    (generateContent, each retry counts) and `tokens` (`token_summary`: tokens, MAX_TOKENS cuts, cost).
    The widget's /metrics has no token or cost metric, so tokens and cost come from the simulator;
    `widget_metrics` lists the widget_* metric names it does expose."""

    locust: Any                       # coursekit.lesson_monitoring.LoadResult
    upstream_calls: int
    tokens: dict[str, Any]
    widget_metrics: list[str] = field(default_factory=list)

    @property
    def requests(self) -> int:
        return int(self.locust.by_name.get("POST /ask", {}).get("requests", 0))

    @property
    def p50(self) -> float:
        return self.locust.by_name.get("POST /ask", {}).get("p50", math.nan)

    @property
    def p95(self) -> float:
        return self.locust.by_name.get("POST /ask", {}).get("p95", math.nan)

    def _per(self, value: float) -> float:
        return value / self.requests if self.requests else math.nan

    @property
    def calls_per_request(self) -> float:
        return self._per(self.upstream_calls)

    @property
    def tokens_per_request(self) -> float:
        """Output + thinking tokens (both billed at the output price) per answered request."""
        return self._per(self.tokens["output_tokens"] + self.tokens["thoughts_tokens"])

    @property
    def cost_per_request(self) -> float:
        return self._per(self.tokens["cost_usd"])

    def summary(self, label: str = "") -> str:
        ask = self.locust.by_name.get("POST /ask", {})
        return (f"{label}Locust 요청 {self.requests}개 (실패 {ask.get('failures', 0):.0f}), {ask.get('rps', math.nan):.1f} req/s, "
                f"p50 {self.p50:.3f}s p95 {self.p95:.3f}s | 시뮬레이터: 업스트림 호출 "
                f"{self.upstream_calls}번 (요청당 {self.calls_per_request:.2f}), 출력+사고 토큰 요청당 "
                f"{self.tokens_per_request:.1f}, 잘린 답 {self.tokens['truncated']}, 비용 요청당 ${self.cost_per_request:.7f}")


def locust_run(url: str, sim, users: int = 10, seconds: float = 8, stop_timeout: float = 5) -> LocustRun:
    """Reset the simulator's counters, run step 04's headless Locust (POST /ask over the knowledge base's
    questions, no votes: this widget has no /votes) against `url`, letting the users finish the request they
    are in at the end (`stop_timeout` s: otherwise upstream calls would be counted for requests Locust never
    recorded), then read the simulator's counters and the widget's metric names."""
    from . import lesson_monitoring

    sim.reset()
    run = lesson_monitoring.load(url, users=users, seconds=seconds, env={"VOTE_SHARE": "0"}, stop_timeout=stop_timeout)
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(url.rstrip("/") + "/metrics", timeout=10, follow_redirects=True).text
    names = sorted(f.name for f in text_string_to_metric_families(text)
                   if f.name.startswith("widget_") and not f.name.endswith("_created"))
    return LocustRun(run, sim.upstream_calls(), token_summary(sim), names)
