"""The course's own benchmark (issue 17): each step's service against the ceiling and its peers.

One simulator (coursekit.simulator, zero and realistic latency) and one load generator load, in turn,
one service process at a time (uvicorn, one worker, `--no-access-log` for every target alike):

* quick-start  the outline's "빠른 시작" app: a blocking `llm.invoke` inside `async def` (event loop blocked)
* step02..06   each step's solution (solutions/NN-*/, copied without .env) with the grader's settings;
               step 06 with its middleware on (JSON logs + encrypted prompt log, Prometheus metrics,
               OpenTelemetry spans in-process without an exporter, rate limit set high, in-flight cap 256,
               response cache on) and unique questions, so every request takes the cache-miss path
* step06-warm  the same step 06 service asked one repeated question (cache hits after the first)
* bare         a bare FastAPI endpoint making step 06's `ainvoke` call (same system prompt, same output token
               cap, no retries): the ceiling of this path
* stream       the same call through FastAPI's own StreamingResponse (`astream`)
* langserve    the same model served by LangServe's `add_routes` (only if langserve is importable:
               it is not a course dependency; see --langserve-path)

Load generator: a small asyncio keep-alive HTTP/1.1 client (uvloop) in this process: N users, each sends
one request at a time until the deadline (closed loop, no think time), then waits up to a drain time for
its last request; a request still unanswered then counts as a failure and its waiting time so far
enters the percentiles as a lower bound (the p-values are then printed with ">="). Locust headless is not
used: a Locust run costs seconds of start-up per cell, which does not fit the quick mode's minute.

Per cell: requests, requests/s, p50/p95/p99, failures (non-2xx or unanswered), upstream calls per
request (the simulator's counters), CPU seconds of the service process during the cell and its peak RSS
so far (psutil, else /proc). The page docs/benchmark.md is written from the template below, with PNG plots
(matplotlib, Agg) in docs/assets/benchmark/ next to it: RPS and p95 by users, one figure per latency mode.

Middleware part (--middleware, and in the full run): the cost of each step 06 layer in CPU microseconds per
request. The step 06 service is started once per configuration (everything on; each layer off in turn; all of
them off; the bare endpoint), and the configurations are loaded in turn in short cells, round after round
(serpentine order), at zero latency; CPU time of the service process per answered request from
/proc/PID/task/*/schedstat (ns). Layer cost = median over rounds of the paired difference with everything on.
Layers with a switch of their own are turned off by it (LOG_LEVEL, PROMPT_ENCRYPTION_KEYS, CACHE_TTL_SECONDS,
JUDGE_SAMPLE_RATE, SENTRY_DSN); tracing by OpenTelemetry's standard OTEL_TRACES_SAMPLER; the layers with no switch
(request log middleware, metrics, rate limit, in-flight cap, the Sentry SDK installed without a DSN) through a
generated benchshim.py that imports main and removes the layer with FastAPI's dependency_overrides or by leaving
out the wrapper main.py adds. Plus a bar chart docs/assets/benchmark/middleware.png.

    make bench                                        # full: 1, 10, 50, 200 users, both latencies + middleware
    .venv/bin/python benchmarks/bench.py --quick      # under a minute: fewer cells, short, no middleware part
    .venv/bin/python benchmarks/bench.py --middleware [--quick]   # the middleware part only
    .venv/bin/python benchmarks/bench.py --step06-folder /tmp/06-copy ...   # measure a modified copy of step 06
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import importlib.metadata as md
import json
import math
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from coursekit import OUTLINE_QUICK_START
from coursekit.simulator import SimulatorProcess

SERVICE_KEY = "lab-service-key"
GOOGLE_KEY = "sim-any-key"
MODEL = "gemini-3.5-flash"
P95_LIMIT = 3.0          # the course's p95 limit (step 02's latency check)
RATIO_TARGET = 0.8       # step 06 / bare at zero latency
QUESTION = "요금제가 어떻게 돼요?"
# --quick loads these at realistic latency too (the rest only at zero: at realistic latency every
# service waits on the same upstream, and each such cell costs the duration plus a whole answer).
QUICK_REALISTIC = ("quick-start", "step06", "bare")
DEFAULT_OUTPUT = ROOT / "docs" / "benchmark.md"
DEFAULT_LANGSERVE = ROOT / ".venv" / "bench-langserve"
KEY_PACKAGES = ["fastapi", "starlette", "uvicorn", "uvloop", "httptools", "pydantic", "langchain-core",
                "langchain-google-genai", "google-genai", "httpx", "psutil", "langserve"]

QUICK_START = OUTLINE_QUICK_START.read_text(encoding="utf-8")  # the outline's own app, verbatim

PEER_APP = '''\
# The ceiling and its peers: the same ainvoke/astream call as step 06 (its system prompt, its output token cap),
# nothing else. BENCH_SYSTEM_PROMPT empty: the question alone.
import os
from pathlib import Path
from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from langchain_core.messages import HumanMessage, SystemMessage
from pydantic import BaseModel
from langchain_google_genai import ChatGoogleGenerativeAI

app = FastAPI()
cap = int(os.environ.get("BENCH_MAX_OUTPUT_TOKENS") or 0) or None
llm = ChatGoogleGenerativeAI(model=os.environ["LLM_MODEL"], max_retries=1, timeout=30, max_output_tokens=cap)
system = Path(os.environ["BENCH_SYSTEM_PROMPT"]).read_text(encoding="utf-8").strip() \\
    if os.environ.get("BENCH_SYSTEM_PROMPT") else None


def messages(text):
    return [SystemMessage(system), HumanMessage(text)] if system else text


class ChatRequest(BaseModel):
    message: str


@app.post("/chat")
async def chat(req: ChatRequest):
    reply = await llm.ainvoke(messages(req.message))
    return {"response": reply.text}


@app.post("/chat/stream")
async def chat_stream(req: ChatRequest):
    async def chunks():
        async for chunk in llm.astream(messages(req.message)):
            yield chunk.text
    return StreamingResponse(chunks(), media_type="text/plain; charset=utf-8")


if os.environ.get("BENCH_LANGSERVE"):
    from langserve import add_routes
    add_routes(app, llm, path="/chain")
'''


# --------------------------------------------------------------------------- targets
@dataclass
class Target:
    name: str
    label: str                 # Korean description for the page
    folder: Path | None        # copy of a step folder, or None for a generated app
    source: str | None = None  # generated main.py
    path: str = "/chat"
    kind: str = "json"         # json | query | langserve
    env: dict[str, str] = field(default_factory=dict)
    warm: bool = False         # one repeated question (cache warm) instead of unique ones
    process: str = ""          # targets with the same process name share one service process
    absent: str | None = None  # why the row is absent
    shim: str | None = None    # --middleware: a module benchshim.py that imports main and removes a layer


def step_folder(prefix: str) -> Path:
    return next(p for p in sorted((ROOT / "solutions").iterdir()) if p.name.startswith(prefix))


def fernet_key() -> str:
    from cryptography.fernet import Fernet
    return Fernet.generate_key().decode()


def targets(names: list[str] | None, langserve_path: Path, logs: Path) -> list[Target]:
    common = {"SERVICE_API_KEY": SERVICE_KEY, "GOOGLE_API_KEY": GOOGLE_KEY, "LLM_MODEL": MODEL,
              "LLM_TIMEOUT_SECONDS": "30", "LLM_MAX_ATTEMPTS": "2", "JUDGE_SAMPLE_RATE": "0"}
    logged = {"LOG_DIR": str(logs), "LOG_LEVEL": "INFO", "PROMPT_ENCRYPTION_KEYS": fernet_key()}
    step06 = {**common, **logged, "RATE_LIMIT": "1000000/minute", "MAX_IN_FLIGHT": "256",
              "REQUEST_DEADLINE_SECONDS": "30", "CACHE_TTL_SECONDS": "300"}
    # the peers make step 06's call: its system prompt (PROMPT_VERSION v2) and its output token cap (1024)
    peer = {**common, "BENCH_SYSTEM_PROMPT": str(step_folder("06") / "prompts" / "v2.txt"),
            "BENCH_MAX_OUTPUT_TOKENS": "1024"}
    ls_absent = None
    if not (langserve_path / "langserve").is_dir():
        ls_absent = (f"langserve 가 없음 ({langserve_path.relative_to(ROOT) if langserve_path.is_relative_to(ROOT) else langserve_path}"
                     f"에 설치: .venv/bin/pip install --target {langserve_path} 'langserve[server]==0.3.3' "
                     "'sse-starlette==1.8.2' --no-deps; 코스 의존성이 아님)")
    all_targets = [
        Target("quick-start", "개요의 빠른 시작 앱 (async def 안의 블로킹 invoke, "
               "모델 gemini-2.0-flash-exp 는 시뮬레이터의 기본 프로필)", None, QUICK_START, kind="query",
               env={"GOOGLE_API_KEY": GOOGLE_KEY}),
        Target("step02", "02 solution", step_folder("02"), env=common),
        Target("step03", "03 solution", step_folder("03"), env=common),
        Target("step04", "04 solution (메트릭)", step_folder("04"), env=common),
        Target("step05", "05 solution (로그·암호화 프롬프트 로그·스팬)", step_folder("05"), env={**common, **logged}),
        Target("step06", "06 solution, 미들웨어 켬, 캐시 miss (매번 다른 질문)", step_folder("06"), env=step06),
        Target("step06-warm", "06 solution, 캐시 warm (같은 질문 반복; step06 과 같은 프로세스)", step_folder("06"),
               env=step06, warm=True, process="step06"),
        Target("bare", "FastAPI 엔드포인트 + 06 과 같은 ainvoke 호출만 (시스템 프롬프트 v2, max_output_tokens 1024, "
               "재시도 없음): 이 경로의 상한", None, PEER_APP, env=peer),
        Target("stream", "FastAPI StreamingResponse + 같은 호출의 astream (bare 와 같은 프로세스)", None, PEER_APP,
               path="/chat/stream", env=peer, process="bare"),
        Target("langserve", "LangServe add_routes (/chain/invoke)", None, PEER_APP, path="/chain/invoke",
               kind="langserve", env={**peer, "BENCH_LANGSERVE": "1", "PYTHONPATH": str(langserve_path)},
               absent=ls_absent),
    ]
    if names:
        unknown = set(names) - {t.name for t in all_targets}
        if unknown:
            raise SystemExit(f"알 수 없는 대상: {', '.join(sorted(unknown))}")
        all_targets = [t for t in all_targets if t.name in names]
    for t in all_targets:
        t.process = t.process or t.name
    return all_targets


# --------------------------------------------------------------------------- service process
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Service:
    def __init__(self, target: Target, sim: SimulatorProcess, tmp: Path, wait: bool = True):
        self.name = target.name
        if target.folder is not None:
            cwd = tmp / target.name
            shutil.copytree(target.folder, cwd, ignore=shutil.ignore_patterns(
                "__pycache__", ".venv", ".env", "logs", ".pytest_cache"))
        else:
            cwd = tmp / target.name
            cwd.mkdir()
            (cwd / "main.py").write_text(target.source, encoding="utf-8")
        module = "main"
        if target.shim is not None:
            (cwd / "benchshim.py").write_text(target.shim, encoding="utf-8")
            module = "benchshim"
        self.port = free_port()
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("OTEL_", "LANGSMITH_", "LANGCHAIN_", "SENTRY_", "GOOGLE_", "GEMINI_"))
               and k not in ("SERVICE_API_KEY", "REDIS_URL", "PYTHONPATH")}
        env.update({"PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1",
                    "GOOGLE_GEMINI_BASE_URL": sim.base_url}, **target.env)
        if target.env.get("LOG_DIR"):
            env["LOG_DIR"] = str(tmp / f"{target.name}-logs")
        self.log = tmp / f"{target.name}.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", f"{module}:app", "--host", "127.0.0.1", "--port", str(self.port),
                 "--no-access-log", "--log-level", "warning"],
                cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)
        if wait:
            self.wait()

    def wait(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} 이(가) 시작하지 못함:\n{self.tail()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.name}: {timeout:g}초 안에 포트가 열리지 않음:\n{self.tail()}")

    def tail(self, n: int = 20) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])

    def cpu_seconds(self) -> float:
        try:
            import psutil
            t = psutil.Process(self.proc.pid).cpu_times()
            return t.user + t.system
        except ImportError:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def cpu_ns(self) -> tuple[int, frozenset[str]] | None:
        """CPU time of the process's live threads in nanoseconds (/proc/PID/task/*/schedstat, Linux) and the thread
        ids: finer than cpu_seconds' clock ticks (10 ms). A thread that ends takes its time with it, so a measurement
        whose thread set changed is discarded by the caller. None where schedstat is missing."""
        try:
            tids = frozenset(os.listdir(f"/proc/{self.proc.pid}/task"))
            total = 0
            for tid in tids:
                with open(f"/proc/{self.proc.pid}/task/{tid}/schedstat") as fh:
                    total += int(fh.read().split()[0])
            return total, tids
        except (OSError, ValueError, IndexError):
            return None

    def peak_rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        import psutil  # not Linux
        return psutil.Process(self.proc.pid).memory_info().rss / 2**20

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# --------------------------------------------------------------------------- load generator
RUN_TAG = os.urandom(4).hex()
UNIQUE = iter(range(10**12))   # one counter for the whole run: no question repeats across cells


def request_bytes(target: Target, port: int) -> bytes:
    from urllib.parse import quote
    message = QUESTION if target.warm else f"{QUESTION} (질문 {RUN_TAG}-{next(UNIQUE)})"
    path, body = target.path, b""
    if target.kind == "query":
        path = f"{path}?message={quote(message)}"
    elif target.kind == "langserve":
        body = json.dumps({"input": message}, ensure_ascii=False).encode()
    else:
        body = json.dumps({"message": message}, ensure_ascii=False).encode()
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"X-API-Key: {SERVICE_KEY}\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


async def read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length, chunked = None, False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length:
        await reader.readexactly(length)
    return status


@dataclass
class Load:
    requests: int
    failures: int
    unanswered: int
    seconds: float             # the load window (the duration)
    in_window: int             # successful answers that arrived within the window (requests/s = this / seconds)
    latencies: list[float]


async def run_load(target: Target, port: int, users: int, duration: float, drain: float) -> Load:
    latencies: list[float] = []
    failures = 0
    inflight: dict[int, float] = {}
    ends: list[float] = []

    async def user(uid: int, deadline: float) -> None:
        nonlocal failures
        reader = writer = None
        while time.perf_counter() < deadline:
            if writer is None:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            req = request_bytes(target, port)
            t0 = inflight[uid] = time.perf_counter()
            try:
                writer.write(req)
                status = await read_response(reader)
            except (ConnectionError, asyncio.IncompleteReadError):
                status = 0
                writer.close()
                writer = None
            t1 = time.perf_counter()
            latencies.append(t1 - t0)
            del inflight[uid]
            if not 200 <= status < 300:
                failures += 1
            else:
                ends.append(t1)
        if writer is not None:
            writer.close()

    start = time.perf_counter()
    deadline = start + duration
    tasks = [asyncio.ensure_future(user(u, deadline)) for u in range(users)]
    done, pending = await asyncio.wait(tasks, timeout=duration + drain)
    now = time.perf_counter()
    unanswered = len(inflight)
    latencies.extend(now - t0 for t0 in inflight.values())    # lower bounds
    for t in pending:
        t.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    for t in done:
        if t.exception() is not None:
            raise t.exception()
    return Load(len(latencies), failures + unanswered, unanswered, duration,
                sum(1 for t in ends if t <= deadline), latencies)


def settle(port: int, timeout: float) -> None:
    """After a cell that left requests unanswered, wait until the service answers again (a blocked
    event loop still works through the abandoned requests), so the next cell does not pay for them."""
    import httpx
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/openapi.json", timeout=max(1.0, deadline - time.monotonic()))
            return
        except httpx.HTTPError:
            time.sleep(0.2)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]   # nearest rank


@dataclass
class Row:
    target: str
    latency: str
    users: int
    requests: int
    rps: float
    p50: float
    p95: float
    p99: float
    failures: int
    unanswered: int
    upstream_per_request: float
    cpu_seconds: float
    peak_rss_mb: float


# --------------------------------------------------------------------------- runner
def machine() -> dict[str, str]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        model = platform.processor()
    versions = {}
    for name in KEY_PACKAGES:
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    load1 = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return {"cpus": str(os.cpu_count()), "cpu_model": model or "?", "os": platform.platform(),
            "python": platform.python_version(), "load_at_start": f"{load1:.2f}",
            "packages": ", ".join(f"{k} {v}" for k, v in versions.items())}


def run_target(loop, target: Target, svc: Service, sim: SimulatorProcess, latencies: list[str],
               users: list[int], args, rows: list[Row]) -> None:
    sim.configure(latency="zero")
    loop.run_until_complete(run_load(target, svc.port, 2, 0.3, 5))     # warm-up (and, warm: cache prime)
    for lat in latencies:
        sim.configure(latency=lat)
        for n in users:
            if args.cells and (lat, n) not in args.cells:
                continue
            if args.quick and lat != "zero" and target.name not in QUICK_REALISTIC:
                continue
            sim.reset()
            cpu0 = svc.cpu_seconds()
            load = loop.run_until_complete(run_load(target, svc.port, n, args.duration, args.drain))
            upstream = sim.upstream_calls()
            answered = load.requests - load.unanswered
            row = Row(target.name, lat, n, load.requests, load.in_window / load.seconds,
                      pct(load.latencies, .50), pct(load.latencies, .95), pct(load.latencies, .99),
                      load.failures, load.unanswered, upstream / max(1, answered),
                      svc.cpu_seconds() - cpu0, svc.peak_rss_mb())
            rows.append(row)
            print("  " + fmt_row(row), flush=True)
            if load.unanswered:
                settle(svc.port, args.drain * 10 + 30)
    if svc.proc.poll() is not None:
        raise RuntimeError(f"{target.name} 이(가) 부하 중 종료됨:\n{svc.tail()}")


def run(args) -> tuple[list[Row], list[Target], dict, MwResult | None]:
    users = args.users
    latencies = args.latency
    rows: list[Row] = []
    mw = None
    info = machine()
    loop_new = asyncio.new_event_loop
    try:
        import uvloop
        loop_new = uvloop.new_event_loop
    except ImportError:
        pass
    loop = loop_new()
    with tempfile.TemporaryDirectory(prefix="bench-") as tmpname, SimulatorProcess(latency="zero") as sim:
        tmp = Path(tmpname)
        chosen = targets(args.targets, args.langserve_path, tmp / "logs") if "targets" in args.parts else []
        if args.step06_folder:
            for target in chosen:
                if target.name.startswith("step06"):
                    target.folder = args.step06_folder
        groups: dict[str, list[Target]] = {}
        for target in chosen:
            if target.absent:
                print(f"  {target.name}: 건너뜀 ({target.absent})", flush=True)
            else:
                groups.setdefault(target.process, []).append(target)
        for group in groups.values():
            t_start = time.monotonic()
            svc = Service(group[0], sim, tmp)
            print(f"  {group[0].process}: 시작 {time.monotonic() - t_start:.1f}초", flush=True)
            try:
                for target in group:
                    run_target(loop, target, svc, sim, latencies, users, args, rows)
            finally:
                svc.stop()
        if "middleware" in args.parts:
            mw = run_middleware(loop, sim, tmp, args)
        sim.configure(latency="zero")
    loop.close()
    return rows, chosen, info, mw


# --------------------------------------------------------------------------- middleware cost (--middleware)
# The cost of each layer of step 06 in CPU microseconds per request: the same step 06 service (cache-miss path,
# zero latency) with one layer off, against the service with everything on, in alternating rounds (pairs taken
# within a round). A layer with its own switch is turned off by the service's setting; where the service has none,
# the benchmark removes the layer through a small module benchshim.py that imports main and takes the dependency
# out of the routes (or leaves out the wrapper main.py adds): the method column says which. Not FastAPI's
# dependency_overrides: with any override present FastAPI rebuilds every sub-dependency's Dependant on every
# request (fastapi/dependencies/utils.py solve_dependencies), a cost of several hundred µs that would be charged
# to the layer (measured: "removing" the in-flight cap that way made a request ~450 µs dearer).
SHIM_HEAD = "import os\n"
SHIM_IMPORT = ("import main  # noqa: E402\nfrom fastapi.routing import APIRoute  # noqa: E402\n\napp = main.app\n\n\n"
               "def without(call):\n"
               "    \"\"\"Take the dependency out of every route's Dependant (in place: the handlers hold these objects).\"\"\"\n"
               "    for route in app.routes:\n"
               "        if isinstance(route, APIRoute):\n"
               "            route.dependant.dependencies[:] = [d for d in route.dependant.dependencies if d.call is not call]\n")
SHIM = {
    # the metrics SDK only: the MeterProvider in telemetry.py is built while OTEL_SDK_DISABLED is set (no-op
    # instruments, also for FastAPI's HTTP metric); the TracerProvider is built after, enabled
    "metrics": (('os.environ["OTEL_SDK_DISABLED"] = "true"\nimport telemetry  # noqa: E402\n'
                'del os.environ["OTEL_SDK_DISABLED"]\n'), ""),
    "sentry-sdk": ("import observability  # noqa: E402\nobservability.init_sentry = lambda *a, **k: None\n", ""),
    "logmw": ("", "app.build_middleware_stack = main._build_middleware_stack  # without RequestLogMiddleware\n"),
    "ratelimit": ("", "without(main.rate_limit)\n"),
    "inflight": ("", "without(main.in_flight_slot)\n"),
}


@dataclass
class Layer:
    key: str
    label: str                 # Korean name of the layer
    method: str                # how it is turned off (Korean)
    env: dict[str, str] = field(default_factory=dict)
    shims: tuple[str, ...] = ()
    added: bool = False        # off in the baseline; the row is the cost of turning it on


LAYERS = [
    Layer("logline", "요청 로그 줄 (JSON 한 줄을 stdout 과 app.jsonl 에)",
          "서비스 설정 `LOG_LEVEL=WARNING` (성공 요청의 INFO 줄을 쓰지 않음; 미들웨어는 남음)", {"LOG_LEVEL": "WARNING"}),
    Layer("logmw", "요청 로그 미들웨어 전체 (요청 ID, 필드 모으기, 로그 줄)",
          "스위치 없음: 벤치 shim 이 `RequestLogMiddleware` 감싸기를 뺌", shims=("logmw",)),
    Layer("prompt", "암호화 프롬프트 로그 (Fernet 암호화 + prompts.jsonl 에 덧붙이기)",
          "서비스 설정 `PROMPT_ENCRYPTION_KEYS` 비움", {"PROMPT_ENCRYPTION_KEYS": ""}),
    Layer("metrics", "메트릭 (OpenTelemetry → Prometheus: FastAPI 의 HTTP 메트릭 + LLM·품질 메트릭)",
          "스위치 없음: 벤치 shim 이 메트릭 SDK 만 끔 (`OTEL_SDK_DISABLED` 로 만든 MeterProvider)", shims=("metrics",)),
    Layer("tracing", "추적 스팬 (FastAPI 서버 스팬 + LLM 시도 스팬, 내보내기 없음)",
          "서비스 스위치 없음: OpenTelemetry 표준 변수 `OTEL_TRACES_SAMPLER=always_off`", {"OTEL_TRACES_SAMPLER": "always_off"}),
    Layer("ratelimit", "API 키별 요청 한도 (limits, 프로세스 메모리)",
          "스위치 없음: 벤치 shim 이 경로의 의존성에서 `rate_limit` 을 뺌", shims=("ratelimit",)),
    Layer("inflight", "동시 처리 상한 (MAX_IN_FLIGHT)",
          "스위치 없음: 벤치 shim 이 경로의 의존성에서 `in_flight_slot` 을 뺌", shims=("inflight",)),
    Layer("cache", "응답 캐시의 miss 경로 (키 계산, 조회, 저장, 요청 합치기)",
          "서비스 설정 `CACHE_TTL_SECONDS=0`", {"CACHE_TTL_SECONDS": "0"}),
    Layer("sentry-sdk", "Sentry SDK, DSN 없음 (통합 없는 꺼진 클라이언트)",
          "DSN 이 비면 `init_sentry` 가 통합을 설치하지 않음: 벤치 shim 이 `init_sentry` 를 아예 부르지 않은 것과 비교",
          shims=("sentry-sdk",)),
    Layer("judge", "품질 판정 표본 (`JUDGE_SAMPLE_RATE=0.1`, 답 10개에 판정 LLM 호출 하나 포함)",
          "서비스 설정: 기준은 0, 이 행은 0.1 로 켬", {"JUDGE_SAMPLE_RATE": "0.1"}, added=True),
    Layer("sentry-on", "Sentry 켬 (DSN 있음; 성공 요청이라 보내는 이벤트는 없음)",
          "서비스 설정 `SENTRY_DSN` (닫힌 로컬 포트의 DSN): 기준은 비움, 이 행은 켬",
          {"SENTRY_DSN": "http://public@127.0.0.1:9/1"}, added=True),
]
# everything the table removes, at once: what is left is step 06's own path (auth, validation, deadline and
# retries, circuit breaker, fallback task, routing) against the bare endpoint
ALL_OFF = Layer("all-off", "위의 제거 가능한 층을 모두 뺀 06", "위 방법을 모두 함께",
                {k: v for layer in LAYERS if not layer.added for k, v in layer.env.items() if layer.key != "logline"},
                tuple(s for layer in LAYERS if not layer.added for s in layer.shims))


def shim_source(keys: tuple[str, ...]) -> str | None:
    if not keys:
        return None
    head = "".join(SHIM[k][0] for k in keys if SHIM[k][0])
    tail = "".join(SHIM[k][1] for k in keys if SHIM[k][1])
    return (f'"""benchmarks/bench.py --middleware: main.py with layers removed ({", ".join(keys)})."""\n'
            + SHIM_HEAD + head + SHIM_IMPORT + ("\n\n" + tail if tail else ""))


@dataclass
class MwRow:
    key: str
    label: str
    method: str
    us_per_request: float      # median CPU µs/request of this configuration
    cost_us: float             # median paired difference against the baseline (step06 with everything on)
    low: float                 # first and third quartile of the paired differences over the rounds
    high: float
    added: bool = False


@dataclass
class MwResult:
    rows: list[MwRow]
    base_us: float             # step06, everything on
    bare_us: float
    all_off_us: float
    users: int
    rounds: int
    seconds: float             # load per configuration and round
    requests: int              # answered requests in all the cells


def run_middleware(loop, sim: SimulatorProcess, tmp: Path, args) -> MwResult:
    base = targets(["step06"], args.langserve_path, tmp / "logs")[0]
    if args.step06_folder:
        base.folder = args.step06_folder
    bare = targets(["bare"], args.langserve_path, tmp / "logs")[0]
    bare.name = "mw-bare"      # its own folder: the targets part may have run a bare service in this tmp
    configs: dict[str, Target] = {"base": Target("mw-base", "", base.folder, env=dict(base.env)), "bare": bare}
    for layer in [*LAYERS, ALL_OFF]:
        configs[layer.key] = Target(f"mw-{layer.key}", "", base.folder, env={**base.env, **layer.env},
                                    shim=shim_source(layer.shims))
    sim.configure(latency="zero")
    services: dict[str, Service] = {}
    try:
        t0 = time.monotonic()
        for key, target in configs.items():        # start all, then wait: start-up overlaps
            services[key] = Service(target, sim, tmp, wait=False)
        for svc in services.values():
            svc.wait(120)
        print(f"  미들웨어: 구성 {len(services)}개 시작 {time.monotonic() - t0:.1f}초", flush=True)
        for key, svc in services.items():           # warm-up: first requests pay for lazy imports and caches
            loop.run_until_complete(run_load(configs[key], svc.port, args.mw_users, args.mw_warmup, 5))
        samples: dict[str, list[float | None]] = {k: [] for k in configs}
        answered = 0
        order = list(configs)
        for r in range(args.mw_rounds):
            # short cells, every configuration once per round, serpentine order (forward, then backward): the
            # machine's drift (other processes on the same cores) falls on all configurations alike
            for key in (order if r % 2 == 0 else order[::-1]):
                svc = services[key]
                ns0, cpu0 = svc.cpu_ns(), svc.cpu_seconds()
                load = loop.run_until_complete(run_load(configs[key], svc.port, args.mw_users, args.mw_seconds, 5))
                ns1, cpu1 = svc.cpu_ns(), svc.cpu_seconds()
                ok = load.requests - load.failures
                if load.failures or ok == 0:
                    raise RuntimeError(f"미들웨어 구성 {key}: 실패 {load.failures} / {load.requests}\n{svc.tail()}")
                answered += ok
                if ns0 is None or ns1 is None:
                    samples[key].append((cpu1 - cpu0) / ok * 1e6)
                elif ns0[1] == ns1[1]:
                    samples[key].append((ns1[0] - ns0[0]) / ok / 1e3)
                else:
                    samples[key].append(None)        # a thread ended during the cell: its CPU time is gone
            print(f"  미들웨어: {r + 1}/{args.mw_rounds} 회 ({time.monotonic() - t0:.0f}초)", flush=True)
    finally:
        for svc in services.values():
            svc.stop()

    def median(values):
        return statistics.median([v for v in values if v is not None])

    def quartiles(values):
        if len(values) < 4:
            return min(values), max(values)
        q = statistics.quantiles(values, n=4)
        return q[0], q[2]

    rows = []
    for layer in LAYERS:
        diffs = [(v - b) if layer.added else (b - v) for b, v in zip(samples["base"], samples[layer.key])
                 if b is not None and v is not None]
        rows.append(MwRow(layer.key, layer.label, layer.method, median(samples[layer.key]), statistics.median(diffs),
                          *quartiles(diffs), layer.added))
    return MwResult(rows, median(samples["base"]), median(samples["bare"]), median(samples["all-off"]),
                    args.mw_users, args.mw_rounds, args.mw_seconds, answered)


MW_HEADER = ("| 층 | 끄는 방법 | 요청당 CPU (µs), 이 층 없이 | 이 층의 비용 (µs/요청) | 사분위 범위 (µs) | 06 전체 중 |\n"
             "|---|---|---:|---:|---:|---:|")


def mw_table(mw: MwResult) -> str:
    lines = [MW_HEADER]
    for r in mw.rows:
        share = f"{r.cost_us / mw.base_us * 100:.0f}%" if not r.added else "(켤 때 더함)"
        without = f"{r.us_per_request:.0f}" + (" (켬)" if r.added else "")
        lines.append(f"| {r.label} | {r.method} | {without} | **{r.cost_us:+.0f}** | {r.low:+.0f} … {r.high:+.0f} | {share} |")
    return "\n".join(lines)


def mw_summary(mw: MwResult) -> list[str]:
    removed = sum(r.cost_us for r in mw.rows if not r.added and r.key != "logline")   # logline is inside logmw
    return [
        (f"- 06 전체 (모든 층 켬, 캐시 miss): 요청당 CPU **{mw.base_us:.0f} µs**; bare 엔드포인트: **{mw.bare_us:.0f} µs** "
        f"(06 / bare = {mw.base_us / mw.bare_us:.2f} 배, CPU 가 처리량을 정할 때 RPS 비율의 상한은 "
        f"{mw.bare_us / mw.base_us:.2f})"),
        (f"- 제거할 수 있는 층을 모두 뺀 06: **{mw.all_off_us:.0f} µs** (bare 의 {mw.all_off_us / mw.bare_us:.2f} 배): "
        f"이 차이 {mw.all_off_us - mw.bare_us:.0f} µs 는 미들웨어가 아니라 06 자신의 경로 (인증, 검증, 데드라인·재시도, "
        "회로 차단기, Fallback 작업, 경로 고르기, 응답 id)"),
        (f"- 층마다의 비용을 더하면 {removed:.0f} µs (요청 로그 줄은 미들웨어 전체 행에 들어 있어 빼고 더함); "
        f"한꺼번에 뺀 차이는 {mw.base_us - mw.all_off_us:.0f} µs (층끼리 겹치는 일이 있어 같지 않음)"),
    ]


# --------------------------------------------------------------------------- plots
def write_plots(rows: list[Row], mw: MwResult | None, folder: Path) -> list[Path]:
    """PNG plots (matplotlib, Agg): RPS and p95 by users per target, one figure per latency mode; the middleware
    cost bar chart. Returns the files written."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for lat in dict.fromkeys(r.latency for r in rows):
        cells = [r for r in rows if r.latency == lat]
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
        for name in dict.fromkeys(r.target for r in cells):
            pts = sorted((r.users, r.rps, r.p95) for r in cells if r.target == name)
            xs = [p[0] for p in pts]
            ax1.plot(xs, [p[1] for p in pts], marker="o", label=name)
            ax2.plot(xs, [p[2] for p in pts], marker="o", label=name)
        for ax, title in ((ax1, "requests/s"), (ax2, "p95 latency (s)")):
            ax.set_xscale("log")
            ax.set_xlabel("users")
            ax.set_title(f"{title}, latency={lat}")
            ax.grid(True, alpha=0.3)
        if max(r.p95 for r in cells) >= 0.3 * P95_LIMIT:   # the limit line only where it is in the picture
            ax2.axhline(P95_LIMIT, color="red", linestyle="--", linewidth=1, label=f"p95 limit {P95_LIMIT:g} s")
        ax2.legend(fontsize=7, loc="upper left")
        fig.tight_layout()
        path = folder / f"rps_p95_{lat}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    if mw is not None:
        fig, ax = plt.subplots(figsize=(9, 4.2))
        names = [r.key + (" (+on)" if r.added else "") for r in mw.rows]
        costs = [r.cost_us for r in mw.rows]
        errs = [[max(0.0, r.cost_us - r.low) for r in mw.rows], [max(0.0, r.high - r.cost_us) for r in mw.rows]]
        ax.barh(names, costs, xerr=errs, color=["tab:orange" if r.added else "tab:blue" for r in mw.rows], capsize=3)
        ax.invert_yaxis()
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_xlabel("CPU microseconds per request (median of paired rounds; whiskers: quartiles)")
        ax.set_title(f"step 06 layers: all on {mw.base_us:.0f} us/req, bare {mw.bare_us:.0f} us/req")
        ax.grid(True, axis="x", alpha=0.3)
        fig.tight_layout()
        path = folder / "middleware.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written


# --------------------------------------------------------------------------- output
HEADER = ("| 대상 | 지연 | 사용자 | 요청 | RPS | p50 (s) | p95 (s) | p99 (s) | 실패 | 업스트림/요청 | CPU (s) | 최대 RSS (MB) |\n"
          "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")


def fmt_row(r: Row) -> str:
    ge = ">=" if r.unanswered else ""
    return (f"| {r.target} | {r.latency} | {r.users} | {r.requests} | {r.rps:.1f} | {ge}{r.p50:.3f} | "
            f"{ge}{r.p95:.3f} | {ge}{r.p99:.3f} | {r.failures} | {r.upstream_per_request:.2f} | "
            f"{r.cpu_seconds:.2f} | {r.peak_rss_mb:.0f} |")


def table(rows: list[Row]) -> str:
    return HEADER + "\n" + "\n".join(fmt_row(r) for r in rows)


def ratios(rows: list[Row], mw: MwResult | None = None) -> list[str]:
    def get(t, lat, n):
        return next((r for r in rows if (r.target, r.latency, r.users) == (t, lat, n)), None)

    out = []
    users = sorted({r.users for r in rows})
    for n in users:
        s6, bare = get("step06", "zero", n), get("bare", "zero", n)
        if s6 and bare and bare.rps > 0:
            ratio = s6.rps / bare.rps
            verdict = "달성" if ratio >= RATIO_TARGET else "미달"
            out.append(f"- step06 / bare (지연 zero, 사용자 {n}): RPS {s6.rps:.1f} / {bare.rps:.1f} = "
                       f"**{ratio:.2f}** (목표 >= {RATIO_TARGET}: {verdict})")
    qs = [r for r in rows if r.target == "quick-start" and r.latency == "realistic"]
    if qs:
        top = max(qs, key=lambda r: r.users)
        ge = ">= " if top.unanswered else ""
        if top.p95 > P95_LIMIT:
            verdict = "한도 초과 (실패)"
        elif top.unanswered:
            verdict = "판정 불가 (답을 못 받은 요청이 있어 p95 는 하한)"
        else:
            verdict = "한도 안"
        note = "" if top.users == 200 else f" (200 사용자는 측정하지 않음: 측정한 최대 {top.users} 사용자)"
        out.append(f"- quick-start 의 p95 (지연 realistic, 사용자 {top.users}): **{ge}{top.p95:.2f} s**, "
                   f"한도 {P95_LIMIT:g} s: {verdict}{note}")
    elif rows:
        out.append("- quick-start 의 p95 (지연 realistic): 측정하지 않음")
    if mw is not None:
        top = sorted((r for r in mw.rows if not r.added), key=lambda r: -r.cost_us)[:3]
        out.append(f"- 미들웨어 층마다 요청당 비용 (CPU 마이크로초, 아래 표): 06 전체 {mw.base_us:.0f} µs 중 큰 층은 "
                   + ", ".join(f"{r.key} {r.cost_us:.0f} µs ({r.cost_us / mw.base_us * 100:.0f}%)" for r in top)
                   + f"; bare {mw.bare_us:.0f} µs")
    else:
        out.append("- 미들웨어 층마다 요청당 비용: 이 실행에서는 재지 않음 (`make bench` 또는 `bench.py --middleware`)")
    return out


PAGE = """\
# 벤치마크: 단계별 서비스의 처리량과 지연 시간

이 페이지는 `benchmarks/bench.py` 가 실행될 때마다 새로 씁니다 (직접 고치지 마세요).
{mode_line}

!!! warning "숫자는 측정한 머신에 따라 다릅니다"
    아래 숫자는 한 머신에서 한 번 잰 값입니다. CPU 수, 같은 머신에서 돌던 다른 작업, 파이썬과
    패키지 버전에 따라 크게 달라집니다. 절대값보다 **같은 실행 안의 비율**을 보세요.
    측정 시작 때의 부하 평균(load average)이 CPU 수에 가깝거나 크면 숫자가 흔들립니다.

## 측정 환경

- 측정 시각: {when}
- CPU: {cpus}개, {cpu_model}
- 1분 부하 평균: 측정 시작 때 {load_at_start}, 끝날 때 {load_at_end}
- OS: {os}
- Python: {python}
- 패키지: {packages}

## 방법

- 시뮬레이터 하나(`coursekit.simulator`)와 부하 생성기 하나로, 서비스 프로세스를 하나씩 차례로 부하합니다.
  서비스는 모두 `uvicorn main:app` 단일 워커, 접근 로그 끔(`--no-access-log`)으로 같은 조건입니다.
- 부하 생성기: 이 프로세스 안의 asyncio keep-alive HTTP/1.1 클라이언트(uvloop). 사용자마다 응답을 받으면
  바로 다음 요청을 보냅니다 (대기 시간 없음). 시간이 끝나면 마지막 요청을 최대 {drain:g}초 기다리고, 그래도
  답이 없으면 실패로 세고 그때까지 기다린 시간을 백분위수에 하한으로 넣습니다 (표에 `>=` 표시).
  Locust 를 쓰지 않는 까닭: 칸마다 Locust 를 시작하는 데 몇 초가 들어 빠른 모드(1분 안)에 맞지 않습니다.
  부하 생성기, 시뮬레이터, 서비스가 같은 머신의 CPU 를 나눠 쓰므로 RPS 는 세 프로세스를 합친 시스템의 값입니다.
- 시뮬레이터 지연: `zero` (대기 없음, 서비스 자체의 비용만) 와 `realistic` (실제 API 와 비슷한 지연).
- 사용자 수: {users}, 칸마다 {duration:g}초.
- RPS: 부하 시간 안에 도착한 성공 응답 수 ÷ 부하 시간 (시간이 끝난 뒤 마지막 요청을 기다린 시간은 넣지 않음).
- 업스트림/요청: 그 칸 동안 시뮬레이터가 받은 generateContent 호출 수 ÷ 답을 받은 요청 수 (답을 못 받은
  요청도 업스트림은 불렀을 수 있어 1 보다 클 수 있습니다).
- CPU (s): 그 칸 동안 서비스 프로세스가 쓴 CPU 시간 (user + system). 최대 RSS: 프로세스가 시작한 뒤 최대 메모리.
- 모든 단계의 품질 판정 표본 비율은 0 (`JUDGE_SAMPLE_RATE=0`): 업스트림/요청은 채팅 경로만 셉니다.

## 대상

{targets}

## 결과

{table}

{plots}

## 비율

{ratios}

## 미들웨어 층마다 비용

{middleware}

## 다시 재기

저장소 루트에서 `make bench` (전체 모드: 대상 표와 미들웨어 표, 수십 분) 또는 `make bench ARGS=--quick`
(빠른 모드: 대상 표만, 1분 안). 미들웨어 표만: `make bench ARGS=--middleware` (몇 분; `--quick` 과 함께 쓰면 짧게).
시뮬레이터 자체의 처리량 벤치마크는 `make bench-sim` 입니다.
LangServe 행은 `langserve` 가 `.venv/bench-langserve/` 에 있을 때만 있습니다 (코스 의존성이 아니라 따로 설치:
`.venv/bin/pip install --no-deps --target .venv/bench-langserve 'langserve[server]==0.3.3' 'sse-starlette==1.8.2'`).
"""


MW_METHOD = """\
같은 06 서비스(캐시 miss 경로, 지연 zero, 사용자 {users}명)를 층 하나만 끈 구성마다 따로 띄우고, 모든 층을 켠 구성
(위 `step06` 과 같은 설정)과 **번갈아** 부하합니다: 한 회차에 모든 구성을 {seconds:g}초씩 차례로 (회차마다 순서를
뒤집음), {rounds}회. 값은 서비스 프로세스가 쓴 CPU 시간 (스레드마다 `/proc/PID/task/*/schedstat`, 나노초) ÷ 답한 요청 수
= **요청당 CPU 마이크로초**입니다. 층의 비용 = 같은 회차의 (모두 켬) − (그 층 끔), 회차들의 중앙값 (범위는 1·3 사분위).
벽시계 RPS 가 아니라 CPU 시간을 재는 까닭: 부하 생성기·시뮬레이터와 CPU 를 나눠 쓰는 머신에서도 서비스 자신이 쓴 일만
셉니다. 그래도 같은 머신에서 다른 일이 돌면 (캐시, 문맥 전환) 요청당 CPU 가 부풀고 흔들립니다: 사분위 범위가 0 을
넘나드는 층의 비용은 잡음과 구별되지 않습니다. 측정한 요청 {requests}개.

- 끄는 방법: 서비스에 스위치(환경 변수)가 있으면 그 설정으로. 스위치가 없는 층은 **그렇다고 적고**, 벤치가
  `benchshim.py` (main 을 가져온 뒤 경로의 의존성 목록에서 그 의존성을 빼거나, main.py 가 더한 미들웨어 감싸기를
  빼는 몇 줄)로 띄워서 잽니다. 06 의 코드는 바꾸지 않습니다. FastAPI 의 `dependency_overrides` 는 쓰지 않습니다:
  덮어쓰기가 하나라도 있으면 FastAPI 가 요청마다 모든 하위 의존성을 다시 분석해서 그 비용(수백 µs)이 층의 비용에
  섞입니다.
- "(켤 때 더함)" 행은 기준에서 꺼져 있는 층 (벤치의 06 은 판정 표본 0, Sentry DSN 없음)을 켰을 때 더해지는 비용입니다.
- LangSmith 는 재지 않음: 켜려면 LangSmith 서버가 있어야 하고, `LANGSMITH_TRACING` 이 없으면 LangChain 이 추적기를
  붙이지 않아 비용이 없습니다.
- 층끼리 겹칠 수 있습니다 (예: 로그 미들웨어의 필드는 다른 층이 `note()` 로 채움). 요청 로그 줄 행은 로그 미들웨어
  전체 행 안에 들어 있습니다.
"""


def page(rows: list[Row], chosen: list[Target], info: dict, args, mw: MwResult | None = None,
         plots: list[Path] = ()) -> str:
    lines = []
    for t in chosen:
        lines.append(f"- `{t.name}`: {t.label}" + (f" — **표에 없음**: {t.absent}" if t.absent else ""))
    lines.append("- step 06 에서 켠 것: JSON 줄 로그 + 암호화한 프롬프트 로그 (LOG_DIR, PROMPT_ENCRYPTION_KEYS), "
                 "Prometheus 메트릭, OpenTelemetry 스팬 (프로세스 안에서만; 내보낼 백엔드가 없어 OTLP 내보내기는 끔), "
                 "요청 한도 (RATE_LIMIT=1000000/minute, 사실상 걸리지 않음), 동시 처리 상한 MAX_IN_FLIGHT=256, "
                 "응답 캐시 (CACHE_TTL_SECONDS=300). LangSmith 와 Sentry 는 끔 (백엔드 필요).")
    mode = ("빠른 모드 (`--quick`): 지연 zero 는 사용자 1과 10, realistic 은 10 사용자에 "
            f"{', '.join(QUICK_REALISTIC)} 만 잽니다. 칸이 적고 짧아 숫자가 특히 흔들립니다."
            if args.quick else "전체 모드.")
    if "middleware" in args.parts:
        mode += f" 미들웨어 표: {args.mw_rounds}회 × 구성마다 {args.mw_seconds:g}초."
    if "targets" not in args.parts:
        mode += " 이 실행은 미들웨어 표만 잽니다 (대상 표는 비어 있음)."
    base = args.output.parent
    images = "\n\n".join(f"![{p.stem}]({p.relative_to(base).as_posix()})" for p in plots if p.stem != "middleware")
    if mw is not None:
        mw_text = (MW_METHOD.format(users=mw.users, seconds=mw.seconds, rounds=mw.rounds, requests=mw.requests)
                   + "\n" + mw_table(mw) + "\n\n" + "\n".join(mw_summary(mw)))
        bar = next((p for p in plots if p.stem == "middleware"), None)
        if bar is not None:
            mw_text += f"\n\n![middleware]({bar.relative_to(base).as_posix()})"
    else:
        mw_text = "이 실행에서는 재지 않음: `make bench` (전체) 또는 `.venv/bin/python benchmarks/bench.py --middleware`."
    load_at_end = f"{os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else "?"
    return PAGE.format(mode_line=mode, load_at_end=load_at_end, when=dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
                       users=", ".join(map(str, args.users)), duration=args.duration, drain=args.drain,
                       targets="\n".join(lines), table=table(rows) if rows else "이 실행에서는 재지 않음.",
                       plots=images, ratios="\n".join(ratios(rows, mw)), middleware=mw_text, **info)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="단계별 서비스 벤치마크 (issue 17): 표를 출력하고 docs/benchmark.md 를 씁니다")
    ap.add_argument("--quick", action="store_true", help="1분 안: 사용자 1과 10 (zero), realistic 은 10 사용자에 quick-start, step06, bare 만, 칸마다 1초")
    ap.add_argument("--users", type=lambda s: [int(x) for x in s.split(",")], default=None,
                    help="사용자 수 목록 (쉼표로 구분, 기본 1,10,50,200)")
    ap.add_argument("--latency", type=lambda s: s.split(","), default=["zero", "realistic"],
                    help="시뮬레이터 지연 목록 (zero,realistic)")
    ap.add_argument("--duration", type=float, default=None, help="칸마다 부하 시간 (초, 기본 10, 빠른 모드 1)")
    ap.add_argument("--drain", type=float, default=None, help="시간이 끝난 뒤 마지막 요청을 기다리는 시간 (초)")
    ap.add_argument("--targets", type=lambda s: s.split(","), default=None, help="대상 이름 목록 (기본 전부)")
    ap.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="쓸 문서 페이지 (기본 docs/benchmark.md)")
    ap.add_argument("--langserve-path", type=Path, default=DEFAULT_LANGSERVE,
                    help="langserve 를 pip install --target 으로 설치한 폴더 (코스 의존성이 아님)")
    ap.add_argument("--parts", type=lambda s: s.split(","), default=None,
                    help="잴 부분: targets,middleware (기본: 전체 모드는 둘 다, --quick 은 targets)")
    ap.add_argument("--middleware", action="store_true", help="미들웨어 층마다 비용만 (= --parts middleware)")
    ap.add_argument("--mw-rounds", type=int, default=None, help="미들웨어: 회차 수 (기본 20, 빠른 모드 4)")
    ap.add_argument("--mw-seconds", type=float, default=None,
                    help="미들웨어: 회차마다 구성 하나의 부하 시간 (기본 0.5, 빠른 모드 0.25)")
    ap.add_argument("--mw-users", type=int, default=1, help="미들웨어: 사용자 수 (기본 1: 요청이 하나씩, 같은 경로)")
    ap.add_argument("--no-plots", action="store_true",
                    help="그림(PNG)을 쓰지 않음 (예: CI 의 작업 요약처럼 페이지만 쓰는 곳; 기본은 출력 옆 assets/benchmark/ 에)")
    ap.add_argument("--step06-folder", type=Path, default=None,
                    help="step 06 대신 잴 폴더 (예: solutions/06-optimization 을 고친 복사본; 유지보수자용)")
    args = ap.parse_args(argv)
    args.cells = None
    if args.middleware:
        args.parts = ["middleware"]
    args.parts = args.parts or (["targets"] if args.quick else ["targets", "middleware"])
    if unknown := set(args.parts) - {"targets", "middleware"}:
        raise SystemExit(f"알 수 없는 부분: {', '.join(sorted(unknown))}")
    args.mw_rounds = args.mw_rounds or (4 if args.quick else 20)
    args.mw_seconds = args.mw_seconds or (0.25 if args.quick else 0.5)
    args.mw_warmup = 0.3 if args.quick else 1.0
    if args.quick:
        args.users = args.users or [1, 10]
        args.duration = args.duration or 1.0
        args.drain = args.drain if args.drain is not None else P95_LIMIT + 0.5   # unanswered => > limit
        args.cells = {("zero", 1), ("zero", 10), ("realistic", 10)}
    args.users = args.users or [1, 10, 50, 200]
    args.duration = args.duration or 10.0
    args.drain = args.drain if args.drain is not None else 15.0

    t0 = time.monotonic()
    rows, chosen, info, mw = run(args)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    plots = [] if args.no_plots else write_plots(rows, mw, args.output.parent / "assets" / "benchmark")
    text = page(rows, chosen, info, args, mw, plots)
    args.output.write_text(text, encoding="utf-8")
    print()
    print(f"머신: CPU {info['cpus']}개 ({info['cpu_model']}), 부하 평균 {info['load_at_start']}, Python {info['python']}")
    print(f"패키지: {info['packages']}")
    if rows:
        print(table(rows))
    if mw is not None:
        print(mw_table(mw))
        print("\n".join(mw_summary(mw)))
    print("\n".join(ratios(rows, mw)))
    print(f"\n{args.output} 를 썼습니다 ({time.monotonic() - t0:.0f}초)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
