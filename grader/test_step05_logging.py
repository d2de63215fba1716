"""Step 05 채점: 로깅 및 추적 (요청당 JSON 로그, 요청 ID, OpenTelemetry 추적, Sentry, LangSmith, 암호화).

학습자의 서비스를 실제 uvicorn 프로세스로 한 번 띄우고 (기본값이 아닌 설정: LOG_DIR 은 임시 폴더, 시도 3번,
판정 끔, 기본이 아닌 모델, 프롬프트 암호화 키 두 개), 뒤에는 채점기의 Gemini 시뮬레이터, 진짜 MLflow 추적 서버,
Sentry 와 LangSmith 의 수집 엔드포인트를 흉내 내는 수신기를 둡니다. 요청을 한 번에 보낸 뒤 (정상, 401, 404, 413,
422, 업스트림 장애, 재시도 뒤 성공) 서비스를 정상 종료해 (버퍼를 모두 내보냄) 남긴 것을 항목마다 검사합니다.
숫자는 모두 시뮬레이터 자신의 집계와 비교합니다.
"""

from __future__ import annotations

import json
import math
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from coursekit.simulator.models import cost_usd
from grader import logging_support as ls
from grader import harness
from grader.harness import (
    blocked,
    check,
    copy_step,
    fail,
    record,
    run_service,
    service_env,
)

STEP = "step05"

MODEL = "gemini-3.5-flash-lite"      # 기본값(gemini-3.5-flash)이 아닌 모델: 코드에 박아 둔 이름이 드러남
MAX_ATTEMPTS = 3                     # 재시도가 스팬과 시뮬레이터에 보이도록 (기본 2)
SERVICE_KEY = "svc-" + secrets.token_hex(16)
GOOGLE_KEY = "grader-gemini-" + secrets.token_hex(8)
LANGSMITH_KEY = "lsv2-grader-" + secrets.token_hex(12)
BEARER = "grader-bearer-" + secrets.token_hex(12)     # 요청에 실어 보내는 Authorization 값 (남으면 안 됨)
COOKIE = "grader-cookie-" + secrets.token_hex(12)
QUESTION = "하늘클라우드 요금제는 어떻게 되나요?"
BUDGET_SECONDS = 90
FLAKY_RATE = 0.5                     # 재시도 뒤 성공을 보려고 503 을 절반만 주입
FLAKY_MAX = 6


# --------------------------------------------------------------------------- the graded run
@dataclass
class Sent:
    """One request the grader sent and what came back."""

    name: str                        # Korean: what kind of request
    method: str
    path: str
    route: str | None                # the route template expected in the log line (None: any)
    status: int = 0
    rid: str | None = None           # X-Request-ID of the response
    supplied: str | None = None      # X-Request-ID the grader sent
    trace_id: str | None = None      # trace id of the traceparent the grader sent
    parent_span: str | None = None
    marker: str | None = None        # the unique text inside the message (prompt scan)
    message: str | None = None
    body: dict = field(default_factory=dict)
    answer: str | None = None
    attempts: int = 0                # requests the simulator received while this one ran
    sim_rows: list = field(default_factory=list)
    seconds: float = 0.0

    @property
    def chat_ok(self) -> bool:
        return self.path == "/chat" and self.status == 200

    @property
    def upstream_failed(self) -> bool:
        return self.path == "/chat" and self.status >= 500

    def label(self) -> str:
        return f"{self.name} ({self.method} {self.path} -> {self.status})"


@dataclass
class Run:
    sent: list[Sent]
    log_dir: Path
    graded_dir: Path
    env: dict[str, str]
    keys: list[str]
    seeded: dict
    stdout: str = ""
    file_log: ls.LogText = field(default_factory=ls.LogText)
    out_log: ls.LogText = field(default_factory=ls.LogText)
    traces: dict = field(default_factory=dict)        # trace id -> MLflow trace (or None)
    mlflow_error: str | None = None
    sentry_events: list = field(default_factory=list)
    sentry_raw: str = ""
    runs: list = field(default_factory=list)
    langsmith_raw: str = ""
    by_request_id: dict = field(default_factory=dict)

    def find(self, name: str) -> Sent:
        return next(s for s in self.sent if s.name == name)

    def lines(self, s: Sent) -> list[dict]:
        return self.file_log.for_id(s.rid)


def marker() -> str:
    return "PQ" + secrets.token_hex(6).upper()


@pytest.fixture(scope="module", autouse=True)
def grading_time(request):
    """Print how long grading step 05 took (DESIGN §8: under 90 s)."""
    with harness.report_grading_time(request, "step05", BUDGET_SECONDS):
        yield


@pytest.fixture(scope="module")
def backends():
    """MLflow (real), Sentry and LangSmith receivers; a missing MLflow venv skips (or fails in CI)."""
    from coursekit import tracing
    from coursekit.receivers import LangSmithReceiver, SentryReceiver

    tracing.require_backend("step 05 의 추적 검사에는 MLflow 추적 서버가 필요합니다")
    with tracing.MLflowServer(experiment="grader-step05") as mlf, SentryReceiver() as sentry, \
            LangSmithReceiver() as lsr:
        yield mlf, sentry, lsr


@pytest.fixture(scope="module")
def run(step_dir, tmp_path_factory, simulator, backends) -> Run:
    mlf, sentry, lsr = backends
    root = tmp_path_factory.mktemp("step05")
    graded = copy_step(step_dir, root)
    log_dir = root / "service-logs"
    log_dir.mkdir()
    keys = ls.fernet_keys(2)
    # A prompt stored earlier with the second (older) key: `prompt_store show` must read it (MultiFernet).
    seeded = {"request_id": "grader-seeded-" + secrets.token_hex(6), "marker": marker()}
    seeded_line = {"request_id": seeded["request_id"], "timestamp": "2026-01-01T00:00:00+00:00",
                   "token": ls.encrypt({"message": f"예전 질문 {seeded['marker']}", "answer": "예전 답"}, keys[1])}
    (log_dir / "prompts.jsonl").write_text(json.dumps(seeded_line) + "\n", encoding="utf-8")
    env = {
        "SERVICE_API_KEY": SERVICE_KEY,
        "GOOGLE_API_KEY": GOOGLE_KEY,
        "GOOGLE_GEMINI_BASE_URL": simulator.base_url,
        "LLM_MODEL": MODEL,
        "LLM_TIMEOUT_SECONDS": "10",
        "LLM_MAX_ATTEMPTS": str(MAX_ATTEMPTS),
        "JUDGE_SAMPLE_RATE": "0",
        "LOG_DIR": str(log_dir),
        "LOG_LEVEL": "INFO",
        "SENTRY_DSN": sentry.dsn,
        "PROMPT_ENCRYPTION_KEYS": ",".join(keys),
        "LANGSMITH_TRACING": "true",
        "LANGSMITH_ENDPOINT": lsr.endpoint,
        "LANGSMITH_API_KEY": LANGSMITH_KEY,
        "LANGSMITH_PROJECT": "grader-step05",
        "OTEL_BSP_SCHEDULE_DELAY": "200",     # 스팬을 0.2 초마다 내보냄 (기본 5 초)
        **mlf.env(),
    }
    simulator.reset(config=True)
    r = Run([], log_dir, graded, env, keys, seeded)
    with run_service(graded, env=env, name=f"{graded.name} (로깅 검사용)") as svc:
        r.sent = send_traffic(svc, simulator)
        r.by_request_id = dict(simulator.stats().get("by_request_id") or {})
        svc.stop(grace=15)  # graceful: Sentry, the span processor and LangSmith flush what they hold
        r.stdout = svc.output()
    simulator.reset(config=True)
    r.file_log = ls.parse_lines(ls.read_dir(log_dir, "app.jsonl*"))
    r.out_log = ls.parse_lines(r.stdout)
    collect_traces(r, mlf)
    time.sleep(0.3)
    r.sentry_events = list(sentry.events())
    r.sentry_raw = "\n".join(x.text() for x in sentry.raw())    # bodies only (the auth headers are expected)
    r.runs = list(lsr.runs())
    r.langsmith_raw = "\n".join(x.text() for x in lsr.raw())
    return r


def headers(rid: str | None = None, traceparent: str | None = None, key: str | None = SERVICE_KEY) -> dict:
    h = {"Authorization": f"Bearer {BEARER}", "Cookie": f"session={COOKIE}"}
    if key is not None:
        h["X-API-Key"] = key
    if rid is not None:
        h["X-Request-ID"] = rid
    if traceparent is not None:
        h["traceparent"] = traceparent
    return h


def send_traffic(svc, sim) -> list[Sent]:
    sent: list[Sent] = []

    def do(s: Sent, hdrs: dict, **kw) -> Sent:
        before = sim.stats()["requests_total"]
        last_seq = (sim.requests(limit=1) or [{"seq": 0}])[-1]["seq"]
        started = time.monotonic()
        try:
            resp = httpx.request(s.method, f"{svc.base_url}{s.path}", headers=hdrs, timeout=30, **kw)
        except httpx.HTTPError as exc:
            fail(expected=f"{s.name}: {s.method} {s.path} 에 서비스가 응답", measured=f"{type(exc).__name__}: {exc}")
        s.seconds = time.monotonic() - started
        s.status = resp.status_code
        s.rid = resp.headers.get("x-request-id")
        try:
            s.body = resp.json() if isinstance(resp.json(), dict) else {}
        except ValueError:
            s.body = {}
        s.answer = s.body.get("response") if s.status == 200 else None
        s.attempts = sim.stats()["requests_total"] - before
        s.sim_rows = [row for row in sim.requests(limit=10) if row["seq"] > last_seq]
        sent.append(s)
        return s

    def chat(name: str, rid=None, traceparent=True, key=SERVICE_KEY) -> Sent:
        m = marker()
        msg = f"{QUESTION} (문의 번호 {m})"
        tid = sid = tp = None
        if traceparent:
            tid, sid, tp = ls.new_traceparent()
        s = Sent(name, "POST", "/chat", "/chat", supplied=rid, trace_id=tid, parent_span=sid, marker=m, message=msg)
        return do(s, headers(rid, tp, key), json={"message": msg})

    chat("정상 요청 (올바른 X-Request-ID)", rid="grader-ok-" + secrets.token_hex(6))
    chat("정상 요청 (X-Request-ID 없음, traceparent 없음)", traceparent=False)
    chat("형식이 틀린 X-Request-ID", rid=f"bad id/{secrets.token_hex(5)}!", traceparent=False)
    chat("너무 긴 X-Request-ID (80자)", rid="L" + secrets.token_hex(40)[:79], traceparent=False)
    chat("너무 짧은 X-Request-ID (6자)", rid="s" + secrets.token_hex(3)[:5], traceparent=False)
    chat("키 없는 요청 (401)", rid="grader-401-" + secrets.token_hex(6), traceparent=False, key=None)
    do(Sent("없는 경로 (404)", "GET", f"/nope-{secrets.token_hex(4)}", None), headers())
    big = json.dumps({"message": "가" * 40_000})  # 120 KB > 64 KiB
    do(Sent("너무 큰 본문 (413)", "POST", "/chat", "/chat"), {**headers(), "Content-Type": "application/json"},
       content=big.encode())
    do(Sent("빈 메시지 (422)", "POST", "/chat", "/chat"), headers(), json={"message": ""})
    sim.configure(error_503_rate=1.0)
    try:
        chat("업스트림 장애 1 (503 x 시도 전부)")
        chat("업스트림 장애 2 (503 x 시도 전부)")
        sim.configure(error_503_rate=FLAKY_RATE)
        for i in range(FLAKY_MAX):
            chat(f"불안정한 업스트림 {i + 1} (503 {FLAKY_RATE:.0%})")
            flaky = [s for s in sent if s.name.startswith("불안정한")]
            if i >= 3 and any(s.chat_ok and s.attempts >= 2 for s in flaky):
                break
    finally:
        sim.configure(error_503_rate=0.0)
    return sent


def collect_traces(r: Run, mlf) -> None:
    """The MLflow trace of every trace id the grader sent or a log line names. Waits once (the first
    trace may still be on its way); when nothing arrived at all it does not wait for the others."""
    from coursekit.tracing import TracingError

    wanted = [s.trace_id for s in r.sent if s.trace_id]
    wanted += [d.get("trace_id") for d in r.file_log.requests() if isinstance(d.get("trace_id"), str)
               and ls.HEX32.match(d.get("trace_id"))]
    wanted = list(dict.fromkeys(wanted))
    first = True
    for tid in wanted:
        try:
            if first:
                r.traces[tid] = mlf.wait_for_trace(tid, timeout=6)
            else:
                r.traces[tid] = mlf.trace(tid)
        except TracingError as exc:
            r.traces[tid] = None
            r.mlflow_error = str(exc).splitlines()[0]
            if first and not mlf.traces():
                first = False
                break
        first = False


def spans_of(r: Run, tid: str | None) -> list[ls.Span]:
    t = r.traces.get(tid) if tid else None
    return [ls.to_span(s) for s in (t or {}).get("spans", [])]


def need_request_ids(r: Run) -> None:
    """Blocked when no response carries X-Request-ID (nothing to match log lines, events, traces by);
    a single response without it is a problem of the check that looks at that request."""
    if not any(s.rid for s in r.sent):
        blocked("step05.request_id", measured=f"응답 {len(r.sent)}개 모두 X-Request-ID 헤더가 없음")


def need_log_lines(r: Run) -> None:
    need_request_ids(r)
    if not r.file_log.requests():
        blocked("step05.log_line", measured=f"LOG_DIR/app.jsonl 에 event=request 줄이 없음 "
                f"(JSON 줄 {len(r.file_log.lines)}개, JSON 이 아닌 줄 {len(r.file_log.bad)}개)")


# --------------------------------------------------------------------------- log lines
@check("step05.log_line")
def test_one_json_line_per_request(run):
    r = run
    need_request_ids(r)
    record("requests", len(r.sent))
    record("file_lines", len(r.file_log.lines))
    if not r.file_log.lines and not r.file_log.bad:
        files = sorted(p.name for p in r.log_dir.iterdir())
        fail(expected=f"요청 {len(r.sent)}개 -> LOG_DIR/app.jsonl 에 JSON 줄 {len(r.sent)}개 (LOG_DIR={r.log_dir})",
             measured=f"app.jsonl 이 없거나 비어 있음 (LOG_DIR 의 파일: {files or '없음'})")
    problems = []
    for s in r.sent:
        if not s.rid:
            problems.append(f"{s.label()}: 응답에 X-Request-ID 가 없어 로그 줄과 맞출 수 없음")
            continue
        lines = r.lines(s)
        if len(lines) != 1:
            problems.append(f"{s.label()}: request_id={s.rid} 인 event=request 줄 {len(lines)}개")
            continue
        d = lines[0]
        bad = [f for f in ls.REQUIRED if f not in d]
        if bad:
            problems.append(f"{s.label()}: 없는 필드 {bad}")
            continue
        why = []
        if not ls.iso_utc(d["timestamp"]):
            why.append(f"timestamp={d['timestamp']!r} (ISO 8601 UTC 아님)")
        if not (isinstance(d["trace_id"], str) and ls.HEX32.match(d["trace_id"]) and set(d["trace_id"]) != {"0"}):
            why.append(f"trace_id={d['trace_id']!r} (32자리 16진수 아님)")
        if d["method"] != s.method:
            why.append(f"method={d['method']!r} (보낸 것 {s.method})")
        if s.route and d["route"] != s.route:
            why.append(f"route={d['route']!r} (경로 템플릿 {s.route})")
        if d["status"] != s.status or isinstance(d["status"], bool):
            why.append(f"status={d['status']!r} (응답 {s.status}, 정수)")
        lat = d["latency_ms"]
        if not isinstance(lat, (int, float)) or isinstance(lat, bool) or not 0 <= lat <= s.seconds * 1000 + 50:
            why.append(f"latency_ms={lat!r} (클라이언트가 잰 {s.seconds * 1000:.0f} ms 이하의 수)")
        if s.chat_ok:
            why += chat_fields(d, s)
        if s.upstream_failed:
            if d.get("attempts") != s.attempts:
                why.append(f"attempts={d.get('attempts')!r} (시뮬레이터가 받은 시도 {s.attempts})")
            if not d.get("error_code"):
                why.append("error_code 없음")
        if why:
            problems.append(f"{s.label()}: " + ", ".join(why))
    record("problems", len(problems))
    if problems:
        fail(expected="요청마다 (401, 404, 413, 422, 업스트림 장애 포함) 필수 필드를 갖춘 event=request JSON 줄 정확히 한 개, "
                      "request_id = 응답의 X-Request-ID, status·토큰·시도 횟수 = 실제 값",
             measured=f"요청 {len(r.sent)}개 중 {len(problems)}개가 다름: " + "; ".join(problems[:5]),
             detail=("로그 줄 예: " + ls.short_line(r.file_log.lines[0])) if r.file_log.lines else None)


def chat_fields(d: dict, s: Sent) -> list[str]:
    why = [f"{f} 없음" for f in ls.CHAT_FIELDS if f not in d]
    row = next((x for x in s.sim_rows if x.get("model") == MODEL), None)
    if d.get("model", MODEL) != MODEL:
        why.append(f"model={d.get('model')!r} (설정 LLM_MODEL={MODEL})")
    if "prompt_version" in d and d["prompt_version"] != s.body.get("prompt_version"):
        why.append(f"prompt_version={d['prompt_version']!r} (응답 {s.body.get('prompt_version')!r})")
    if row is not None:
        tin, tout = row["input_tokens"], row["output_tokens"] + (row.get("thoughts_tokens") or 0)
        if "input_tokens" in d and d["input_tokens"] != tin:
            why.append(f"input_tokens={d['input_tokens']!r} (시뮬레이터 {tin})")
        if "output_tokens" in d and d["output_tokens"] != tout:
            why.append(f"output_tokens={d['output_tokens']!r} (시뮬레이터 {tout})")
        want = cost_usd(MODEL, tin, tout)
        if "cost_usd" in d and not (isinstance(d["cost_usd"], (int, float))
                                    and math.isclose(d["cost_usd"], want, rel_tol=1e-6, abs_tol=1e-12)):
            why.append(f"cost_usd={d['cost_usd']!r} (가격표로 {want:.8f})")
    if "attempts" in d and d["attempts"] != s.attempts:
        why.append(f"attempts={d['attempts']!r} (시뮬레이터가 받은 시도 {s.attempts})")
    return why


@check("step05.access_log")
def test_access_log_folded(run):
    r = run
    need_request_ids(r)
    access = [ln for ln in r.stdout.splitlines() if ls.ACCESS_LINE.search(ln) and not ln.lstrip().startswith("{")]
    record("plain_access_lines", len(access))
    if access:
        fail(expected="uvicorn 의 평문 접근 로그 없음 (끄거나 JSON 한 줄로 접음)",
             measured=f"평문 접근 로그 {len(access)}줄, 예: {access[0][:160]}")
    problems = []
    for s in r.sent:
        n = len(r.out_log.for_id(s.rid))
        if s.rid and n != 1:
            problems.append(f"{s.label()}: {n}줄")
    record("stdout_json_lines", len(r.out_log.requests()))
    if problems:
        fail(expected="표준 출력에도 요청마다 event=request JSON 줄 정확히 한 개 (파일과 같은 줄)",
             measured=f"요청 {len(r.sent)}개 중 {len(problems)}개가 다름: " + "; ".join(problems[:5]),
             detail=f"표준 출력의 JSON 이 아닌 줄 {len(r.out_log.bad)}개" + (f", 예: {r.out_log.bad[-1][:160]}"
                                                                      if r.out_log.bad else ""))


# --------------------------------------------------------------------------- request id
@check("step05.request_id")
def test_request_id(run):
    r = run
    problems = []
    rids = [s.rid for s in r.sent]
    record("missing_header", sum(1 for x in rids if not x))
    if not any(rids):
        fail(expected="모든 응답에 X-Request-ID 헤더", measured=f"응답 {len(r.sent)}개 중 X-Request-ID 가 있는 응답 0개")
    for s in r.sent:
        if not s.rid:
            problems.append(f"{s.label()}: 응답에 X-Request-ID 없음")
            continue
        if not ls.REQUEST_ID_RE.match(s.rid):
            problems.append(f"{s.label()}: 응답의 X-Request-ID {s.rid[:80]!r} 가 ^[A-Za-z0-9._-]{{8,64}}$ 에 맞지 않음")
        valid = s.supplied is not None and bool(ls.REQUEST_ID_RE.match(s.supplied))
        if valid and s.rid != s.supplied:
            problems.append(f"{s.label()}: 올바른 X-Request-ID {s.supplied!r} 대신 {s.rid!r} 를 돌려줌")
        if s.supplied is not None and not valid:
            piece = s.supplied[:24]
            if piece in s.rid:
                problems.append(f"{s.label()}: 잘못된 X-Request-ID {s.supplied[:40]!r} 를 그대로 돌려줌")
            leaked = ls.scan({"로그 파일": r.file_log.text, "표준 출력": r.stdout}, {"받은 값": piece})
            if leaked:
                problems.append(f"{s.label()}: 잘못된 X-Request-ID {piece!r} 가 남음 ({', '.join(leaked)})")
        if s.chat_ok:
            upstream = {row.get("request_id") for row in s.sim_rows}
            if upstream != {s.rid}:
                problems.append(f"{s.label()}: 업스트림 호출의 X-Request-ID {sorted(map(str, upstream))} (응답 {s.rid})")
        if s.upstream_failed or (s.chat_ok and s.attempts > 1):
            got = r.by_request_id.get(s.rid, 0)
            if got != s.attempts:
                problems.append(f"{s.label()}: X-Request-ID 가 실린 업스트림 시도 {got}개 (전체 시도 {s.attempts}개)")
    fresh = [s.rid for s in r.sent if s.rid and (s.supplied is None or not ls.REQUEST_ID_RE.match(s.supplied))]
    if len(set(fresh)) != len(fresh):
        problems.append(f"새로 만든 ID 가 겹침: {fresh}")
    record("problems", len(problems))
    if problems:
        fail(expected="올바른 X-Request-ID 는 그대로, 없거나 잘못된(공백·기호, 6자, 80자) 값은 새 ID 로 (되돌려 보내거나 "
                      "로그에 남기지 않음); 응답 헤더와 모든 업스트림 시도에 같은 ID",
             measured=f"{len(problems)}건: " + "; ".join(problems[:5]))


# --------------------------------------------------------------------------- log store
@check("step05.log_store")
def test_log_store(run):
    r = run
    need_log_lines(r)
    targets = [s for s in r.sent if s.chat_ok][:1] + [s for s in r.sent if s.upstream_failed][:1]
    if not (r.graded_dir / "logstore.py").is_file() and not (r.graded_dir / "logstore").is_dir():
        fail(expected="단계 폴더에 logstore.py (`python -m logstore <request_id>`)", measured="파일이 없습니다")
    for s in targets:
        want = r.lines(s)
        if len(want) != 1:
            blocked("step05.log_line", measured=f"{s.label()}: 로그 파일에 그 요청의 줄이 {len(want)}개")
        started = time.monotonic()
        try:
            proc = subprocess.run([sys.executable, "-m", "logstore", s.rid], cwd=r.graded_dir, env=service_env(r.env),
                                  capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, check=False)
        except subprocess.TimeoutExpired:
            fail(expected=f"`python -m logstore {s.rid}` 가 60초 안에 끝남", measured="시간 초과")
        record("seconds", round(time.monotonic() - started, 2))
        if proc.returncode != 0:
            fail(expected=f"`python -m logstore {s.rid}` 가 종료 코드 0", measured=f"종료 코드 {proc.returncode}",
                 detail=(proc.stdout + proc.stderr)[-800:])
        out = ls.parse_lines(proc.stdout)
        got = [d for d in out.lines if d.get("request_id") == s.rid and d.get("event") == "request"]
        others = [d for d in out.lines if d.get("request_id") not in (s.rid, None)]
        if len(got) != 1 or others:
            fail(expected=f"`python -m logstore {s.rid}` 가 그 요청의 줄(JSON, request_id={s.rid})만 출력하고 "
                          "그중 event=request 줄이 하나",
                 measured=f"그 요청의 event=request 줄 {len(got)}개, 다른 요청의 줄 {len(others)}개 "
                          f"(출력 {len(proc.stdout.splitlines())}줄)",
                 detail=proc.stdout[-600:] or proc.stderr[-600:])
        if got[0].get("status") != s.status:
            fail(expected=f"찾은 event=request 줄의 status = {s.status}", measured=ls.short_line(got[0]))


# --------------------------------------------------------------------------- traces
@check("step05.traces")
def test_one_trace_per_request(run):
    r = run
    if not any(r.traces.values()):
        fail(expected="서비스가 OTLP 로 보낸 추적이 MLflow 에 도착 (OTEL_EXPORTER_OTLP_TRACES_ENDPOINT/HEADERS)",
             measured=f"MLflow 의 추적 0개 ({r.mlflow_error or '도착한 추적 없음'})")
    need_log_lines(r)
    problems = []
    with_tp = [s for s in r.sent if s.trace_id]
    # incoming traceparent honoured: the log line's trace id is the one the grader sent
    for s in with_tp:
        lines = r.lines(s)
        got = lines[0].get("trace_id") if len(lines) == 1 else None
        if got != s.trace_id:
            problems.append(f"{s.label()}: 보낸 traceparent 의 trace id {s.trace_id} 대신 로그 줄 trace_id={got!r}")
    # one trace per request
    tids = [(s, t if isinstance(t := (r.lines(s) or [{}])[0].get("trace_id"), str) else None) for s in r.sent]
    seen: dict = {}
    for s, tid in tids:
        if tid:
            seen.setdefault(tid, []).append(s.name)
    shared = {t: n for t, n in seen.items() if len(n) > 1}
    if shared:
        t, names = next(iter(shared.items()))
        problems.append(f"요청 {len(names)}개가 같은 trace_id {t} ({', '.join(names[:3])})")
    record("traces_in_mlflow", sum(1 for t in r.traces.values() if t))
    for s, tid in tids:
        if s.path != "/chat" or not tid:
            continue
        t = r.traces.get(tid)
        if t is None:
            problems.append(f"{s.label()}: MLflow API 가 trace {tid} 를 돌려주지 않음")
            continue
        roots = ls.server_spans(spans_of(r, tid))
        if len(roots) != 1:
            problems.append(f"{s.label()}: 서버 스팬(추적의 뿌리) {len(roots)}개: {[x.name for x in roots][:4]}")
        elif s.parent_span and roots[0].parent_id != s.parent_span:
            problems.append(f"{s.label()}: 서버 스팬의 부모 {roots[0].parent_id} (보낸 traceparent 의 span id {s.parent_span})")
    record("problems", len(problems))
    if problems:
        fail(expected="요청마다 추적 하나 (서버 스팬 하나), 로그 줄의 trace_id = 그 추적, 들어온 traceparent 를 이어받음, "
                      "MLflow API 가 그 추적을 돌려줌",
             measured=f"{len(problems)}건: " + "; ".join(problems[:4]))


@check("step05.llm_spans")
def test_llm_span_per_attempt(run):
    r = run
    targets = [s for s in r.sent if s.trace_id and s.path == "/chat" and (s.chat_ok or s.upstream_failed)]
    problems, counts = [], []
    for s in targets:
        if r.traces.get(s.trace_id) is None:
            blocked("step05.traces", measured=f"{s.label()}: MLflow 에 추적 {s.trace_id} 가 없음")
        spans = spans_of(r, s.trace_id)
        llm = ls.llm_spans(spans)
        counts.append((s.attempts, len(llm)))
        if len(llm) != s.attempts:
            problems.append(f"{s.label()}: LLM 스팬 {len(llm)}개, 시뮬레이터가 받은 시도 {s.attempts}개 "
                            f"(스팬: {[x.name for x in spans][:6]})")
            continue
        want = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "gcp.gemini", "gen_ai.request.model": MODEL}
        for sp in llm:
            wrong = {k: sp.attributes.get(k) for k, v in want.items() if sp.attributes.get(k) != v}
            if sp.name != f"chat {MODEL}":
                wrong["이름"] = sp.name
            if wrong:
                problems.append(f"{s.label()}: LLM 스팬의 {wrong} (기대 {want}, 이름 'chat {MODEL}')")
                break
        ok_spans = [sp for sp in llm if "error.type" not in sp.attributes]
        failed = [sp for sp in llm if "error.type" in sp.attributes]
        want_failed = s.attempts - (1 if s.chat_ok else 0)
        if len(failed) != want_failed:
            problems.append(f"{s.label()}: error.type 이 있는 LLM 스팬 {len(failed)}개 (실패한 시도 {want_failed}개)")
        if s.chat_ok:
            row = next((x for x in s.sim_rows if x.get("model") == MODEL), None)
            if row and ok_spans:
                sp = ok_spans[-1]
                tin, tout = row["input_tokens"], row["output_tokens"] + (row.get("thoughts_tokens") or 0)
                got = (sp.attributes.get("gen_ai.usage.input_tokens"), sp.attributes.get("gen_ai.usage.output_tokens"))
                if got != (tin, tout):
                    problems.append(f"{s.label()}: 스팬의 토큰 (입력, 출력) = {got}, 시뮬레이터 ({tin}, {tout})")
                tp = ls.parse_traceparent(row.get("traceparent"))
                if tp is None or tp[0] != s.trace_id or tp[1] not in {x.span_id for x in llm}:
                    problems.append(f"{s.label()}: 업스트림 요청의 traceparent {row.get('traceparent')!r} 가 그 시도의 "
                                    f"LLM 스팬(trace {s.trace_id})이 아님")
    record("attempts_vs_spans", counts)
    if problems:
        fail(expected=f"업스트림 시도마다 LLM 자식 스팬 하나 (이름 'chat {MODEL}', GenAI 속성, 성공하면 시뮬레이터와 같은 토큰, "
                      "실패하면 error.type), 그 시도의 traceparent 를 업스트림에 전달",
             measured=f"{len(problems)}건: " + "; ".join(problems[:4]))


# --------------------------------------------------------------------------- sentry
@check("step05.sentry")
def test_sentry_once_per_failed_request(run):
    r = run
    failed = [s for s in r.sent if s.upstream_failed]
    if not failed:
        fail(expected="업스트림 503 을 시도마다 주입하면 /chat 이 5xx", measured=", ".join(
            s.label() for s in r.sent if s.name.startswith("업스트림")))
    events = r.sentry_events
    record("events", len(events))
    record("failed_requests", len(failed))
    if not events:
        fail(expected=f"업스트림 장애로 실패한 요청 {len(failed)}개 -> SENTRY_DSN 의 Sentry 에 이벤트 {len(failed)}개",
             measured="받은 이벤트 0개")
    need_request_ids(r)
    tagged: dict = {}
    for e in events:
        tagged.setdefault(ls.sentry_tag(e, "request_id"), []).append(e)
    problems = []
    for s in failed:
        n = len(tagged.get(s.rid, [])) if s.rid else 0
        if n != 1:
            problems.append(f"{s.label()} (시도 {s.attempts}번): request_id={s.rid} 태그의 이벤트 {n}개")
    others = [s.label() for s in r.sent if not s.upstream_failed and s.rid and tagged.get(s.rid)]
    if others:
        problems.append(f"실패하지 않은 요청의 이벤트: {', '.join(others[:3])}")
    untagged = len(tagged.get(None, []))
    if untagged:
        problems.append(f"request_id 태그가 없는 이벤트 {untagged}개")
    leaked = ls.scan({"Sentry 이벤트": r.sentry_raw}, {
        "서비스 키": SERVICE_KEY, "Gemini 키": GOOGLE_KEY, "Authorization 값": BEARER, "Cookie 값": COOKIE,
        **{f"질문 ({s.name})": s.marker for s in r.sent if s.marker}})
    if leaked:
        problems.append("이벤트에 키·헤더·질문: " + ", ".join(leaked[:3]))
    pii = [(e, found) for e in events if (found := personal_data(e))]
    if pii:
        problems.append(f"개인정보·본문이 실린 이벤트 {len(pii)}개: " + ", ".join(pii[0][1]))
    if problems:
        fail(expected=f"업스트림 장애로 실패한 요청 {len(failed)}개 -> Sentry 이벤트 각각 정확히 하나 (request_id 태그), "
                      "다른 요청은 이벤트 없음, 이벤트에 키·Authorization·질문·IP·쿠키·본문 없음 (send_default_pii=False)",
             measured=f"이벤트 {len(events)}개: " + "; ".join(problems[:4]),
             detail="받은 이벤트: " + "; ".join(event_summary(e) for e in events[:4]) if events else None)


SENSITIVE_HEADERS = {"authorization", "x-api-key", "cookie", "x-goog-api-key"}


def personal_data(e: dict) -> list[str]:
    """What send_default_pii=True (without a before_send that removes it) puts in an event."""
    req, user = e.get("request") or {}, e.get("user") or {}
    found = [k for k, v in (("user.ip_address", user.get("ip_address")), ("request.cookies", req.get("cookies")),
                            ("request.data", req.get("data")),
                            ("request.env.REMOTE_ADDR", (req.get("env") or {}).get("REMOTE_ADDR"))) if v]
    hdrs = req.get("headers") or {}
    if isinstance(hdrs, list):
        hdrs = dict(h for h in hdrs if isinstance(h, (list, tuple)) and len(h) == 2)
    found += [f"request.headers.{k}" for k, v in hdrs.items() if str(k).lower() in SENSITIVE_HEADERS
              and v and "filtered" not in str(v).lower()]
    return found


def event_summary(e: dict) -> str:
    exc = ((e.get("exception") or {}).get("values") or [{}])[-1]
    what = f"{exc.get('type', '')}: {str(exc.get('value', ''))[:80]}" if exc else str(
        (e.get("logentry") or {}).get("message") or e.get("message") or "")[:80]
    return f"[request_id={ls.sentry_tag(e, 'request_id')}] {what}"


# --------------------------------------------------------------------------- langsmith
@check("step05.langsmith")
def test_langsmith_hidden(run):
    r = run
    chats = [s for s in r.sent if s.chat_ok]
    record("runs", len(r.runs))
    if not r.runs:
        fail(expected=f"LANGSMITH_TRACING=true 와 LANGSMITH_ENDPOINT 로 켜면 /chat {len(chats)}개의 실행(run)이 LangSmith 에 도착",
             measured="받은 실행 0개")
    needles = {f"{s.name} 의 질문": s.marker for s in chats if s.marker}
    needles.update({f"{s.name} 의 답": s.answer[:40] for s in chats if s.answer and len(s.answer) >= 20})
    found = ls.scan({"LangSmith 실행": r.langsmith_raw + json.dumps(r.runs, ensure_ascii=False, default=str)}, needles)
    if found:
        fail(expected="LangSmith 로 나가는 실행에 질문과 답이 없음 (LANGSMITH_HIDE_INPUTS, LANGSMITH_HIDE_OUTPUTS)",
             measured=f"실행 {len(r.runs)}개에서 찾음: " + "; ".join(found[:4]))


# --------------------------------------------------------------------------- scans
def places(r: Run) -> dict[str, str]:
    spans = [s for t in r.traces.values() if t for s in t.get("spans", [])]
    return {
        "LOG_DIR 의 파일": "".join(p.read_text(encoding="utf-8", errors="replace") for p in sorted(r.log_dir.rglob("*"))
                                if p.is_file()),
        "표준 출력": r.stdout,
        "Sentry 이벤트": r.sentry_raw + json.dumps(r.sentry_events, ensure_ascii=False, default=str),
        "MLflow 스팬": json.dumps(spans, ensure_ascii=False, default=str),
        "LangSmith 실행": r.langsmith_raw + json.dumps(r.runs, ensure_ascii=False, default=str),
    }


@check("step05.secrets")
def test_no_secrets(run):
    r = run
    needles = {"서비스 키 (X-API-Key)": SERVICE_KEY, "Gemini 키": GOOGLE_KEY, "LangSmith 키": LANGSMITH_KEY,
               "Authorization 값": BEARER, "Cookie 값": COOKIE}
    for k in r.keys:
        needles[f"암호화 키 {k[:6]}…"] = k
    found = ls.scan(places(r), needles)
    record("findings", len(found))
    if found:
        fail(expected="서비스가 남긴 어디에도 키와 Authorization·Cookie 헤더 값이 없음",
             measured=f"{len(found)}곳: " + "; ".join(found[:5]))
    need_log_lines(r)  # nothing written, nothing scanned: a clean scan proves nothing yet


@check("step05.prompt_privacy")
def test_no_raw_prompt(run):
    r = run
    chats = [s for s in r.sent if s.marker and s.path == "/chat"]
    needles = {f"질문 ({s.name})": s.marker for s in chats}
    needles.update({f"답 ({s.name})": s.answer[:40] for s in chats if s.answer and len(s.answer) >= 20})
    found = ls.scan(places(r), needles)
    record("findings", len(found))
    if found:
        fail(expected="로그, 표준 출력, Sentry 이벤트, 스팬, LangSmith 실행 어디에도 질문과 답의 평문이 없음",
             measured=f"{len(found)}곳: " + "; ".join(found[:5]))
    need_log_lines(r)


# --------------------------------------------------------------------------- encryption
def prompt_store(r: Run, *args: str, keys: list[str] | None = None) -> subprocess.CompletedProcess:
    env = service_env({**r.env, "PROMPT_ENCRYPTION_KEYS": ",".join(keys or r.keys)})
    try:
        return subprocess.run([sys.executable, "-m", "prompt_store", *args], cwd=r.graded_dir, env=env,
                              capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired:
        fail(expected=f"`python -m prompt_store {' '.join(args)}` 가 60초 안에 끝남", measured="시간 초과")


@check("step05.encryption")
def test_prompt_store_encrypted(run):
    r = run
    chats = [s for s in r.sent if s.chat_ok]
    path = r.log_dir / "prompts.jsonl"
    store = ls.parse_lines(path.read_text(encoding="utf-8", errors="replace")) if path.is_file() else ls.LogText()
    rows = [d for d in store.lines if d.get("request_id") != r.seeded["request_id"]]
    record("stored", len(rows))
    if not rows:
        fail(expected=f"PROMPT_ENCRYPTION_KEYS 를 주면 /chat 성공 {len(chats)}개마다 LOG_DIR/prompts.jsonl 에 "
                      "{request_id, timestamp, token} 한 줄",
             measured=f"저장된 줄 0개 (JSON 이 아닌 줄 {len(store.bad)}개)")
    clear = ls.scan({"prompts.jsonl": store.text}, {s.name: s.marker for s in chats})
    if clear:
        fail(expected="prompts.jsonl 에 질문의 평문이 없음 (Fernet 토큰만)", measured="; ".join(clear[:3]))
    problems = []
    by_id: dict = {}
    for d in rows:
        by_id.setdefault(d.get("request_id"), []).append(d)
    for s in chats:
        got = by_id.get(s.rid, [])
        if len(got) != 1:
            problems.append(f"{s.label()}: request_id={s.rid} 인 줄 {len(got)}개")
            continue
        plain = ls.decrypt(got[0].get("token"), r.keys[:1])
        if plain is None:
            problems.append(f"{s.label()}: 토큰이 첫 키(PROMPT_ENCRYPTION_KEYS 의 첫 값)로 복호화되지 않음")
        elif plain.get("message") != s.message:
            problems.append(f"{s.label()}: 복호화한 message 가 보낸 질문과 다름")
    if problems:
        fail(expected="/chat 성공마다 한 줄, 토큰은 첫 키로 암호화되어 보낸 질문으로 복호화됨",
             measured=f"{len(problems)}건: " + "; ".join(problems[:4]))
    s = chats[0]
    shown = prompt_store(r, "show", s.rid)
    if shown.returncode != 0 or s.marker not in shown.stdout:
        fail(expected=f"`python -m prompt_store show {s.rid}` 가 그 질문을 복호화해 출력",
             measured=f"종료 코드 {shown.returncode}, 출력에 질문 {'있음' if s.marker in shown.stdout else '없음'}",
             detail=(shown.stdout + shown.stderr)[-600:])
    old = prompt_store(r, "show", r.seeded["request_id"])
    if old.returncode != 0 or r.seeded["marker"] not in old.stdout:
        fail(expected="옛 키(PROMPT_ENCRYPTION_KEYS 의 둘째 값)로 암호화된 줄도 `prompt_store show` 가 읽음 (MultiFernet)",
             measured=f"종료 코드 {old.returncode}, 출력에 질문 {'있음' if r.seeded['marker'] in old.stdout else '없음'}",
             detail=(old.stdout + old.stderr)[-600:])
    new_key = ls.fernet_keys(1)[0]
    rotated = prompt_store(r, "rotate", keys=[new_key, *r.keys])
    after = ls.parse_lines(path.read_text(encoding="utf-8", errors="replace")) if path.is_file() else ls.LogText()
    unread = [d.get("request_id") for d in after.lines if ls.decrypt(d.get("token"), [new_key]) is None]
    record("rotated_lines", len(after.lines))
    if rotated.returncode != 0 or unread or len(after.lines) != len(store.lines):
        fail(expected=f"`python -m prompt_store rotate` (새 키를 맨 앞에) 뒤 {len(store.lines)}줄 모두 새 키만으로 복호화됨",
             measured=f"종료 코드 {rotated.returncode}, 줄 {len(after.lines)}개 중 새 키로 읽히지 않는 줄 {len(unread)}개",
             detail=(rotated.stdout + rotated.stderr)[-600:])
    again = prompt_store(r, "show", s.rid, keys=[new_key])
    if again.returncode != 0 or s.marker not in again.stdout:
        fail(expected="키 교체 뒤 새 키 하나만으로 `prompt_store show` 가 읽음",
             measured=f"종료 코드 {again.returncode}", detail=(again.stdout + again.stderr)[-600:])
