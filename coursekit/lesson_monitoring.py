"""Plumbing for the step 04 lesson (monitoring), so its cells teach and measure.

    from coursekit import lesson, lesson_monitoring as lm

    widget = lm.start_widget()                      # the lesson's demo service (faq-widget), a real uvicorn
    lm.show("meters.py")                            # its source, shown in the notebook
    m = lm.scrape(widget.url)                       # /metrics parsed: m.value("widget_votes_total", helpful="true")
    prom = lm.start_prometheus({"faq-widget": widget})   # a real Prometheus scraping it every second
    run = lm.load(widget.url, users=8, seconds=15, faults=[(5, 10, {"error_503_rate": 0.5})])
    lm.histogram_quantile(0.95, bounds, observations)    # Prometheus's own interpolation, in Python

The demo service lives in coursekit/data/faq_widget/ (copied into the lesson's work folder). Everything
started here (services, Prometheus, Alertmanager, the webhook receiver) is stopped by PID when the kernel
exits and by `lesson.cleanup()`. Messages meant for people are Korean.
"""

from __future__ import annotations

import bisect
import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import httpx
import yaml

from . import lesson, locust_stats
from . import prometheus as kp

__all__ = [
    "DEFAULT_BUCKETS",
    "GENAI_BUCKETS",
    "DEMO_SOURCE",
    "LoadResult",
    "Scrape",
    "background_traffic",
    "bucket_counts",
    "enable_alerting",
    "histogram_quantile",
    "latency_sample",
    "load",
    "scrape",
    "show",
    "start_alerting",
    "start_prometheus",
    "start_widget",
]

DEMO_SOURCE = Path(__file__).resolve().parent / "data" / "faq_widget"
WIDGET_KEY = "lab-service-key"

# prometheus_client's default histogram buckets (seconds) and the GenAI semantic-convention advisory ones.
DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
GENAI_BUCKETS = tuple(round(0.01 * 2**i, 2) for i in range(14))


# --------------------------------------------------------------------------- demo service
def baseline_lengths() -> list[int]:
    """Lengths (characters) of the knowledge base's questions: the widget's "last month" of traffic."""
    from .simulator import knowledge

    return [len(q) for e in knowledge.entries() for q in e.questions]


def start_widget(env: Mapping[str, str] | None = None, name: str = "faq-widget") -> lesson.Service:
    """Copy the demo service (coursekit/data/faq_widget) into the work folder and run it with uvicorn
    against the lesson's simulator. `env` sets WIDGET_MODEL, WIDGET_JUDGE_SAMPLE, WIDGET_DRIFT_WINDOW ..."""
    folder = lesson.workdir() / name
    if folder.exists():
        shutil.rmtree(folder)
    shutil.copytree(DEMO_SOURCE, folder, ignore=shutil.ignore_patterns("__pycache__"))
    (folder / "baseline_lengths.json").write_text(json.dumps(baseline_lengths()), encoding="utf-8")
    return lesson.start_service(folder, module="app", env={"WIDGET_API_KEY": WIDGET_KEY, **(env or {})})


def show(file: str, start: str | None = None, end: str | None = None):
    """The demo's `file` (or the lines from the first one containing `start` up to the line before the
    next one containing `end`) as highlighted code in the notebook."""
    return lesson.show_source(DEMO_SOURCE / file, start, end)


# --------------------------------------------------------------------------- /metrics parsing
@dataclass
class Scrape:
    """One scrape of a /metrics page, parsed by prometheus_client's own parser."""

    samples: list[tuple[str, dict[str, str], float]]
    text: str = field(repr=False, default="")

    def value(self, name: str, **labels: str) -> float:
        """Sum of the samples called `name` whose labels include `labels` (0.0 when none)."""
        return sum(v for n, l, v in self.samples if n == name and all(l.get(k) == w for k, w in labels.items()))

    def names(self, prefix: str = "") -> list[str]:
        return sorted({n for n, _, _ in self.samples if n.startswith(prefix)})

    def series(self, name: str) -> list[dict[str, str]]:
        return [l for n, l, _ in self.samples if n == name]

    def lines(self, prefix: str) -> list[str]:
        """The exposition lines of the metrics whose name starts with `prefix` (# HELP / # TYPE included)."""
        out = []
        for line in self.text.splitlines():
            words = line.split()
            name = words[2] if line.startswith("#") and len(words) > 2 else (words[0] if words else "")
            if name.startswith(prefix):
                out.append(line)
        return out


def scrape(url: str) -> Scrape:
    """GET <url>/metrics and parse it (what Prometheus would store, without Prometheus)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(url.rstrip("/") + "/metrics", timeout=10).text
    samples = [(s.name, dict(s.labels), float(s.value))
               for fam in text_string_to_metric_families(text) for s in fam.samples]
    return Scrape(samples, text)


# --------------------------------------------------------------------------- histograms
def latency_sample(model: str = "gemini-3.5-flash", n: int = 2000, seed: int = 1, scale: float = 1.0) -> list[float]:
    """`n` response times (s) drawn from the simulator's own realistic latency model for `model`
    (the same model the simulator sleeps by), over the knowledge base's questions and general ones,
    without waiting for them."""
    from .simulator import knowledge
    from .simulator.app import Simulator
    from .simulator.generate import answer

    sim = Simulator(latency="realistic", latency_scale=scale, seed=seed)
    prompts = [q for e in knowledge.entries() for q in e.questions] + [f"질문 {i}번: 운영 팁을 알려줘" for i in range(50)]
    out = []
    for i in range(n):
        a = answer(prompts[i % len(prompts)], model, 0)
        ttft, per_token = sim._latency(model)
        out.append(ttft + (a.output_tokens + a.thoughts_tokens) * per_token)
    return out


def bucket_counts(bounds: Sequence[float], observations: Iterable[float]) -> list[int]:
    """Cumulative bucket counts `le=bound` for each bound, then `+Inf` (what a histogram exports)."""
    bounds = sorted(bounds)
    per = [0] * (len(bounds) + 1)
    for x in observations:
        per[bisect.bisect_left(bounds, x)] += 1  # le: x <= bound
    out, run = [], 0
    for c in per:
        run += c
        out.append(run)
    return out


def histogram_quantile(q: float, bounds: Sequence[float], observations: Iterable[float] | None = None,
                       cumulative: Sequence[float] | None = None) -> float:
    """Prometheus's `histogram_quantile` (promql/quantile.go, classic buckets) in Python: find the bucket
    holding rank q*count and interpolate linearly inside it; the first bucket starts at 0; a rank in the
    +Inf bucket answers the highest finite bound. Give raw `observations` or `cumulative` counts."""
    bounds = sorted(bounds)
    counts = list(cumulative) if cumulative is not None else bucket_counts(bounds, observations or ())
    total = counts[-1]
    if total == 0 or math.isnan(q):
        return math.nan
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    rank = q * total
    b = next(i for i, c in enumerate(counts) if c >= rank)
    if b == len(bounds):  # +Inf bucket
        return bounds[-1]
    if b == 0 and bounds[0] <= 0:
        return bounds[0]
    lower = 0.0 if b == 0 else bounds[b - 1]
    below = 0.0 if b == 0 else counts[b - 1]
    inside = counts[b] - below
    return lower + (bounds[b] - lower) * ((rank - below) / inside if inside else 0.0)


def exact_quantile(q: float, observations: Sequence[float]) -> float:
    """The q-quantile of the raw sample (nearest rank): what a histogram approximates."""
    xs = sorted(observations)
    return xs[max(0, math.ceil(q * len(xs)) - 1)]


# --------------------------------------------------------------------------- Prometheus
def _target(t: Any) -> str:
    if isinstance(t, lesson.Service):
        return f"127.0.0.1:{t.port}"
    return str(t).removeprefix("http://").rstrip("/")


def start_prometheus(targets: Mapping[str, Any], interval: str = "1s", wait: bool = True) -> kp.Prometheus:
    """A real Prometheus (temporary folder, free loopback port) scraping `targets` ({job: Service or
    "host:port"}) every `interval`; waits until every target was scraped once (the first scrape
    comes about 5 s after start). Stopped at exit or by `lesson.cleanup()`."""
    missing = kp.missing_tools("prometheus", "promtool")
    if missing:
        raise lesson.LessonError(kp.missing_note(missing, "이 절은 진짜 Prometheus 가 필요합니다"))
    jobs = {job: [_target(t) for t in (ts if isinstance(ts, (list, tuple)) else [ts])] for job, ts in targets.items()}
    # resend firing alerts every second (default 1m): an alert that fired before Prometheus had applied
    # a new Alertmanager target (a 5 s discovery tick) would otherwise reach it only a minute later
    prom = kp.Prometheus(kp.prometheus_config(jobs, interval=interval),
                         extra_args=["--rules.alert.resend-delay=1s"]).start()
    if wait:
        prom.wait_for_targets(timeout=30)
    return prom


def enable_alerting(prom: kp.Prometheus, rules: str | Mapping[str, Any], alertmanager: str,
                    name: str = "alerts.yml") -> None:
    """Give a running Prometheus a rule file and an Alertmanager ("host:port") and reload it
    (POST /-/reload); waits until the rules are loaded."""
    assert prom.folder is not None
    text = rules if isinstance(rules, str) else yaml.safe_dump(dict(rules), sort_keys=False, allow_unicode=True)
    (prom.folder / name).write_text(text, encoding="utf-8")
    cfg = yaml.safe_load(prom.config_path.read_text(encoding="utf-8"))
    cfg["rule_files"] = [name]
    cfg["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]}
    prom.config_path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    prom.reload()
    wanted = {r.get("alert") for g in yaml.safe_load(text)["groups"] for r in g["rules"]} - {None}
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        loaded = {r.get("name") for g in prom.rules() for r in g["rules"]}
        # the notifier applies a new Alertmanager target on a 5 s tick: wait until it knows it
        known = [a["url"] for a in prom._get_json("/api/v1/alertmanagers")["activeAlertmanagers"]]
        if wanted <= loaded and any(alertmanager in url for url in known):
            return
        time.sleep(0.1)
    raise lesson.LessonError(f"Prometheus 가 규칙이나 Alertmanager({alertmanager})를 읽지 않았습니다 "
                             f"(기대한 규칙: {sorted(wanted)}).\n{prom.tail()}")


def start_alerting(**route: str) -> tuple[kp.WebhookReceiver, kp.Alertmanager]:
    """A webhook receiver (a thread) and a real Alertmanager routing every alert to it
    (`route` overrides group_wait, group_interval, repeat_interval). Stopped at exit."""
    missing = kp.missing_tools("alertmanager")
    if missing:
        raise lesson.LessonError(kp.missing_note(missing, "이 절은 진짜 Alertmanager 가 필요합니다"))
    hook = kp.WebhookReceiver().start()
    _HOOKS.append(hook)
    am = kp.Alertmanager(kp.alertmanager_config(hook.url, **route)).start()
    return hook, am


_HOOKS: list[kp.WebhookReceiver] = []


# --------------------------------------------------------------------------- load
LOCUSTFILE = '''
import os
import random

from locust import HttpUser, between, task

QUESTIONS = {questions!r}
LONG = {long!r}


class WidgetUser(HttpUser):
    wait_time = between(0.05, 0.3)

    def on_start(self):
        self.headers = {{"X-API-Key": os.environ["WIDGET_API_KEY"]}}

    @task
    def ask(self):
        q = random.choice(QUESTIONS) if random.random() >= float(os.environ.get("LONG_SHARE", "0")) else LONG
        with self.client.post("/ask", json={{"q": q}}, headers=self.headers, timeout=30,
                              name="POST /ask", catch_response=True) as r:
            if r.status_code != 200:
                r.failure(f"HTTP {{r.status_code}}")
                return
            if random.random() < float(os.environ.get("VOTE_SHARE", "0.3")):
                helpful = "찾지 못했습니다" not in r.json()["reply"] and random.random() < 0.85
                self.client.post("/votes", json={{"reply_id": r.json()["reply_id"], "helpful": helpful,
                                                 "stars": random.randint(3, 5) if helpful else random.randint(1, 2)}},
                                 headers=self.headers, name="POST /votes")
'''


@dataclass
class LoadResult:
    """What Locust measured (its CSV), and when the load ran (unix time, for Prometheus queries)."""

    users: int
    seconds: float
    requests: int
    failures: int
    rps: float
    p50: float
    p95: float
    p99: float
    started: float
    ended: float
    by_name: dict[str, dict[str, float]] = field(default_factory=dict)
    faults: list[tuple[float, float, dict[str, Any]]] = field(default_factory=list)
    output: str = field(default="", repr=False)

    def summary(self) -> str:
        ask = self.by_name.get("POST /ask", {})
        return (f"Locust: 사용자 {self.users}명, {self.seconds:.0f}초, POST /ask {ask.get('requests', 0):.0f}개 "
                f"(실패 {ask.get('failures', 0):.0f}), 전체 {self.rps:.1f} req/s, "
                f"/ask p50 {ask.get('p50', math.nan):.2f}s p95 {ask.get('p95', math.nan):.2f}s "
                f"p99 {ask.get('p99', math.nan):.2f}s")


def _questions() -> list[str]:
    from .simulator import knowledge

    return [e.questions[0] for e in knowledge.entries()]


def load(url: str, users: int = 8, seconds: float = 15, faults: Sequence[tuple[float, float, Mapping[str, Any]]] = (),
         env: Mapping[str, str] | None = None, stop_timeout: float = 0) -> LoadResult:
    """A headless Locust run (a subprocess) of WidgetUser against `url` for `seconds`. Each `faults`
    entry (from_s, to_s, {simulator config}) applies that simulator configuration during that
    part of the run, then puts the previous one back (also on error). `stop_timeout` (Locust's
    --stop-timeout): seconds the users may take at the end to finish the request they are in, so that
    every request the service answered is in the statistics (0: they are stopped mid-request)."""
    sim = lesson.simulator()
    folder = Path(tempfile.mkdtemp(prefix="locust-", dir=lesson.workdir()))
    long_q = "다음 오류 로그를 보고 원인을 알려 주세요: " + " ".join(f"ERROR worker-{i} timeout after 30s" for i in range(6))
    (folder / "locustfile.py").write_text(LOCUSTFILE.format(questions=_questions(), long=long_q), encoding="utf-8")
    cmd = [sys.executable, "-m", "locust", "-f", "locustfile.py", "--headless", "-u", str(users), "-r", str(users),
           "-t", f"{int(seconds)}s", "--host", url, "--json-file", "run", "--only-summary", "--loglevel", "WARNING",
           "--stop-timeout", f"{stop_timeout:g}"]
    full_env = {**os.environ, "WIDGET_API_KEY": WIDGET_KEY, **(env or {})}
    saved = sim.config()
    applied: list[tuple[float, float, dict[str, Any]]] = []
    stop = threading.Event()

    def schedule(t0: float) -> None:
        for start_s, end_s, changes in sorted(faults, key=lambda f: f[0]):
            if stop.wait(max(0.0, t0 + start_s - time.time())):
                return
            before = sim.config()
            sim.configure(**changes)
            at = time.time()
            stop.wait(max(0.0, t0 + end_s - time.time()))
            sim.restore(before)
            applied.append((at, time.time(), dict(changes)))

    started = time.time()
    proc = subprocess.Popen(cmd, cwd=folder, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, text=True, start_new_session=True)
    worker = threading.Thread(target=schedule, args=(started,), daemon=True)
    worker.start()
    try:
        output, _ = proc.communicate(timeout=seconds + stop_timeout + 60)
    except BaseException:
        from .procs import stop_process

        stop_process(proc, 5)
        raise
    finally:
        stop.set()
        worker.join(timeout=10)
        sim.restore(saved)
    ended = time.time()
    # the final stats as JSON (the periodic CSV can miss the last requests of the run)
    stats = folder / "run.json"
    if not stats.exists():
        raise lesson.LessonError(f"Locust 가 통계를 남기지 않았습니다 (종료 코드 {proc.returncode}).\n{output[-2000:]}")
    rows = json.loads(stats.read_text(encoding="utf-8"))
    entries = locust_stats.summarize(rows, seconds)
    # by_name: {endpoint name: {"requests", "failures", "rps", "p50", "p95", "p99"}} as before
    names = {f"{r.get('method') or ''} {r.get('name')}".strip(): r.get("name") for r in rows}
    by_name = {names.get(key, key): dataclasses.asdict(e) for key, e in entries.items()}
    agg = entries["Aggregated"]
    return LoadResult(users, seconds, agg.requests, agg.failures, agg.rps, agg.p50, agg.p95, agg.p99,
                      started, ended, by_name, applied, output[-3000:])


class background_traffic:
    """`with lm.background_traffic(url, rps=10): ...` sends POST /ask from a thread at about `rps`
    requests per second until the block ends (for alerts that need traffic while faults are on).
    `.sent` and `.statuses` ({status code: count}) tell what happened."""

    def __init__(self, url: str, rps: float = 10.0, question: str = "요금제가 어떻게 돼요?"):
        self.url, self.rps, self.question = url.rstrip("/"), rps, question
        self.statuses: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="background-traffic", daemon=True)

    @property
    def sent(self) -> int:
        return sum(self.statuses.values())

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, headers={"X-API-Key": WIDGET_KEY}, timeout=30) as client:
            while not self._stop.is_set():
                try:
                    code = client.post("/ask", json={"q": self.question}).status_code
                except httpx.HTTPError:
                    code = 0
                self.statuses[code] = self.statuses.get(code, 0) + 1
                self._stop.wait(1.0 / self.rps)

    def __enter__(self) -> "background_traffic":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=35)


# --------------------------------------------------------------------------- cleanup
def cleanup() -> None:
    """Stop the webhook receivers and every Prometheus/Alertmanager this kernel started."""
    while _HOOKS:
        _HOOKS.pop().stop()
    kp.stop_all()


lesson.on_cleanup(cleanup)
