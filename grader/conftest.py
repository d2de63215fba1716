"""The grader's pytest plumbing: options, fixtures, Korean failure reports, the
production-checklist scorecard and the JSON report for instructors.

    pytest grader                          # grade steps/
    pytest grader -k step02                # one step
    pytest grader --target solutions       # any folder laid out like steps/
    pytest grader --grade-report out.json  # machine-readable report
    pytest grader --checks step02.auth     # only some checks (maintainers' meta-tests)
"""

from __future__ import annotations

import datetime as _dt
import json
import platform
from collections import defaultdict
from pathlib import Path

import pytest

from coursekit import REPO_ROOT, manifest
from coursekit.cli import pad

from . import harness

OUTCOME_KO = {"passed": "통과", "failed": "실패", "skipped": "건너뜀", "not_graded": "아직 채점 안 함"}
OUTCOME_ICON = {"passed": "✅", "failed": "❌", "skipped": "⏭ ", "not_graded": "⬜"}


def pytest_addoption(parser):
    group = parser.getgroup("grader", "코스 채점기")
    group.addoption("--target", default=None,
                    help="채점할 폴더 (steps/ 와 같은 구조, 기본값: 저장소의 steps/)")
    group.addoption("--grade-report", default=None, metavar="FILE.json",
                    help="단계별, 항목별 결과와 측정값을 JSON 으로 저장")
    group.addoption("--checks", default=None, metavar="ID[,ID...]",
                    help="이 채점 항목만 실행 (예: step02.auth,step02.validation)")
    group.addoption("--first-failure-only", action="store_true",
                    help="한 항목이 실패하면 그 항목의 나머지 경우는 건너뜀 (유지보수자 메타테스트용, 빠름)")


def pytest_configure(config):
    config.addinivalue_line("markers", "check(id): 이 테스트가 채점하는 매니페스트의 항목 id")
    config._grader = {"results": defaultdict(list), "measured": defaultdict(dict), "messages": defaultdict(list),
                      "hints": defaultdict(list), "blocked_by": defaultdict(list),
                      # log path -> {"service": name, "checks": [check ids that failed while it ran]}
                      "service_logs": {}}


def _target(config) -> Path:
    raw = config.getoption("--target")
    if raw is None:
        return REPO_ROOT / "steps"
    path = Path(raw).expanduser()
    if not path.is_absolute():
        path = Path(config.invocation_params.dir) / path
    path = path.resolve()
    # A learner's whole repository may be given: grade its steps/ folder.
    m = manifest.load()
    if (path / "steps").is_dir() and not any((path / s.folder).exists() for s in m.steps):
        path = path / "steps"
    return path


def _check_id(item) -> str | None:
    mark = item.get_closest_marker("check")
    return mark.args[0] if mark else None


def pytest_collection_modifyitems(session, config, items):
    wanted = config.getoption("--checks")
    wanted_ids = {c.strip() for c in wanted.split(",")} if wanted else None
    if wanted_ids:
        known = {c.id for c in manifest.load().checks}
        unknown = wanted_ids - known
        if unknown:
            raise pytest.UsageError(f"--checks: 매니페스트에 없는 채점 항목: {', '.join(sorted(unknown))}")
    selected, deselected = [], []
    for item in items:
        cid = _check_id(item)
        if cid is None:
            raise pytest.UsageError(f"{item.nodeid}: 채점 테스트에는 @check(\"stepNN.xxx\") 표시가 필요합니다")
        if wanted_ids is not None and cid not in wanted_ids:
            deselected.append(item)
        else:
            selected.append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = selected


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def target_dir(pytestconfig) -> Path:
    return _target(pytestconfig)


@pytest.fixture(scope="module")
def step(request) -> manifest.Step:
    step_id = getattr(request.module, "STEP", None)
    if step_id is None:
        raise pytest.UsageError(f"{request.module.__name__}: 모듈에 STEP = \"stepNN\" 이 필요합니다")
    return manifest.load().step(step_id)


@pytest.fixture(scope="module")
def step_dir(step, target_dir) -> Path:
    path = target_dir / step.folder
    if not path.is_dir():
        harness.fail(expected=f"단계 폴더 {path}", measured="폴더가 없습니다",
                     detail="--target 으로 steps/ 와 같은 구조의 폴더를 지정하세요.")
    return path


@pytest.fixture(scope="session")
def simulator():
    """One Gemini-API simulator (zero latency) for the whole grading session; checks
    reconfigure it at run time and put it back (see `sim` fixture)."""
    from coursekit.simulator import SimulatorProcess

    with SimulatorProcess(latency="zero", seed=7) as sim:
        yield sim


@pytest.fixture
def sim(simulator):
    """The shared simulator, with faults and latency reset before and after the test."""
    defaults = simulator.config()
    yield simulator
    simulator.configure(**{k: v for k, v in defaults.items() if k not in ("port", "host")})


# --------------------------------------------------------------------------- reports
@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    cid = _check_id(item)
    if cid:
        harness._set_current(item.config._grader["measured"][cid])
        if item.config.getoption("--first-failure-only") and "failed" in item.config._grader["results"].get(cid, []):
            pytest.skip(f"{cid} 는 이미 실패했습니다")


def pytest_runtest_teardown(item, nextitem):
    harness._set_current(None)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    cid = _check_id(item)
    if cid is None:
        return
    state = item.config._grader
    m = manifest.load()
    chk = m.check(cid)

    if report.when == "call" or (report.when == "setup" and report.outcome != "passed") or (
        report.when == "teardown" and report.outcome == "failed"
    ):
        if report.skipped:
            state["results"][cid].append("skipped")
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
            state["messages"][cid].append(reason.removeprefix("Skipped: "))
        elif report.failed:
            state["results"][cid].append("failed")
        else:
            state["results"][cid].append("passed")

    if report.failed:
        exc = call.excinfo.value if call.excinfo else None
        header = f"[{cid}] {chk.title}  (체크리스트: {m.item(chk.item).group} > {m.item(chk.item).title})"
        hint = chk.hint
        if isinstance(exc, harness.CheckFailed):
            msg = str(exc)
            hint = exc.hint or chk.hint
            if exc.blocked_by:
                state["blocked_by"][cid].append(exc.blocked_by)
            report.longrepr = f"{header}\n{msg}\n힌트: {hint}"
        elif call.excinfo is not None and call.excinfo.typename == "Failed":
            msg = str(exc)
            report.longrepr = f"{header}\n{msg}\n힌트: {hint}"
        else:
            msg = f"채점 중 예상치 못한 오류: {call.excinfo.typename}: {exc}" if call.excinfo else "실패"
            report.longrepr = f"{header}\n{msg}\n힌트: {hint}\n\n{report.longreprtext if hasattr(report, 'longreprtext') else ''}"
        if report.when != "call" and _learner_failure(call):
            # A learner's mistake found while preparing a check (in a fixture) is still a failed
            # check, not a pytest ERROR: ERROR is kept for faults of the grader itself.
            report.grader_failed = True
        state["messages"][cid].append(msg)
        state["hints"][cid].append(hint)
        # The services' logs are shown once per service at the end (not under every failure).
        for svc in harness.running_services():
            entry = state["service_logs"].setdefault(str(svc.log_path), {"service": svc.name, "checks": [], "svc": svc})
            if cid not in entry["checks"]:
                entry["checks"].append(cid)


def _learner_failure(call) -> bool:
    if call.excinfo is None:
        return False
    return isinstance(call.excinfo.value, harness.CheckFailed) or call.excinfo.typename == "Failed"


@pytest.hookimpl(tryfirst=True)
def pytest_report_teststatus(report, config):
    if getattr(report, "grader_failed", False):
        return "failed", "F", "FAILED"
    return None


def _aggregate(outcomes: list[str]) -> str:
    """One outcome for several: any failure fails; all passed passes; otherwise skipped."""
    if not outcomes:
        return "not_graded"
    if "failed" in outcomes:
        return "failed"
    if all(o == "passed" for o in outcomes):
        return "passed"
    return "skipped"


def _build_report(config) -> dict:
    m = manifest.load()
    state = config._grader
    graded = {cid: _aggregate(v) for cid, v in state["results"].items()}
    steps = {}
    for s in m.steps:
        checks = {}
        for c in s.checks:
            if c.id not in graded:
                continue
            hints = list(dict.fromkeys(state["hints"].get(c.id, [])))
            checks[c.id] = {
                "title": c.title,
                "item": c.item,
                "outcome": graded[c.id],
                "measured": state["measured"].get(c.id, {}),
                "messages": state["messages"].get(c.id, []),
                # The hint for what actually failed (a failure may carry its own); else the manifest's.
                "hint": hints[0] if hints else c.hint,
                "hints": hints,
                "blocked_by": sorted(set(state["blocked_by"].get(c.id, []))),
            }
        if checks:
            done = sum(1 for v in checks.values() if v["outcome"] == "passed")
            steps[s.id] = {"title": s.title, "folder": s.folder, "passed": done, "total": len(s.checks),
                           "checks": checks}
    checklist = {}
    for it in m.checklist:
        outcomes = [graded[c.id] for c in m.checks if c.item == it.id and c.id in graded]
        checklist[it.id] = {"group": it.group, "title": it.title, "outcome": _aggregate(outcomes)}
    logs = [{"service": e["service"], "checks": e["checks"], "log_tail": e["svc"].tail(SERVICE_LOG_LINES)}
            for e in state["service_logs"].values()]
    return {
        "course": m.title,
        "target": str(_target(config)),
        "generated_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "steps": steps,
        "checklist": checklist,
        "service_logs": logs,
    }


SERVICE_LOG_LINES = 40



def pytest_terminal_summary(terminalreporter, exitstatus, config):
    report = _build_report(config)
    path = config.getoption("--grade-report")
    if path:
        out = Path(path)
        if not out.is_absolute():
            out = Path(config.invocation_params.dir) / out
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, ensure_ascii=False, indent=2), encoding="utf-8")
    if not config._grader["results"]:
        return
    tr = terminalreporter
    for entry in report["service_logs"]:
        tr.section(f"서비스 로그: {entry['service']} (마지막 {SERVICE_LOG_LINES}줄)", sep="-")
        tr.write_line("이 서비스가 실행되는 동안 실패한 항목: " + ", ".join(entry["checks"]))
        tr.write_line(entry["log_tail"] or "(로그가 비어 있습니다)")
    tr.section("프로덕션 체크리스트 점수표", sep="=")
    tr.write_line(f"채점 대상: {report['target']}")
    for sid, s in report["steps"].items():
        tr.write_line(f"  {sid} {s['title']}: {s['passed']}/{s['total']} 통과")
    group = None
    for it in report["checklist"].values():
        if it["group"] != group:
            group = it["group"]
            tr.write_line(f"[{group}]")
        tr.write_line(f"  {OUTCOME_ICON[it['outcome']]} {pad(it['title'], 26)} {OUTCOME_KO[it['outcome']]}")
    failed = [(cid, c) for s in report["steps"].values() for cid, c in s["checks"].items() if c["outcome"] == "failed"]
    if failed:
        tr.write_line("")
        tr.write_line("다음에 할 일:")
        # A check that only failed because another one did is not where to start.
        cid, c = next(((i, c) for i, c in failed if not c["blocked_by"]), failed[0])
        tr.write_line(f"  {cid} — {c['title']}")
        tr.write_line(f"  {c['hint']}")
    if path:
        tr.write_line(f"JSON 보고서: {out}")


def pytest_unconfigure(config):
    harness.remove_service_logs()
