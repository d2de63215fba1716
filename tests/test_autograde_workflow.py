"""The course's autograding workflow (.github/workflows/autograde.yml): a learner's fork or a
GitHub Classroom repository grades `steps/` on push and shows the scorecard as the job summary.

Checked offline (schema and actionlint for every workflow: tests/test_ci_workflow.py): it runs the project's
own commands, and its summary step really turns a grading report into the Markdown scorecard
(executed here as the runner would, on a report the grader wrote)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from coursekit import REPO_ROOT
from grader.ci_expressions import github_if
from grader.ci_support import github_contexts, EVENTS, logical_lines

WORKFLOW = REPO_ROOT / ".github" / "workflows" / "autograde.yml"


@pytest.fixture(scope="module")
def wf():
    return YAML(typ="safe", pure=True).load(WORKFLOW.read_text(encoding="utf-8"))


def steps(wf):
    return wf["jobs"]["grade"]["steps"]


def step_running(wf, text):
    found = [s for s in steps(wf) if text in s.get("run", "")]
    assert len(found) == 1, f"`{text}` 를 실행하는 스텝이 하나여야 합니다: {found}"
    return found[0]


def test_grades_steps_with_the_project_commands(wf):
    assert "steps/**" in wf["on"]["push"]["paths"]
    assert wf["permissions"] == {"contents": "read"}, "채점은 읽기 권한만 필요합니다"
    text = WORKFLOW.read_text(encoding="utf-8")
    assert "secrets." not in text, "자동 채점에는 비밀 값이 필요 없어야 합니다 (포크와 Classroom 에서 그대로 돔)"
    job = wf["jobs"]["grade"]
    assert job["env"]["COURSE_REQUIRE_TOOLS"] == "1", "CI 에서는 도구가 없어 건너뛰는 항목이 실패여야 합니다"
    setup = next(s for s in steps(wf) if s.get("uses", "").startswith("actions/setup-python@"))
    assert setup["with"]["cache"] == "pip"
    install = step_running(wf, "pip install")
    assert logical_lines(install["run"]) == ["python -m pip install -e ."]
    grade = step_running(wf, "pytest grader")
    args = logical_lines(grade["run"])[0].split()
    assert args[:4] == ["python", "-m", "pytest", "grader"], args
    report = args[args.index("--grade-report") + 1]
    summary = step_running(wf, "grader.job_summary")
    assert logical_lines(summary["run"]) == [f'python -m grader.job_summary {report} >> "$GITHUB_STEP_SUMMARY"']
    upload = next(s for s in steps(wf) if s.get("uses", "").startswith("actions/upload-artifact@"))
    assert upload["with"]["path"] == report


def test_summary_and_report_are_kept_when_grading_fails_but_not_when_cancelled(wf):
    ctx = github_contexts(EVENTS[0])
    for s in (step_running(wf, "grader.job_summary"),
              next(s for s in steps(wf) if s.get("uses", "").startswith("actions/upload-artifact@"))):
        assert github_if(s.get("if"), ctx, success=False, failure=True), s
        assert github_if(s.get("if"), ctx, success=True), s
        assert not github_if(s.get("if"), ctx, success=False, cancelled=True), s
    # The grading step itself runs only after the install succeeded (default success()).
    assert "if" not in step_running(wf, "pytest grader")


def test_runs_in_learner_repositories_not_in_the_template(wf):
    cond = wf["jobs"]["grade"]["if"]
    ctx = github_contexts(EVENTS[0])
    ctx["github"]["event"]["repository"] = {"is_template": False, "fork": True}
    assert github_if(cond, ctx)
    ctx["github"]["event"]["repository"] = {"is_template": True, "fork": False}
    assert not github_if(cond, ctx)


def _run_summary_step(wf, workdir: Path) -> tuple[subprocess.CompletedProcess, str]:
    """Run the summary step's `run:` as the runner does (bash -eo pipefail, GITHUB_STEP_SUMMARY)."""
    summary_file = workdir / "summary.md"
    summary_file.write_text("", encoding="utf-8")
    script = step_running(wf, "grader.job_summary")["run"]
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "GITHUB_STEP_SUMMARY": str(summary_file),
           "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=60)
    return proc, summary_file.read_text(encoding="utf-8")


def test_summary_step_turns_a_real_grading_report_into_the_scorecard(wf, tmp_path):
    report = logical_lines(step_running(wf, "pytest grader")["run"])[0].split("--grade-report")[1].split()[0]
    proc = subprocess.run([sys.executable, "-m", "pytest", str(REPO_ROOT / "grader"), "-p", "no:cacheprovider", "-q",
                           "--target", str(tmp_path / "empty"), "--checks", "step02.auth",
                           "--grade-report", str(tmp_path / report)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout[-2000:]
    data = json.loads((tmp_path / report).read_text(encoding="utf-8"))
    assert data["steps"]["step02"]["checks"]["step02.auth"]["outcome"] == "failed"
    run, summary = _run_summary_step(wf, tmp_path)
    assert run.returncode == 0, run.stderr
    assert "프로덕션 체크리스트" in summary and "| 보안 | API Key 관리 | ❌ 실패 |" in summary, summary
    assert "<code>step02.auth</code>" in summary and "폴더가 없습니다" in summary and "**힌트:**" in summary, summary
    assert "⬜ 아직 채점 안 함" in summary  # the items this run did not grade


def test_summary_step_says_so_when_grading_wrote_no_report(wf, tmp_path):
    run, summary = _run_summary_step(wf, tmp_path)
    assert run.returncode == 0, run.stderr
    assert "채점 보고서" in summary and "없습니다" in summary, summary
