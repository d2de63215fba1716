"""Step 03 채점 (1): 프롬프트·모델 버전과 평가 게이트.

학습자의 평가 게이트(`python -m eval`, 단계 폴더에서)를 채점기가 띄운 Gemini 시뮬레이터 앞에서 실제로 돌립니다.
기준 모델과 학습자의 기본 프롬프트로는 통과해야 하고, 채점기가 실행 시점에 모델을 약한 프로필로 바꾸거나
근거 규칙이 없는 프롬프트를 넣으면 실패(종료 코드 1)해야 합니다. 보고서의 질문별 결과와 지표는 시뮬레이터가
스스로 센 값(GET /_sim/requests 의 질문별 판정, 토큰)에서 채점기가 다시 계산한 값과 같아야 합니다.

계약 (eval/ 의 스타터와 lesson §3, §4):
- 종료 코드: 0 통과, 1 임계값 미달, 2 평가할 수 없음 (설정, 데이터, LLM 연결)
- eval/results/report.json: {"passed", "model", "prompt_version", "metrics": {...}, "failures": [...],
  "results": [{"id", "question", "outcome", "latency_s", ...}]}, eval/results/summary.md
- eval/dataset.toml: refusal_markers, [[items]] (id, question, facts, keywords | refuse = true)
- eval/thresholds.toml: [thresholds] min_<지표> / max_<지표>
"""

from __future__ import annotations

import json
import math
import re
import secrets
import shutil
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from coursekit.simulator import knowledge, prompts
from coursekit.simulator.generate import NOT_KNOWN_TEXT, REFUSAL_TEXT
from coursekit.simulator.models import cost_usd, judge_models
from grader.harness import blocked, check, copy_step, fail, free_port, record, run_service, service_env

STEP = "step03"

REFERENCE_MODEL = "gemini-3.5-flash"      # 기준 실행 (임계값을 고른 모델)
SERVICE_MODEL = "gemini-3.5-flash-lite"   # 버전 검사는 기본값이 아닌 모델로
WEAK_MODEL = "gemini-2.0-flash-lite"      # 지식 베이스를 약 55% 만 아는 프로필
MIN_KB_ITEMS = 20
MIN_REFUSE_ITEMS = 5
GATE_TIMEOUT = 120.0
METRICS = ("accuracy", "hallucination_rate", "refusal_accuracy", "relevance", "cost_per_answer_usd", "p95_latency_s")
LENIENT = {"min_accuracy": 0.0, "max_hallucination_rate": 1.0, "min_refusal_accuracy": 0.0, "min_relevance": 0.0,
           "max_cost_per_answer_usd": 1.0, "max_p95_latency_s": 1000.0}

SERVICE_KEY = "svc-" + secrets.token_hex(16)
GOOGLE_KEY = "grader-gemini-" + secrets.token_hex(8)
# 채점기가 넣는 프롬프트 버전 (기본값이 아닌 이름과 내용: 코드에 박아 둔 프롬프트는 드러납니다).
GROUNDED_VERSION = "grader-" + secrets.token_hex(3)
GROUNDED_PROMPT = (f"채점용 프롬프트 {GROUNDED_VERSION}. 당신은 하늘클라우드 고객센터 상담원입니다.\n"
                   "제공된 FAQ 정보로만 답하고, 모르면 모른다고 말하세요. 한두 문장으로 간결하게 답하세요.")
DEGRADED_VERSION = "grader-degraded-" + secrets.token_hex(3)
DEGRADED_PROMPT = "당신은 하늘클라우드 고객센터 상담원입니다. 친절하게, 한두 문장으로 간결하게 답하세요."
HANGUL = re.compile(r"[가-힣]")


# --------------------------------------------------------------------------- helpers
def gate_env(simulator, **extra: str) -> dict[str, str]:
    """The gate's settings, as CI would give them (never the learner's shell or .env; see copy_step)."""
    env = service_env({"GOOGLE_API_KEY": GOOGLE_KEY, "GOOGLE_GEMINI_BASE_URL": simulator.base_url,
                       "SERVICE_API_KEY": SERVICE_KEY, "LLM_MODEL": REFERENCE_MODEL})
    env.pop("PROMPT_VERSION", None)
    env.pop("GITHUB_STEP_SUMMARY", None)
    env.update(extra)
    return env


@dataclass
class GateRun:
    folder: Path
    what: str
    returncode: int | None
    output: str
    seconds: float
    requests: list[dict]

    @property
    def report_path(self) -> Path:
        return self.folder / "eval" / "results" / "report.json"

    @property
    def summary_path(self) -> Path:
        return self.folder / "eval" / "results" / "summary.md"

    def tail(self, n: int = 15) -> str:
        return "\n".join(self.output.strip().splitlines()[-n:]) or "(출력 없음)"

    def shown(self) -> str:
        code = "시간 초과" if self.returncode is None else f"종료 코드 {self.returncode}"
        return f"{self.what}: `python -m eval` -> {code} ({self.seconds:.1f}초)"


def run_gate(folder: Path, simulator, what: str, **env: str) -> GateRun:
    """`python -m eval` in the step folder, against the grader's simulator (counters reset first)."""
    if not (folder / "eval").is_dir():
        fail(expected=f"{folder.name}/eval/ 패키지 (python -m eval)", measured="eval/ 폴더가 없습니다")
    simulator.reset()
    started = time.monotonic()
    try:
        proc = subprocess.run([sys.executable, "-m", "eval"], cwd=folder, env=gate_env(simulator, **env),
                              capture_output=True, text=True, timeout=GATE_TIMEOUT, stdin=subprocess.DEVNULL)
        code, output = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        code = None
        output = (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
    run = GateRun(folder, what, code, output, time.monotonic() - started, simulator.requests())
    record(f"{what}_exit_code", code)
    record(f"{what}_seconds", round(run.seconds, 2))
    return run


def read_report(run: GateRun) -> dict:
    if not run.report_path.is_file():
        fail(expected="게이트가 eval/results/report.json 을 씀", measured=f"{run.shown()}, 보고서 없음",
             detail="게이트 출력 (마지막 줄):\n" + run.tail())
    try:
        report = json.loads(run.report_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        fail(expected="eval/results/report.json 이 JSON", measured=f"읽을 수 없음: {type(exc).__name__}")
    if not isinstance(report, dict):
        fail(expected="eval/results/report.json 이 JSON 객체", measured=type(report).__name__)
    return report


@dataclass(frozen=True)
class DatasetItem:
    id: str
    question: str
    facts: tuple[str, ...]
    refuse: bool


def load_dataset(folder: Path) -> tuple[list[DatasetItem], list[str]]:
    path = folder / "eval" / "dataset.toml"
    if not path.is_file():
        fail(expected="평가 세트 eval/dataset.toml", measured="파일이 없습니다")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        fail(expected="eval/dataset.toml 이 올바른 TOML", measured=str(exc))
    items = []
    for n, raw in enumerate(data.get("items") or [], start=1):
        if not isinstance(raw, dict) or not isinstance(raw.get("question"), str):
            fail(expected="[[items]] 마다 question 문자열", measured=f"{n}번째 항목: {raw!r}"[:200])
        facts = raw.get("facts") or []
        if not isinstance(facts, list) or not all(isinstance(f, str) for f in facts):
            fail(expected="facts 는 문자열 목록", measured=f"{n}번째 항목 ({raw.get('id')}): {facts!r}"[:200])
        items.append(DatasetItem(str(raw.get("id", n)), raw["question"], tuple(facts), raw.get("refuse") is True))
    markers = data.get("refusal_markers") or []
    if not isinstance(markers, list) or not all(isinstance(m, str) for m in markers):
        fail(expected="refusal_markers 는 문자열 목록", measured=repr(markers)[:200])
    return items, markers


def dataset_problems(items: list[DatasetItem], markers: list[str]) -> tuple[list[str], list[str], dict]:
    """What is wrong with the learner's evaluation set (Korean): (problems that make the gate's numbers
    incomparable with the simulator's, coverage problems), and counts."""
    problems, coverage = [], []
    kb = [i for i in items if not i.refuse]
    off = [i for i in items if i.refuse]
    entries = set()
    for it in kb:
        entry = knowledge.lookup(it.question)
        if entry is None:
            problems.append(f"{it.id}: 질문 {it.question!r} 이 지식 베이스의 어느 항목과도 맞지 않음 (거절해야 할 질문이면 refuse = true)")
            continue
        entries.add(entry.id)
        if not it.facts:
            problems.append(f"{it.id}: 기대 사실(facts)이 없음")
            continue
        brief = knowledge.brief_answer(entry.id)
        absent = [f for f in it.facts if not knowledge.has_fact(brief, f)]
        if absent:
            problems.append(f"{it.id}: 기대 사실 {absent} 이(가) 항목 {entry.id} 의 정답 (사실이 든 문장)에 없음")
            continue
        wrong = (knowledge.wrong_answer(entry.id), knowledge.wrong_answer(entry.id, True))
        if all(knowledge.has_fact(w, f) for w in wrong for f in it.facts):
            problems.append(f"{it.id}: 기대 사실 {list(it.facts)} 이 틀린 답(환각)에도 모두 있어 환각을 잡지 못함")
    for it in off:
        entry = knowledge.lookup(it.question)
        if entry is not None:
            problems.append(f"{it.id}: 거절해야 할 질문 {it.question!r} 이 지식 베이스 항목 {entry.id} 와 맞음 (지식 베이스 밖의 질문이어야 함)")
    if len(entries) < MIN_KB_ITEMS:
        coverage.append(f"지식 베이스 질문이 서로 다른 항목 {len(entries)}개 (최소 {MIN_KB_ITEMS}개)")
    if len(off) < MIN_REFUSE_ITEMS:
        coverage.append(f"거절해야 할 질문(refuse = true) {len(off)}개 (최소 {MIN_REFUSE_ITEMS}개)")
    if not any(m.strip() and knowledge.has_fact(REFUSAL_TEXT, m) for m in markers):
        problems.append(f"refusal_markers 가 거절 문장 {REFUSAL_TEXT!r} 을 알아보지 못함")
    if not any(m.strip() and knowledge.has_fact(NOT_KNOWN_TEXT, m) for m in markers):
        problems.append(f"refusal_markers 가 '모름' 답 {NOT_KNOWN_TEXT!r} 을 알아보지 못함")
    correct = [e.answer for e in knowledge.entries()] + [knowledge.brief_answer(e.id) for e in knowledge.entries()]
    hit = sorted({m for m in markers for a in correct if m.strip() and knowledge.has_fact(a, m)})
    if hit:
        problems.append(f"refusal_markers {hit} 가 정답에도 들어 있어 맞는 답을 거절로 셈")
    return problems, coverage, {"kb_items": len(kb), "kb_entries": len(entries), "refuse_items": len(off)}


def expected_outcome(item: DatasetItem, sim_outcome: str) -> str:
    """The outcome the gate must report for one question, from the simulator's own judgement."""
    if item.refuse:
        return "refused" if sim_outcome == "refused" else "generic"
    return sim_outcome


def recompute(items: list[DatasetItem], rows: list[dict]) -> dict:
    """The metrics recomputed from the simulator's log (one row per answered request)."""
    by_q = {}
    for it in items:
        by_q.setdefault(it.question, it)
    outcomes = {}
    for row in rows:
        it = by_q.get(row["question"])
        if it is not None:
            outcomes[it.question] = expected_outcome(it, row["outcome"])
    kb = [outcomes[i.question] for i in items if not i.refuse and i.question in outcomes]
    off = [outcomes[i.question] for i in items if i.refuse and i.question in outcomes]

    def rate(values, what):
        return sum(v == what for v in values) / len(values) if values else 0.0

    cost = sum(cost_usd(r["model"], r["input_tokens"], r["output_tokens"] + (r.get("thoughts_tokens") or 0))
               for r in rows)
    return {"outcomes": outcomes, "accuracy": rate(kb, "correct"), "hallucination_rate": rate(kb, "hallucinated"),
            "refusal_accuracy": rate(off, "refused"), "cost_per_answer_usd": cost / len(rows) if rows else 0.0}


def compare_with_simulator(run: GateRun, report: dict, items: list[DatasetItem]) -> None:
    """The report's per-question results and metrics must equal what the simulator counted."""
    results = report.get("results")
    metrics = report.get("metrics")
    if not isinstance(results, list) or not isinstance(metrics, dict):
        fail(expected='report.json 에 질문별 결과 "results" (목록) 와 지표 "metrics" (객체)',
             measured=f"키: {sorted(report)}")
    missing = [k for k in METRICS if not isinstance(metrics.get(k), (int, float)) or isinstance(metrics.get(k), bool)]
    if missing:
        fail(expected=f"metrics 에 숫자 지표 {', '.join(METRICS)}", measured=f"없거나 숫자가 아님: {', '.join(missing)}")
    rows = run.requests
    asked = sorted(r["question"] for r in rows)
    wanted = sorted(i.question for i in items)
    record(f"{run.what}_upstream_requests", len(rows))
    if asked != wanted:
        extra = len(rows) - len(items)
        fail(expected=f"평가 세트의 질문 {len(items)}개를 서비스의 LLM 호출로 한 번씩 보냄 (질문 그대로)",
             measured=f"시뮬레이터가 받은 질문 {len(rows)}개" + (f" ({extra:+d})" if extra else " (내용이 다름)"),
             detail="질문을 바꾸거나 덧붙이지 말고 POST /chat 의 message 로 그대로 보내세요.")
    if len(results) != len(items):
        fail(expected=f"results 에 질문 {len(items)}개의 결과", measured=f"{len(results)}개")
    truth = recompute(items, rows)
    wrong = []
    for r in results:
        if not isinstance(r, dict):
            fail(expected="results 의 항목은 객체", measured=repr(r)[:100])
        q = r.get("question")
        want = truth["outcomes"].get(q)
        if want is None:
            fail(expected='results 의 항목마다 평가 세트의 "question"', measured=repr(q)[:100])
        if r.get("outcome") != want:
            wrong.append(f"{r.get('id', q)}: 보고서 {r.get('outcome')!r}, 시뮬레이터 {want!r}")
    if wrong:
        fail(expected="질문별 판정(outcome)이 시뮬레이터의 판정과 같음",
             measured=f"{len(wrong)}개 다름: " + "; ".join(wrong[:4]) + (" ..." if len(wrong) > 4 else ""),
             hint="lesson.ipynb §3 '평가 세트와 지표' — grade() 는 거절 문구를 먼저 보고(refused), 거절해야 할 질문에 "
                  "답했으면 generic, 기대 사실이 모두 있으면 correct, 아니면 hallucinated 입니다.")
    diffs = []
    for name in ("accuracy", "hallucination_rate", "refusal_accuracy"):
        if not math.isclose(metrics[name], truth[name], abs_tol=1e-3):
            diffs.append(f"{name}: 보고서 {metrics[name]:.4f}, 다시 계산 {truth[name]:.4f}")
    if not math.isclose(metrics["cost_per_answer_usd"], truth["cost_per_answer_usd"], rel_tol=1e-4, abs_tol=1e-9):
        diffs.append(f"cost_per_answer_usd: 보고서 {metrics['cost_per_answer_usd']:.8f}, "
                     f"시뮬레이터 토큰 x 단가 {truth['cost_per_answer_usd']:.8f}")
    latencies = [r.get("latency_s") for r in results]
    if all(isinstance(v, (int, float)) for v in latencies) and latencies:
        if not min(latencies) - 1e-6 <= metrics["p95_latency_s"] <= max(latencies) + 1e-6:
            diffs.append(f"p95_latency_s {metrics['p95_latency_s']} 가 질문별 지연 시간 범위 "
                         f"[{min(latencies):.3f}, {max(latencies):.3f}] 밖")
    else:
        diffs.append("results 의 항목마다 latency_s (초) 가 있어야 함")
    record(f"{run.what}_metrics", {k: metrics[k] for k in METRICS})
    record(f"{run.what}_recomputed", {k: round(truth[k], 8) for k in ("accuracy", "hallucination_rate",
                                                                         "refusal_accuracy", "cost_per_answer_usd")})
    if diffs:
        fail(expected="보고서의 지표 = 시뮬레이터 집계로 다시 계산한 값 (정확도·환각률·거절 정확도는 지식 베이스 질문 / "
                      "거절해야 할 질문 수로 나눔, 비용은 토큰 x eval/prices.toml 단가)",
             measured="; ".join(diffs))


def require_dataset(folder: Path) -> list[DatasetItem]:
    items, markers = load_dataset(folder)
    problems, _, _ = dataset_problems(items, markers)
    if problems:
        blocked("step03.eval_dataset", measured=f"평가 세트 문제 {len(problems)}개: {problems[0]}")
    return items


def failing_metrics(report: dict) -> set[str]:
    out = set()
    for f in report.get("failures") or []:
        if isinstance(f, dict):
            out.add(str(f.get("metric", "")))
        else:
            out.add(str(f))
    return out


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def graded_dir(step_dir, tmp_path_factory):
    """A copy of the step folder without the learner's .env, results and caches."""
    folder = copy_step(step_dir, tmp_path_factory.mktemp("step03"))
    shutil.rmtree(folder / "eval" / "results", ignore_errors=True)
    return folder


def scratch_copy(folder: Path, tmp_path_factory, name: str) -> Path:
    dest = tmp_path_factory.mktemp(name)
    return copy_step(folder, dest)


@pytest.fixture(scope="module")
def reference_run(graded_dir, simulator):
    """The gate with the reference model and the learner's own (default) prompt version."""
    return run_gate(graded_dir, simulator, "reference")


# --------------------------------------------------------------------------- versions
@check("step03.versions")
def test_service_reports_and_sends_its_versions(graded_dir, simulator, sim, tmp_path):
    folder = copy_step(graded_dir, tmp_path)
    prompts_dir = folder / "prompts"
    prompts_dir.mkdir(exist_ok=True)
    (prompts_dir / f"{GROUNDED_VERSION}.txt").write_text(GROUNDED_PROMPT + "\n", encoding="utf-8")
    env = {"SERVICE_API_KEY": SERVICE_KEY, "GOOGLE_API_KEY": GOOGLE_KEY, "GOOGLE_GEMINI_BASE_URL": simulator.base_url,
           "LLM_MODEL": SERVICE_MODEL, "PROMPT_VERSION": GROUNDED_VERSION}
    sim.reset()
    with run_service(folder, env=env, name=f"{folder.name} (PROMPT_VERSION={GROUNDED_VERSION})") as svc:
        try:
            health = httpx.get(f"{svc.base_url}/health", timeout=10)
            chat = httpx.post(f"{svc.base_url}/chat", json={"message": "요금제는 어떻게 되나요?"},
                              headers={"X-API-Key": SERVICE_KEY}, timeout=30)
        except httpx.HTTPError as exc:
            fail(expected="서비스가 /health 와 /chat 에 응답", measured=f"연결 오류: {type(exc).__name__}")
    record("health", health.text[:200])
    want = {"model": SERVICE_MODEL, "prompt_version": GROUNDED_VERSION}
    try:
        body = health.json()
    except ValueError:
        body = None
    if health.status_code != 200 or not isinstance(body, dict) or any(body.get(k) != v for k, v in want.items()):
        fail(expected=f'GET /health -> 200, {{"status": "ok", "model": "{SERVICE_MODEL}", "prompt_version": '
                      f'"{GROUNDED_VERSION}"}} (LLM_MODEL, PROMPT_VERSION 설정값)',
             measured=f"HTTP {health.status_code} {health.text[:200]}")
    if chat.status_code != 200:
        blocked("step02.contract", measured=f"POST /chat -> HTTP {chat.status_code} {chat.text[:200]}")
    body = chat.json()
    if body.get("prompt_version") != GROUNDED_VERSION or body.get("model") != SERVICE_MODEL:
        fail(expected=f'POST /chat 응답에 "model": "{SERVICE_MODEL}", "prompt_version": "{GROUNDED_VERSION}"',
             measured=f"model={body.get('model')!r}, prompt_version={body.get('prompt_version')!r}")
    # A later step's service may sample answers for an LLM-as-a-judge (step 04): a judge model's call
    # is not the answering call this check is about.
    rows = [r for r in simulator.requests() if r["model"] not in judge_models()]
    record("upstream", [{k: r.get(k) for k in ("model", "system_hash", "grounding")} for r in rows])
    hashes = {prompts.system_hash(GROUNDED_PROMPT), prompts.system_hash(GROUNDED_PROMPT + "\n")}
    if len(rows) != 1 or rows[0]["model"] != SERVICE_MODEL:
        fail(expected=f"POST /chat 한 번에 모델 {SERVICE_MODEL} 로 LLM 호출 한 번",
             measured=", ".join(f"{r['model']}" for r in rows) or "호출 없음")
    if rows[0]["system_hash"] not in hashes:
        seen = "시스템 지시 없음" if rows[0]["system_hash"] is None else f"다른 시스템 지시 (해시 {rows[0]['system_hash']})"
        fail(expected=f"prompts/{GROUNDED_VERSION}.txt 의 내용을 시스템 지시(SystemMessage)로 보냄",
             measured=f"시뮬레이터가 받은 것: {seen}",
             detail="PROMPT_VERSION 으로 고른 파일을 읽어 SystemMessage 로 보내야 합니다 (코드에 쓴 프롬프트가 아니라).")


# --------------------------------------------------------------------------- dataset
@check("step03.eval_dataset")
def test_evaluation_set_is_data_that_measures(graded_dir):
    items, markers = load_dataset(graded_dir)
    problems, coverage, counts = dataset_problems(items, markers)
    problems = coverage + problems
    for k, v in counts.items():
        record(k, v)
    record("problems", len(problems))
    if problems:
        fail(expected=f"지식 베이스 질문 {MIN_KB_ITEMS}개 이상 (서로 다른 항목, 기대 사실이 그 항목 정답에 있음), "
                      f"거절해야 할 질문 {MIN_REFUSE_ITEMS}개 이상 (지식 베이스 밖), 거절 문장을 알아보는 refusal_markers",
             measured=f"문제 {len(problems)}개: " + "; ".join(problems[:4]) + (" ..." if len(problems) > 4 else ""))


# --------------------------------------------------------------------------- the gate
@check("step03.eval_report")
def test_gate_passes_with_reference_and_reports_what_the_simulator_counted(graded_dir, reference_run):
    run = reference_run
    items = require_dataset(graded_dir)
    if run.returncode != 0:
        fail(expected=f"기준 모델 {REFERENCE_MODEL} 과 기본 프롬프트 버전으로 게이트 통과 (종료 코드 0)",
             measured=run.shown(), detail="게이트 출력 (마지막 줄):\n" + run.tail())
    report = read_report(run)
    if report.get("passed") is not True:
        fail(expected='종료 코드 0 이면 report.json 의 "passed": true', measured=f'"passed": {report.get("passed")!r}')
    models = {r["model"] for r in run.requests}
    if models != {REFERENCE_MODEL}:
        fail(expected=f"게이트가 서비스 설정(LLM_MODEL={REFERENCE_MODEL})의 모델로 LLM 을 부름",
             measured=f"시뮬레이터가 받은 모델: {sorted(models)}")
    if report.get("model") != REFERENCE_MODEL or not report.get("prompt_version"):
        fail(expected=f'report.json 에 "model": "{REFERENCE_MODEL}" 와 "prompt_version"',
             measured=f"model={report.get('model')!r}, prompt_version={report.get('prompt_version')!r}")
    compare_with_simulator(run, report, items)
    summary = run.summary_path.read_text(encoding="utf-8") if run.summary_path.is_file() else ""
    record("summary_md_chars", len(summary))
    if not re.search(r"^\|.*\|\s*$", summary, re.M) or not re.search(r"^\|\s*:?-{3,}", summary, re.M):
        fail(expected="eval/results/summary.md: 지표 표가 있는 Markdown ($GITHUB_STEP_SUMMARY 에 붙일 요약)",
             measured="파일 없음" if not summary else f"표 없음 ({len(summary)}자)")


def require_reference(reference_run) -> None:
    if reference_run.returncode != 0 or not reference_run.report_path.is_file():
        blocked("step03.eval_report", measured=f"기준 실행 {reference_run.shown()}")


@check("step03.gate_weak_model")
def test_gate_fails_for_a_weaker_model(graded_dir, reference_run, simulator, tmp_path_factory):
    items = require_dataset(graded_dir)
    require_reference(reference_run)
    folder = scratch_copy(graded_dir, tmp_path_factory, "weak")
    run = run_gate(folder, simulator, "weak_model", LLM_MODEL=WEAK_MODEL)
    models = {r["model"] for r in run.requests}
    if models and models != {WEAK_MODEL}:
        fail(expected=f"게이트가 서비스 설정 LLM_MODEL={WEAK_MODEL} 로 LLM 을 부름",
             measured=f"시뮬레이터가 받은 모델: {sorted(models)}",
             hint="lesson.ipynb §4 '평가 게이트와 임계값' — 게이트는 모델을 고르지 않습니다: 서비스의 설정과 "
                  "LLM 호출 경로를 그대로 써야 배포될 모델을 평가합니다.")
    if run.returncode != 1:
        fail(expected=f"LLM_MODEL={WEAK_MODEL} (지식 베이스를 약 55% 만 앎) 이면 게이트 실패, 종료 코드 1 (임계값 미달)",
             measured=run.shown(), detail="게이트 출력 (마지막 줄):\n" + run.tail())
    report = read_report(run)
    compare_with_simulator(run, report, items)
    failed = failing_metrics(report)
    record("failing_metrics", sorted(failed))
    if report.get("passed") is not False or "accuracy" not in failed:
        fail(expected='report.json 의 "passed": false 와 "failures" 에 미달 지표 accuracy',
             measured=f"passed={report.get('passed')!r}, failures 의 지표: {sorted(failed) or '없음'}")
    # 임계값은 데이터 파일에서: 느슨한 임계값 파일이면 같은 약한 모델로도 통과해야 합니다.
    lenient = scratch_copy(graded_dir, tmp_path_factory, "lenient")
    (lenient / "eval" / "thresholds.toml").write_text(
        "[thresholds]\n" + "".join(f"{k} = {v}\n" for k, v in LENIENT.items()), encoding="utf-8")
    run = run_gate(lenient, simulator, "weak_model_lenient", LLM_MODEL=WEAK_MODEL)
    if run.returncode != 0:
        fail(expected="임계값을 eval/thresholds.toml 에서 읽음: 느슨한 임계값 파일(min_accuracy = 0.0 ...)이면 "
                      "같은 약한 모델로도 통과 (종료 코드 0)",
             measured=run.shown(), detail="게이트 출력 (마지막 줄):\n" + run.tail())


@check("step03.gate_degraded_prompt")
def test_gate_fails_for_a_prompt_without_grounding(graded_dir, reference_run, simulator, tmp_path_factory):
    assert not prompts.grounding_rule(DEGRADED_PROMPT) and prompts.brevity_rule(DEGRADED_PROMPT)
    items = require_dataset(graded_dir)
    require_reference(reference_run)
    folder = scratch_copy(graded_dir, tmp_path_factory, "degraded")
    (folder / "prompts").mkdir(exist_ok=True)
    (folder / "prompts" / f"{DEGRADED_VERSION}.txt").write_text(DEGRADED_PROMPT + "\n", encoding="utf-8")
    run = run_gate(folder, simulator, "degraded_prompt", PROMPT_VERSION=DEGRADED_VERSION)
    hashes = {prompts.system_hash(DEGRADED_PROMPT), prompts.system_hash(DEGRADED_PROMPT + "\n")}
    used = {r["system_hash"] for r in run.requests}
    if run.requests and not used <= hashes:
        fail(expected=f"게이트가 PROMPT_VERSION={DEGRADED_VERSION} 의 프롬프트(prompts/{DEGRADED_VERSION}.txt)로 LLM 을 부름",
             measured=f"시뮬레이터가 받은 시스템 지시 해시: {sorted(str(h) for h in used)} (기대 {sorted(hashes)})",
             hint="lesson.ipynb §2 '프롬프트와 모델 버전을 설정으로' — 게이트는 서비스의 설정과 호출 경로를 그대로 써야 합니다.")
    if run.returncode != 1:
        fail(expected=f"근거 규칙이 없는 프롬프트 (PROMPT_VERSION={DEGRADED_VERSION}: 지식 베이스 밖의 질문에도 답함) 면 "
                      "게이트 실패, 종료 코드 1",
             measured=run.shown(), detail="게이트 출력 (마지막 줄):\n" + run.tail())
    report = read_report(run)
    compare_with_simulator(run, report, items)
    failed = failing_metrics(report)
    record("failing_metrics", sorted(failed))
    if report.get("passed") is not False or "refusal_accuracy" not in failed:
        fail(expected='report.json 의 "passed": false 와 "failures" 에 미달 지표 refusal_accuracy',
             measured=f"passed={report.get('passed')!r}, failures 의 지표: {sorted(failed) or '없음'}")


def korean_error(run: GateRun, what: str, report_before: bytes) -> None:
    if run.returncode != 2:
        fail(expected=f"{what}: 평가할 수 없음, 종료 코드 2", measured=run.shown(),
             detail="게이트 출력 (마지막 줄):\n" + run.tail())
    if "Traceback" in run.output or not HANGUL.search(run.output):
        fail(expected=f"{what}: 트레이스 없이 한국어 오류 메시지", measured=run.tail(6))
    after = run.report_path.read_bytes() if run.report_path.is_file() else b""
    if after != report_before:
        fail(expected=f"{what}: 이전 보고서 eval/results/report.json 이 그대로 남음",
             measured="지워짐" if not after else "덮어써짐")


@check("step03.gate_errors")
def test_gate_reports_bad_input_in_korean_and_keeps_results(graded_dir, reference_run, simulator, tmp_path_factory):
    require_reference(reference_run)
    folder = scratch_copy(graded_dir, tmp_path_factory, "errors")
    before = (folder / "eval" / "results" / "report.json").read_bytes()
    dataset = folder / "eval" / "dataset.toml"
    saved = dataset.read_bytes()
    dataset.unlink()
    run = run_gate(folder, simulator, "missing_dataset")
    korean_error(run, "eval/dataset.toml 이 없음", before)
    dataset.write_bytes(saved)
    closed = f"http://127.0.0.1:{free_port()}"
    run = run_gate(folder, simulator, "llm_unreachable", GOOGLE_GEMINI_BASE_URL=closed)
    korean_error(run, f"LLM 에 연결할 수 없음 (GOOGLE_GEMINI_BASE_URL={closed})", before)
