"""Helpers of the step 06 grader for A/B tests and canaries (grader/test_step06_experiments.py):
/chat with a user id, /feedback, many requests over a thread pool, Prometheus samples summed by label,
the documented sticky assignment (to report what the learner's service should give), and a tiny local
HTTP server that serves crafted Prometheus exposition text to `python -m ab_report --metrics-url`,
which the grader runs with its own Python in the learner's step folder copy (subprocess with a timeout).

Nothing here reads the learner's folder by itself.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self, TypeVar

import httpx

from grader import optimization_support as osup

T = TypeVar("T")
R = TypeVar("R")


# --------------------------------------------------------------------------- requests
def chat(client: httpx.Client, base_url: str, key: str | None, message: str, *, timeout: float,
         user_id: str | None = None, rid: str | None = None) -> osup.Reply:
    """POST /chat with an optional user_id (the A/B test's user)."""
    headers = {"X-API-Key": key} if key is not None else {}
    body: dict[str, Any] = {"message": message}
    if user_id is not None:
        body["user_id"] = user_id
    return osup.request(client, "POST", f"{base_url}/chat", timeout=timeout, rid=rid, headers=headers, json=body)


def feedback(client: httpx.Client, base_url: str, key: str, response_id: str, rating: str, *,
             timeout: float) -> osup.Reply:
    return osup.request(client, "POST", f"{base_url}/feedback", timeout=timeout, headers={"X-API-Key": key},
                        json={"response_id": response_id, "rating": rating})


def get(client: httpx.Client, url: str, key: str | None, *, timeout: float) -> osup.Reply:
    headers = {"X-API-Key": key} if key is not None else {}
    return osup.request(client, "GET", url, timeout=timeout, headers=headers)


def pmap(fn: Callable[[httpx.Client, T], R], items: Iterable[T], workers: int) -> list[R]:
    """fn(client, item) for every item over `workers` threads (each its own httpx.Client), results in order."""
    items = list(items)
    out: list[Any] = [None] * len(items)
    local = threading.local()
    clients: list[httpx.Client] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        client = getattr(local, "client", None)
        if client is None:
            client = local.client = httpx.Client()
            with lock:
                clients.append(client)
        out[i] = fn(client, items[i])

    try:
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            list(pool.map(one, range(len(items))))
    finally:
        for c in clients:
            c.close()
    return out


def body_field(r: osup.Reply, name: str) -> Any:
    return r.body.get(name) if isinstance(r.body, dict) else None


# --------------------------------------------------------------------------- metrics
def metric_sum(text: str, sample: str, **labels: str) -> float:
    """Sum of the samples named `sample` whose labels include `labels`."""
    return sum(v for lab, v in osup.metric_samples(text, sample)
               if all(lab.get(k) == want for k, want in labels.items()))


def metric_by(text: str, sample: str, keys: tuple[str, ...], **labels: str) -> dict[tuple[str, ...], float]:
    """Samples named `sample` (filtered by `labels`) summed by the label values `keys`."""
    out: dict[tuple[str, ...], float] = {}
    for lab, v in osup.metric_samples(text, sample):
        if all(lab.get(k) == want for k, want in labels.items()):
            key = tuple(lab.get(k, "") for k in keys)
            out[key] = out.get(key, 0.0) + v
    return out


# --------------------------------------------------------------------------- the documented assignment
def documented_assign(experiment: str, user: str, weights: list[tuple[str, float]]) -> str:
    """lesson §15: bucket = first 8 bytes of sha256("experiment:user") / 2**64, cumulative weights in order.
    (Only reported next to what the service did; the check grades shares and stickiness.)"""
    bucket = int.from_bytes(hashlib.sha256(f"{experiment}:{user}".encode()).digest()[:8], "big") / 2**64
    acc = 0.0
    for name, w in weights:
        acc += w
        if bucket < acc:
            return name
    return weights[-1][0]


# --------------------------------------------------------------------------- crafted /metrics for ab_report
def feedback_exposition(experiments: dict[str, dict[str, tuple[int, int]]]) -> str:
    """Prometheus text exposition like a replica's /metrics: llm_experiment_feedback_total{experiment, variant,
    rating} for {experiment: {variant: (up, down)}}, plus unrelated series around it."""
    lines = [
        "# HELP llm_requests_total Requests.",
        "# TYPE llm_requests_total counter",
        'llm_requests_total{route="/chat",status="200"} 1234.0',
        "# HELP llm_experiment_requests_total Answered requests per experiment variant.",
        "# TYPE llm_experiment_requests_total counter",
    ]
    for exp, variants in experiments.items():
        for name, (up, down) in variants.items():
            lines.append(f'llm_experiment_requests_total{{experiment="{exp}",variant="{name}"}} {float(3 * (up + down))}')
    lines += ["# HELP llm_experiment_feedback_total Feedback per experiment variant and rating.",
              "# TYPE llm_experiment_feedback_total counter"]
    for exp, variants in experiments.items():
        for name, (up, down) in variants.items():
            for rating, n in (("up", up), ("down", down)):
                lines.append(f'llm_experiment_feedback_total{{experiment="{exp}",rating="{rating}",'
                             f'variant="{name}"}} {float(n)}')
                lines.append(f'llm_experiment_feedback_created{{experiment="{exp}",rating="{rating}",'
                             f'variant="{name}"}} 1.7645e+09')
    lines += ["# HELP llm_feedback_total Feedback.", "# TYPE llm_feedback_total counter",
              'llm_feedback_total{rating="up"} 999.0', 'llm_feedback_total{rating="down"} 999.0', ""]
    return "\n".join(lines)


class ExpositionServer:
    """A loopback HTTP server: GET /<name> answers pages[name] as Prometheus text (404 otherwise)."""

    def __init__(self, pages: dict[str, str]):
        self.pages = pages
        server_pages = pages

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # http.server's method name
                text = server_pages.get(self.path.strip("/").split("?")[0])
                body = (text or "not found\n").encode()
                self.send_response(200 if text is not None else 404)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):  # quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@dataclass
class ReportRun:
    """One `python -m ab_report ...` run."""

    args: list[str]
    returncode: int | None          # None: did not finish in time
    stdout: str
    stderr: str
    seconds: float

    @property
    def data(self) -> dict | None:
        """The --json output (the last JSON object printed), or None."""
        text = self.stdout.strip()
        for candidate in (text, text[text.find("{"):] if "{" in text else ""):
            try:
                obj = json.loads(candidate)
            except ValueError:
                continue
            if isinstance(obj, dict):
                return obj
        return None

    def short(self) -> str:
        if self.returncode is None:
            return f"{self.seconds:.0f}초 안에 끝나지 않음"
        out = (self.stdout.strip() or self.stderr.strip() or "(출력 없음)").replace("\n", " ")
        return f"종료 코드 {self.returncode}, 출력 {out[:220]}"


def run_ab_report(folder: Path, args: list[str], timeout: float = 30.0) -> ReportRun:
    """`python -m ab_report <args>` with the grader's Python, cwd = the learner's step folder copy."""
    cmd = [sys.executable, "-m", "ab_report", *args]
    started = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=folder, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, env=_report_env(), check=False)
    except subprocess.TimeoutExpired as exc:
        def text(b):
            return b.decode(errors="replace") if isinstance(b, bytes) else (b or "")
        return ReportRun(args, None, text(exc.stdout), text(exc.stderr), time.monotonic() - started)
    return ReportRun(args, proc.returncode, proc.stdout or "", proc.stderr or "", time.monotonic() - started)


def _report_env() -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("PROMETHEUS", "AB_"))}
    env.update({"PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONIOENCODING": "utf-8"})
    return env
