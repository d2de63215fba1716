"""Meta-tests of the grader (the maintainers' guard, like rustlings' `cargo dev check`):

- the grader passes on `solutions/` for every ready step;
- the untouched starters in `steps/` fail every check of the step, each with its Korean
  message (no check passes by accident, none crashes with a traceback instead);
- every known-wrong solution in `tests/mutants/stepNN.toml` is rejected by the check meant
  to catch it (only those checks run, to keep `make test` fast).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from coursekit import OUTLINE_QUICK_START, REPO_ROOT, manifest

MUTANTS_DIR = Path(__file__).with_name("mutants")
UNEXPECTED = "채점 중 예상치 못한 오류"
READY = [s for s in manifest.load().steps if s.status == "ready"]


@pytest.fixture(autouse=True)
def _shared_trace_backend(request):
    """Grading step 05 and later needs an MLflow backend: one for the whole session (tests/conftest.py)."""
    from conftest import needs_trace_backend

    callspec = getattr(request.node, "callspec", None)
    step = callspec.params.get("step") if callspec else None
    needs_trace_backend(request, getattr(step, "id", None))


def run_grader(tmp_path: Path, *args: str, timeout: float = 900) -> tuple[int, dict, str]:
    report = tmp_path / f"report-{time.monotonic_ns()}.json"
    cmd = [sys.executable, "-m", "pytest", str(REPO_ROOT / "grader"), "-p", "no:cacheprovider", "-q",
           "--grade-report", str(report), *args]
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)
    output = proc.stdout + proc.stderr
    print(f"$ {' '.join(cmd[3:])}\n({time.monotonic() - started:.1f}s, 종료 코드 {proc.returncode})\n{output[-6000:]}")
    data = json.loads(report.read_text(encoding="utf-8")) if report.exists() else {"steps": {}}
    return proc.returncode, data, output


def outcomes(report: dict, step_id: str) -> dict[str, dict]:
    return report["steps"].get(step_id, {}).get("checks", {})


def tool_skips_allowed() -> bool:
    return os.environ.get("COURSE_REQUIRE_TOOLS", "") in ("", "0")


@pytest.mark.parametrize("step", READY, ids=[s.id for s in READY])
def test_solution_passes_every_check(step, tmp_path):
    started = time.monotonic()
    rc, report, out = run_grader(tmp_path, "--target", str(REPO_ROOT / "solutions"), "-k", step.id)
    elapsed = time.monotonic() - started
    print(f"{step.id} 솔루션 채점 시간: {elapsed:.1f}s")
    got = outcomes(report, step.id)
    expected = {c.id for c in step.checks}
    missing = expected - set(got)
    assert not missing, f"채점 테스트가 없는 항목: {sorted(missing)}"
    allowed = {"passed", "skipped"} if tool_skips_allowed() else {"passed"}
    bad = {cid: c for cid, c in got.items() if c["outcome"] not in allowed}
    assert not bad, f"솔루션이 통과하지 못한 항목: {json.dumps(bad, ensure_ascii=False, indent=1)}\n{out[-3000:]}"
    assert rc == 0, out[-3000:]


@pytest.mark.parametrize("step", READY, ids=[s.id for s in READY])
def test_untouched_starter_fails_every_check(step, tmp_path):
    rc, report, out = run_grader(tmp_path, "--target", str(REPO_ROOT / "steps"), "-k", step.id)
    assert rc == 1, f"스타터 채점은 실패(종료 코드 1)해야 합니다: {rc}\n{out[-3000:]}"
    got = outcomes(report, step.id)
    expected = {c.id for c in step.checks}
    assert set(got) == expected, f"채점되지 않은 항목: {sorted(expected - set(got))}"
    allowed = {"failed", "skipped"} if tool_skips_allowed() else {"failed"}
    passed = {cid for cid, c in got.items() if c["outcome"] not in allowed}
    assert not passed, f"손대지 않은 스타터가 통과한 항목 (잘못 통과할 수 있는 채점): {sorted(passed)}"
    crashed = {cid: c["messages"] for cid, c in got.items() if any(UNEXPECTED in m for m in c["messages"])}
    assert not crashed, f"한국어 메시지 대신 예외로 끝난 항목: {json.dumps(crashed, ensure_ascii=False, indent=1)}"
    for cid, c in got.items():
        if c["outcome"] == "failed":
            assert any(("기대" in m and "측정" in m) or "[CI]" in m for m in c["messages"]), (cid, c["messages"])


def _mutants():
    for step in READY:
        path = MUTANTS_DIR / f"{step.id}.toml"
        if not path.exists():
            continue
        with open(path, "rb") as fh:
            for m in tomllib.load(fh).get("mutants", []):
                yield pytest.param(step, m, id=f"{step.id}-{m['name']}")


def test_every_ready_step_has_mutants():
    missing = [s.id for s in READY if not (MUTANTS_DIR / f"{s.id}.toml").exists()]
    assert not missing, f"알려진 오답 목록(tests/mutants/<step>.toml)이 없는 단계: {missing}"


@pytest.mark.parametrize("step, mutant", list(_mutants()))
def test_known_wrong_solution_is_rejected(step, mutant, tmp_path):
    m = manifest.load()
    target = tmp_path / "target"
    shutil.copytree(REPO_ROOT / "solutions" / step.folder, target / step.folder,
                    ignore=shutil.ignore_patterns("__pycache__", ".venv", ".env"))
    path = target / step.folder / mutant["file"]
    text = path.read_text(encoding="utf-8")
    assert text.count(mutant["old"]) == 1, f"{mutant['name']}: 'old' 가 {mutant['file']} 에 정확히 한 번 있어야 합니다"
    path.write_text(text.replace(mutant["old"], mutant["new"]), encoding="utf-8")

    checks = [mutant["check"], *mutant.get("also", [])]
    for cid in checks:
        assert m.check(cid).step == step.id
    rc, report, out = run_grader(tmp_path, "--target", str(target), "--checks", ",".join(checks),
                                 "--first-failure-only")
    got = outcomes(report, step.id)
    for cid in checks:
        assert cid in got, f"{mutant['name']}: {cid} 가 실행되지 않았습니다\n{out[-3000:]}"
        if got[cid]["outcome"] == "skipped" and tool_skips_allowed():
            continue
        assert got[cid]["outcome"] == "failed", (
            f"알려진 오답 '{mutant['name']}' 을(를) {cid} 가 잡지 못했습니다: {got[cid]}\n{out[-3000:]}"
        )
        assert not any(UNEXPECTED in msg for msg in got[cid]["messages"]), got[cid]["messages"]


def test_unknown_check_id_is_a_usage_error(tmp_path):
    rc, _, out = run_grader(tmp_path, "--checks", "step02.nope")
    assert rc == 4 and "매니페스트에 없는 채점 항목" in out


def test_missing_step_folder_fails_with_korean_message_and_report(tmp_path):
    rc, report, out = run_grader(tmp_path, "--target", str(tmp_path / "empty"), "--checks", "step02.auth")
    assert rc == 1
    check = report["steps"]["step02"]["checks"]["step02.auth"]
    assert check["outcome"] == "failed" and any("폴더가 없습니다" in m for m in check["messages"])
    assert report["checklist"]["sec.apikey"]["outcome"] == "failed"
    assert report["checklist"]["perf.caching"]["outcome"] == "not_graded"



def test_outline_quick_start_fails_every_step02_check_without_errors(tmp_path):
    """A learner's mistake found inside a fixture (the load checks' probe) is a FAILED check with
    the Korean message, never a pytest ERROR; each service's log is shown once."""
    folder = tmp_path / "target" / manifest.load().step("step02").folder
    folder.mkdir(parents=True)
    (folder / "main.py").write_text(OUTLINE_QUICK_START.read_text(encoding="utf-8"), encoding="utf-8")
    rc, report, out = run_grader(tmp_path, "--target", str(tmp_path / "target"), "-k", "step02")
    assert rc == 1, out[-3000:]
    summary = out.strip().splitlines()[-1]
    assert " failed" in summary and "error" not in summary, summary
    got = outcomes(report, "step02")
    assert got and all(c["outcome"] == "failed" for c in got.values()), got
    for cid, c in got.items():
        assert all("기대" in m and "측정" in m for m in c["messages"]), (cid, c["messages"])
    # Checks that need a working POST /chat name step02.contract as the check to fix first.
    assert got["step02.auth"]["blocked_by"] == ["step02.contract"], got["step02.auth"]
    assert got["step02.latency_p95"]["hint"].startswith("`step02.contract`"), got["step02.latency_p95"]
    assert not got["step02.contract"]["blocked_by"]
    # Each service's log once (not under every failure).
    logs = report["service_logs"]
    assert logs and len({e["service"] for e in logs}) == len(logs), logs
    assert out.count("서비스 로그:") == len(logs), out
    assert "Uvicorn running" in logs[0]["log_tail"]


def test_learner_dotenv_cannot_change_the_contract_under_test(tmp_path):
    """A `.env` left in the learner's step folder (as the README tells them to make) must not
    change what the grader checks: the solution with a lax .env still passes, with the grader's
    own settings (it pins every contract setting and runs a copy without .env)."""
    step = manifest.load().step("step02")
    target = tmp_path / "target"
    shutil.copytree(REPO_ROOT / "solutions" / step.folder, target / step.folder,
                    ignore=shutil.ignore_patterns("__pycache__", ".venv", ".env"))
    (target / step.folder / ".env").write_text(
        "MAX_MESSAGE_CHARS=100000\nLLM_MODEL=gemini-3.5-pro\nSERVICE_API_KEY=lab-service-key\n"
        "GOOGLE_API_KEY=sim-any-key\nGOOGLE_GEMINI_BASE_URL=http://127.0.0.1:9\nLLM_MAX_ATTEMPTS=6\n",
        encoding="utf-8")
    rc, report, out = run_grader(tmp_path, "--target", str(target), "--checks",
                                 "step02.contract,step02.validation,step02.retry_bound")
    got = outcomes(report, "step02")
    assert {cid: c["outcome"] for cid, c in got.items()} == {
        "step02.contract": "passed", "step02.validation": "passed", "step02.retry_bound": "passed"}, out[-3000:]
    assert rc == 0
