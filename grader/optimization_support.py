"""Helpers of the step 06 grader: single requests and bursts over HTTP(S), the documented error JSON,
rate-limit headers, the per-request rows the grader's Locust scenario writes, and the "fleet"
(Redis, two replicas, the learner's nginx fragment, a test CA) built from the kit's components; for part 2 a
burst of one identical question, Prometheus samples, and a Server-Sent Events reader (events with arrival times).

Nothing here reads the learner's folder by itself except the fragment path the grader passes in.
"""

from __future__ import annotations

import json
import re
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from coursekit import sse

FRAGMENT = Path("balancer") / "nginx.conf.template"
RATELIMIT_FIELD = re.compile(r"(?:^|[,;\s])(limit|remaining|reset)\s*=\s*(\d+)")


# --------------------------------------------------------------------------- one request
@dataclass
class Reply:
    """What one request got back (status 0 = no HTTP answer: `error` says why)."""

    status: int
    seconds: float
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None
    error: str | None = None
    rid: str | None = None           # X-Request-ID the grader sent

    @property
    def code(self) -> str | None:
        return error_code(self.body)

    def short(self) -> str:
        if self.status == 0:
            return f"응답 없음 ({self.error}, {self.seconds:.2f}초)"
        what = f"HTTP {self.status}"
        if self.code:
            what += f" {self.code}"
        elif self.status != 200:
            text = json.dumps(self.body, ensure_ascii=False) if self.body is not None else "(JSON 아님)"
            what += f" 본문 {text[:120]}"
        return f"{what} ({self.seconds:.2f}초)"


def error_code(body: Any) -> str | None:
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        code = body["error"].get("code")
        return code if isinstance(code, str) else None
    return None


def documented_error(body: Any) -> bool:
    """The course's error JSON (step 02 contract): {"error": {"code": str, "message": str}}."""
    return (isinstance(body, dict) and isinstance(body.get("error"), dict)
            and isinstance(body["error"].get("code"), str) and isinstance(body["error"].get("message"), str))


def request(client: httpx.Client, method: str, url: str, *, timeout: float, rid: str | None = None,
            **kw) -> Reply:
    headers = dict(kw.pop("headers", None) or {})
    if rid:
        headers["X-Request-ID"] = rid
    started = time.monotonic()
    try:
        resp = client.request(method, url, headers=headers, timeout=timeout, **kw)
    except httpx.HTTPError as exc:
        return Reply(0, time.monotonic() - started, error=f"{type(exc).__name__}: {exc}"[:200], rid=rid)
    seconds = time.monotonic() - started
    try:
        body = resp.json()
    except ValueError:
        body = None
    return Reply(resp.status_code, seconds, {k.lower(): v for k, v in resp.headers.items()}, body, rid=rid)


def chat(client: httpx.Client, base_url: str, key: str | None, message: str, *, timeout: float,
         rid: str | None = None) -> Reply:
    headers = {"X-API-Key": key} if key is not None else {}
    return request(client, "POST", f"{base_url}/chat", timeout=timeout, rid=rid, headers=headers,
                   json={"message": message})


def burst(base_url: str, key: str, n: int, concurrency: int, *, timeout: float, verify: Any = True,
          message: str = "요금제 알려 주세요") -> list[Reply]:
    """n concurrent POST /chat with one key (`concurrency` threads, each its own connection pool)."""
    def worker(i: int) -> list[Reply]:
        out = []
        with httpx.Client(verify=verify) as client:
            for j in range(i, n, concurrency):
                out.append(chat(client, base_url, key, f"{message} (버스트 {j})", timeout=timeout))
        return out

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        return [r for part in pool.map(worker, range(concurrency)) for r in part]


def retry_after_ok(value: str | None) -> bool:
    """Retry-After as delay-seconds: an integer >= 1 (RFC 9110 §10.2.3; 0 invites a retry storm)."""
    return value is not None and value.strip().isdigit() and int(value.strip()) >= 1


def ratelimit_fields(value: str | None) -> dict[str, int]:
    """`RateLimit: limit=12, remaining=0, reset=57` (IETF draft style) -> {"limit": 12, ...}."""
    if not value:
        return {}
    return {m.group(1): int(m.group(2)) for m in RATELIMIT_FIELD.finditer(value)}


def count_by(replies: list[Reply]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in replies:
        key = str(r.status) if r.status else "응답 없음"
        if r.code:
            key += f" {r.code}"
        out[key] = out.get(key, 0) + 1
    return dict(sorted(out.items()))


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


# --------------------------------------------------------------------------- Locust rows
def read_rows(path: Path) -> list[dict]:
    """The rows the grader's Locust scenario (scenarios/step06_chat.py) wrote, one per response."""
    rows = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
    return rows


def statuses(rows: list[dict]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in rows:
        key = str(r.get("status") or "응답 없음")
        if r.get("code"):
            key += f" {r['code']}"
        out[key] = out.get(key, 0) + 1
    return dict(sorted(out.items()))


# --------------------------------------------------------------------------- replica logs
def request_lines(text: str) -> list[dict]:
    """JSON lines with event=request in a replica's output (step 05's one line per request)."""
    out = []
    for raw in text.splitlines():
        raw = raw.strip()
        if not raw.startswith("{"):
            continue
        try:
            obj = json.loads(raw)
        except ValueError:
            continue
        if isinstance(obj, dict) and obj.get("event") == "request":
            out.append(obj)
    return out


# --------------------------------------------------------------------------- cache (step06.cache)
def same_burst(base_url: str, key: str, message: str, n: int, *, timeout: float) -> list[Reply]:
    """n POST /chat with the SAME message, released together (a barrier) over n connections of one pool."""
    barrier = threading.Barrier(n)
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    with httpx.Client(limits=limits) as client:
        def one(_: int) -> Reply:
            try:
                barrier.wait(timeout=10)
            except threading.BrokenBarrierError:
                pass
            return chat(client, base_url, key, message, timeout=timeout)

        with ThreadPoolExecutor(max_workers=n) as pool:
            return list(pool.map(one, range(n)))


def metric_samples(text: str, sample: str) -> list[tuple[dict[str, str], float]]:
    """Samples named `sample` (e.g. llm_cache_requests_total) in a Prometheus text exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    out = []
    try:
        for family in text_string_to_metric_families(text):
            out += [(dict(s.labels), float(s.value)) for s in family.samples if s.name == sample]
    except ValueError:
        return out
    return out


# --------------------------------------------------------------------------- SSE (step06.streaming)
@dataclass
class SseEvent:
    event: str            # "message" when the event has no `event:` field (SSE default)
    data: Any             # the JSON of `data:` (the raw text when it is not JSON)
    at: float             # seconds since the request was sent


@dataclass
class Stream:
    """What one POST /chat/stream got back (status 0 = no HTTP answer)."""

    status: int
    content_type: str = ""
    events: list[SseEvent] = field(default_factory=list)
    seconds: float = 0.0          # until the stream ended, the grader left, or reading failed
    body: Any = None              # the JSON body when the answer was not a stream
    error: str | None = None      # a transport error or timeout while reading
    left: bool = False            # the grader closed the connection after the first delta

    def named(self, name: str) -> list[SseEvent]:
        return [e for e in self.events if e.event == name]

    @property
    def deltas(self) -> list[SseEvent]:
        return self.named("delta")

    @property
    def text(self) -> str:
        return "".join(e.data["text"] for e in self.deltas
                       if isinstance(e.data, dict) and isinstance(e.data.get("text"), str))

    @property
    def end(self) -> str | None:
        """The last event's name."""
        return self.events[-1].event if self.events else None

    def first_delta_at(self) -> float | None:
        return self.deltas[0].at if self.deltas else None

    def short(self) -> str:
        if self.status == 0:
            return f"응답 없음 ({self.error}, {self.seconds:.2f}초)"
        if not self.content_type.startswith("text/event-stream"):
            text = json.dumps(self.body, ensure_ascii=False)[:160] if self.body is not None else "(JSON 아님)"
            return f"HTTP {self.status}, Content-Type {self.content_type or '없음'}, 본문 {text}"
        names: dict[str, int] = {}
        for e in self.events:
            names[e.event] = names.get(e.event, 0) + 1
        what = ", ".join(f"{k} {v}개" for k, v in names.items()) or "이벤트 없음"
        tail = f", 마지막 이벤트 {self.end}" if self.events else ""
        err = f", 읽기 오류 {self.error}" if self.error else ""
        return f"HTTP {self.status} text/event-stream: {what}{tail}{err} ({self.seconds:.2f}초)"


def stream_chat(client: httpx.Client, base_url: str, key: str | None, message: str, *, timeout: float,
                leave_after_first_delta: bool = False, rid: str | None = None, max_seconds: float = 15.0) -> Stream:
    """POST /chat/stream and read its Server-Sent Events as they arrive (coursekit/sse.py: `event:`,
    `data:` lines, a blank line ends an event, `:` lines are comments such as keep-alive pings).
    `timeout` bounds the wait for each piece, `max_seconds` the whole stream (keep-alive pings do not keep
    a stream that never ends open); either ends the reading with `error` set."""
    headers = {"X-API-Key": key} if key is not None else {}
    if rid:
        headers["X-Request-ID"] = rid
    started = time.monotonic()
    out = Stream(0)
    try:
        with client.stream("POST", f"{base_url}/chat/stream", json={"message": message}, headers=headers,
                           timeout=timeout) as resp:
            out.status = resp.status_code
            out.content_type = resp.headers.get("content-type", "")
            if not out.content_type.startswith("text/event-stream"):
                resp.read()
                try:
                    out.body = resp.json()
                except ValueError:
                    out.body = None
                out.seconds = time.monotonic() - started
                return out

            def lines():  # bounded in total: a stream of keep-alive pings only never dispatches an event
                for line in resp.iter_lines():
                    if time.monotonic() - started > max_seconds:
                        out.error = f"{max_seconds:.0f}초가 지나도 스트림이 끝나지 않음"
                        return
                    yield line

            for name, data in sse.events(lines()):
                out.events.append(SseEvent(name, data, time.monotonic() - started))
                if leave_after_first_delta and name == "delta":
                    out.left = True
                    break
    except httpx.HTTPError as exc:
        out.error = f"{type(exc).__name__}: {exc}"[:200]
    out.seconds = time.monotonic() - started
    return out


# --------------------------------------------------------------------------- batching, token budget (part 2b)
def batch(client: httpx.Client, base_url: str, key: str | None, messages: Any, *, timeout: float,
          rid: str | None = None) -> Reply:
    """POST /chat/batch {"messages": messages} (messages as given: the grader also sends wrong shapes)."""
    headers = {"X-API-Key": key} if key is not None else {}
    return request(client, "POST", f"{base_url}/chat/batch", timeout=timeout, rid=rid, headers=headers,
                   json={"messages": messages})


def batch_results(reply: Reply) -> list | None:
    """The `results` list of a /chat/batch answer, or None when the body has none."""
    if isinstance(reply.body, dict) and isinstance(reply.body.get("results"), list):
        return reply.body["results"]
    return None


def item_short(item: Any) -> str:
    """One batch result in a few words: `ok` or `오류 <code>` or what it is instead."""
    if not isinstance(item, dict):
        return f"객체가 아님 ({json.dumps(item, ensure_ascii=False)[:60]})"
    if item.get("ok") is True:
        return "ok"
    if item.get("ok") is False:
        return f"오류 {error_code(item) or '(code 없음)'}"
    return f"ok 필드 없음 ({json.dumps(item, ensure_ascii=False)[:80]})"


def last_seq(sim) -> int:
    """The sequence number of the simulator's last answered request (0 when none since its reset)."""
    rows = sim.requests(limit=1)
    return int(rows[-1]["seq"]) if rows else 0


def rows_since(sim, seq: int) -> list[dict]:
    """The simulator's answered requests after `seq` (GET /_sim/requests keeps the last 1000), oldest first."""
    return [r for r in sim.requests() if int(r.get("seq", 0)) > seq]


def metric_sum(text: str, sample: str, **labels: str) -> float:
    """Sum of the samples named `sample` whose labels include `labels` (0 when there is none)."""
    return sum(v for lab, v in metric_samples(text, sample) if all(lab.get(k) == w for k, w in labels.items()))
