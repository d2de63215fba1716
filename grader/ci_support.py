"""What the step 03 pipeline checks share: reading workflow YAML with line numbers, deciding
which jobs run for which event (GitHub Actions and GitLab CI semantics, conditions evaluated with
`grader.ci_expressions`), the tools (actionlint, check-jsonschema) and running a job's `run:`
commands in a scratch copy of the step folder, as a runner would.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError

from .ci_expressions import ExpressionError, github_if, github_template, gitlab_eval
from coursekit.procs import tool_path  # noqa: F401 (re-exported: ci.tool_path in the step 03 grader, k8s_support, lessons)

from .harness import fail

GITHUB_WORKFLOW = ".github/workflows/ci.yml"
GITLAB_CI = ".gitlab-ci.yml"
DEPLOY_DIR = "deploy"
ARGOCD_APP = "deploy/argocd/application.yaml"
VENV_BIN = Path(sys.executable).parent


# --------------------------------------------------------------------------- YAML with lines
def load_yaml(path: Path, label: str | None = None) -> Any:
    """One YAML document with line numbers (ruamel round-trip: YAML 1.2, so `on:` stays a string).
    A missing or unparsable file is a failed check with the parser's line."""
    label = label or path.name
    if not path.is_file():
        fail(expected=f"{label} 파일", measured="파일이 없습니다")
    try:
        return YAML(typ="rt").load(path.read_text(encoding="utf-8"))
    except YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" ({mark.line + 1}번째 줄)" if mark is not None else ""
        fail(expected=f"{label} 가 올바른 YAML", measured=f"YAML 오류{where}: {getattr(exc, 'problem', exc)}")


def load_yaml_all(path: Path) -> list[Any]:
    return [d for d in YAML(typ="rt").load_all(path.read_text(encoding="utf-8")) if d is not None]


def line_of(node: Any, key: Any = None) -> int | None:
    """1-based line of `node` (or of `node[key]`) in its file, when ruamel knows it."""
    try:
        if key is None:
            return node.lc.line + 1
        if isinstance(node, CommentedMap):
            return node.lc.key(key)[0] + 1
        if isinstance(node, CommentedSeq):
            return node.lc.item(key)[0] + 1
    except (AttributeError, KeyError, IndexError, TypeError):
        return None
    return None


def where(label: str, node: Any, key: Any = None) -> str:
    n = line_of(node, key)
    return f"{label} {n}번째 줄" if n else label


# --------------------------------------------------------------------------- events
@dataclass(frozen=True)
class Event:
    """One situation a pipeline may run in (the grader's stand-in for a real trigger)."""

    label: str            # Korean, shown in failures
    name: str             # GitHub event name
    ref: str              # refs/heads/x, refs/pull/7/merge, refs/tags/v1
    branch: str | None    # branch the workflow runs on (base branch for pull requests)
    deploy: str           # "must" run the deploy job, "must_not", or "may"
    gitlab_source: str | None = None  # CI_PIPELINE_SOURCE, None = no GitLab equivalent


EVENTS = (
    Event("main 브랜치에 push", "push", "refs/heads/main", "main", "must", "push"),
    Event("main 으로 가는 pull request", "pull_request", "refs/pull/7/merge", "main", "must_not", "merge_request_event"),
    Event("main 으로 가는 pull request (pull_request_target)", "pull_request_target", "refs/heads/main", "main",
          "must_not"),
    Event("다른 브랜치(feature/x)에 push", "push", "refs/heads/feature/x", "feature/x", "must_not", "push"),
    Event("태그 v1.0.0 push", "push", "refs/tags/v1.0.0", None, "must_not", "push"),
    Event("다른 브랜치(feature/x)에서 수동 실행 (workflow_dispatch)", "workflow_dispatch", "refs/heads/feature/x",
          "feature/x", "must_not"),
    Event("main 에서 수동 실행 (workflow_dispatch)", "workflow_dispatch", "refs/heads/main", "main", "may"),
)
PUSH_MAIN = EVENTS[0]


def github_contexts(ev: Event, env: dict[str, str] | None = None) -> dict[str, Any]:
    ref_name = ev.ref.split("/", 2)[2] if ev.ref.count("/") >= 2 else ev.ref
    pr = ev.name.startswith("pull_request")
    event: dict[str, Any] = {"ref": ev.ref}
    if pr:
        event["pull_request"] = {"number": 7, "base": {"ref": "main"}, "head": {"ref": "feature/x"},
                                 "title": "기능 추가", "body": ""}
        event["action"] = "opened"
    else:
        event["head_commit"] = {"message": "기능 추가", "id": "0" * 40}
    return {
        "github": {
            "event_name": ev.name, "ref": ev.ref, "ref_name": ref_name,
            "ref_type": "tag" if ev.ref.startswith("refs/tags/") else "branch",
            "base_ref": "main" if pr else "", "head_ref": "feature/x" if pr else "",
            "sha": "0123456789abcdef0123456789abcdef01234567", "repository": "learner/llm-chat",
            "repository_owner": "learner", "actor": "learner", "workflow": "ci", "run_id": "1", "run_number": "1",
            "server_url": "https://github.com", "event": event, "token": "",
            "default_branch": "main",
        },
        "env": dict(env or {}), "vars": {}, "secrets": {}, "inputs": {}, "needs": {}, "steps": {},
        "runner": {"os": "Linux", "temp": tempfile.gettempdir()}, "matrix": {}, "job": {"status": "success"},
        "strategy": {},
    }


def _glob(pattern: str) -> re.Pattern:
    """GitHub's filter patterns: `*` does not cross `/`, `**` does."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        else:
            out += re.escape(pattern[i]) if pattern[i] not in "?[]" else ("." if pattern[i] == "?" else pattern[i])
            i += 1
    return re.compile(out + r"\Z")


def _filter_allows(patterns: list[str] | None, ignore: list[str] | None, name: str) -> bool:
    if patterns is None and ignore is None:
        return True
    if ignore is not None:
        return not any(_glob(str(p)).match(name) for p in ignore)
    ok = False
    for p in patterns or []:
        p = str(p)
        if p.startswith("!"):
            if _glob(p[1:]).match(name):
                ok = False
        elif _glob(p).match(name):
            ok = True
    return ok


def _as_list(value: Any) -> list | None:
    if value is None:
        return None
    return list(value) if isinstance(value, (list, tuple)) else [value]


def github_triggers(wf: Any) -> dict[str, Any]:
    on = wf.get("on") if isinstance(wf, dict) else None
    if on is None and isinstance(wf, dict):
        on = wf.get(True)  # YAML 1.1 readers turn `on` into True
    if isinstance(on, str):
        return {on: None}
    if isinstance(on, list):
        return {str(e): None for e in on}
    if isinstance(on, dict):
        return {str(k): v for k, v in on.items()}
    return {}


def workflow_triggered(wf: Any, ev: Event) -> bool:
    """Whether the workflow starts at all for this event (branch/tag filters; paths assumed to match)."""
    triggers = github_triggers(wf)
    if ev.name not in triggers:
        return False
    cfg = triggers[ev.name] or {}
    if not isinstance(cfg, dict):
        return True
    if ev.name == "push":
        is_tag = ev.ref.startswith("refs/tags/")
        name = ev.ref.split("/", 2)[2]
        branches, branches_ignore = _as_list(cfg.get("branches")), _as_list(cfg.get("branches-ignore"))
        tags, tags_ignore = _as_list(cfg.get("tags")), _as_list(cfg.get("tags-ignore"))
        if is_tag:
            if tags is None and tags_ignore is None:
                return branches is None and branches_ignore is None
            return _filter_allows(tags, tags_ignore, name)
        if branches is None and branches_ignore is None:
            return tags is None and tags_ignore is None
        return _filter_allows(branches, branches_ignore, name)
    if ev.name.startswith("pull_request"):
        return _filter_allows(_as_list(cfg.get("branches")), _as_list(cfg.get("branches-ignore")), "main")
    return True


# --------------------------------------------------------------------------- GitHub jobs
def github_jobs(wf: Any) -> dict[str, Any]:
    jobs = wf.get("jobs") if isinstance(wf, dict) else None
    return dict(jobs) if isinstance(jobs, dict) else {}


def job_needs(job: Any) -> list[str]:
    if not isinstance(job, dict):
        return []
    return [str(n) for n in (_as_list(job.get("needs")) or [])]


def needs_closure(jobs: dict[str, Any], job_id: str) -> list[str]:
    """Every job `job_id` waits for, directly or through other jobs (in discovery order)."""
    seen: list[str] = []
    stack = list(job_needs(jobs.get(job_id)))
    while stack:
        j = stack.pop(0)
        if j in seen or j not in jobs:
            continue
        seen.append(j)
        stack.extend(job_needs(jobs[j]))
    return seen


def job_runs(wf: Any, job_id: str, ev: Event) -> bool:
    """Whether `job_id` runs for the event, all the jobs it needs having succeeded (a needed job
    that is skipped skips its dependants, unless they use a status function like always())."""
    if not workflow_triggered(wf, ev):
        return False
    jobs = github_jobs(wf)
    memo: dict[str, bool] = {}

    def runs(j: str, depth: int = 0) -> bool:
        if j in memo:
            return memo[j]
        if depth > 50 or j not in jobs:
            return False
        job = jobs[j] if isinstance(jobs[j], dict) else {}
        needed_ok = all(runs(n, depth + 1) for n in job_needs(job))
        cond = job.get("if")
        ctx = github_contexts(ev, _flat_env(wf.get("env")))
        ctx["needs"] = {n: {"result": "success" if memo.get(n) else "skipped", "outputs": {}} for n in job_needs(job)}
        result = github_if(cond, ctx, success=needed_ok)
        memo[j] = result
        return result

    return runs(job_id)


def _flat_env(env: Any) -> dict[str, str]:
    return {str(k): "" if v is None else str(v) for k, v in env.items()} if isinstance(env, dict) else {}


def run_steps(job: Any) -> list[tuple[int, Any]]:
    steps = job.get("steps") if isinstance(job, dict) else None
    return [(i, s) for i, s in enumerate(steps or []) if isinstance(s, dict)]


def job_commands(job: Any) -> str:
    return "\n".join(str(s.get("run", "")) for _, s in run_steps(job))


def find_deploy_job(jobs: dict[str, Any]) -> str | None:
    """The deploy job: named `deploy`, else the job that pushes a change to git or has an environment."""
    if "deploy" in jobs:
        return "deploy"
    for j, job in jobs.items():
        if "kustomize edit" in job_commands(job) or "git push" in job_commands(job):
            return j
    for j, job in jobs.items():
        if isinstance(job, dict) and job.get("environment"):
            return j
    return None


TEST_COMMAND = re.compile(r"(^|[\s;&|(])(python3?\s+-m\s+)?pytest\b")
EVAL_COMMAND = re.compile(r"(^|[\s;&|(])python3?\s+-m\s+eval\b")


def find_job_running(jobs: dict[str, Any], pattern: re.Pattern) -> str | None:
    for j, job in jobs.items():
        for line in logical_lines(job_commands(job)):
            if pattern.search(line):
                return j
    return None


# --------------------------------------------------------------------------- GitLab
GITLAB_RESERVED = {"stages", "variables", "default", "workflow", "include", "image", "services", "before_script",
                   "after_script", "cache", "spec", "pages"}


def _deep_merge(base: Any, over: Any) -> Any:
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            out[k] = _deep_merge(base.get(k), v) if k in base else v
        return out
    return over


def gitlab_jobs(cfg: Any) -> dict[str, dict]:
    """Jobs with `extends` and `default:` applied (hidden `.templates` are not jobs)."""
    if not isinstance(cfg, dict):
        return {}
    raw = {str(k): v for k, v in cfg.items()}

    def resolved(name: str, depth: int = 0) -> dict:
        job = raw.get(name)
        if not isinstance(job, dict) or depth > 10:
            return {}
        out: dict = {}
        for parent in _as_list(job.get("extends")) or []:
            out = _deep_merge(out, resolved(str(parent), depth + 1))
        return _deep_merge(out, {k: v for k, v in job.items() if k != "extends"})

    default = raw.get("default") if isinstance(raw.get("default"), dict) else {}
    jobs = {}
    for name, job in raw.items():
        if name in GITLAB_RESERVED or name.startswith(".") or not isinstance(job, dict):
            continue
        merged = resolved(name)
        for k in ("before_script", "after_script", "image", "services", "cache"):
            if k not in merged and k in default:
                merged[k] = default[k]
        jobs[name] = merged
    return jobs


def gitlab_stages(cfg: Any) -> list[str]:
    stages = cfg.get("stages") if isinstance(cfg, dict) else None
    return [str(s) for s in stages] if isinstance(stages, list) else ["build", "test", "deploy"]


def gitlab_script(job: dict) -> list[str]:
    lines = []
    for key in ("before_script", "script"):
        val = job.get(key)
        for item in _as_list(val) or []:
            if isinstance(item, list):  # nested lists (e.g. from !reference) flatten
                lines += [str(x) for x in item]
            else:
                lines.append(str(item))
    return lines


def gitlab_depends_on(jobs: dict[str, dict], stages: list[str], job_id: str) -> set[str]:
    """Jobs that must succeed before `job_id` starts: its `needs` (transitively), or, without
    `needs`, every job of an earlier stage (GitLab's stage order)."""
    out: set[str] = set()
    stack = [job_id]
    while stack:
        j = stack.pop()
        job = jobs.get(j, {})
        if "needs" in job:
            deps = []
            for n in _as_list(job.get("needs")) or []:
                deps.append(str(n.get("job")) if isinstance(n, dict) else str(n))
        else:
            stage = str(job.get("stage", "test"))
            idx = stages.index(stage) if stage in stages else 0
            deps = [k for k, v in jobs.items() if str(v.get("stage", "test")) in stages[:idx]]
        for d in deps:
            if d not in out:
                out.add(d)
                stack.append(d)
    return out


def gitlab_variables(ev: Event) -> dict[str, str]:
    v = {"CI_DEFAULT_BRANCH": "main", "CI_PIPELINE_SOURCE": ev.gitlab_source or "",
         "CI_COMMIT_SHA": "0123456789abcdef0123456789abcdef01234567", "CI_PROJECT_PATH": "learner/llm-chat"}
    if ev.gitlab_source == "merge_request_event":
        v.update({"CI_MERGE_REQUEST_IID": "7", "CI_MERGE_REQUEST_TARGET_BRANCH_NAME": "main",
                  "CI_MERGE_REQUEST_SOURCE_BRANCH_NAME": "feature/x", "CI_COMMIT_REF_NAME": "feature/x"})
    elif ev.ref.startswith("refs/tags/"):
        tag = ev.ref.split("/", 2)[2]
        v.update({"CI_COMMIT_TAG": tag, "CI_COMMIT_REF_NAME": tag})
    else:
        v.update({"CI_COMMIT_BRANCH": ev.branch or "", "CI_COMMIT_REF_NAME": ev.branch or ""})
    return v


def _rules_decide(rules: Any, variables: dict[str, str]) -> bool | None:
    """First matching rule decides (True = runs, False = never); None = no rule matched."""
    for rule in _as_list(rules) or []:
        if not isinstance(rule, dict):
            continue
        cond = rule.get("if")
        if cond is None or gitlab_eval(str(cond), variables):
            return str(rule.get("when", "on_success")) != "never"
    return None


_SOURCES = {"pushes": "push", "web": "web", "schedules": "schedule", "api": "api", "triggers": "trigger",
            "pipelines": "pipeline", "merge_requests": "merge_request_event", "external": "external",
            "chat": "chat"}


def _only_refs_match(refs: list, variables: dict[str, str]) -> bool:
    source = variables.get("CI_PIPELINE_SOURCE")
    name = variables.get("CI_COMMIT_REF_NAME", "")
    for r in refs:
        r = str(r)
        if r == "branches" and variables.get("CI_COMMIT_BRANCH"):
            return True
        if r == "tags" and variables.get("CI_COMMIT_TAG"):
            return True
        if r in _SOURCES and source == _SOURCES[r]:
            return True
        if r.startswith("/") and r.rstrip("i").endswith("/") and len(r) > 2:
            if re.search(r.rstrip("i")[1:-1], name) and source != "merge_request_event":
                return True
        elif r == name and source != "merge_request_event":
            return True
    return False


def gitlab_job_runs(cfg: Any, job: dict, ev: Event) -> bool:
    if ev.gitlab_source is None:
        return False
    variables = gitlab_variables(ev)
    wf = cfg.get("workflow") if isinstance(cfg, dict) else None
    if isinstance(wf, dict) and "rules" in wf and _rules_decide(wf.get("rules"), variables) is not True:
        return False
    if "rules" in job:
        return _rules_decide(job.get("rules"), variables) is True
    only, exc = job.get("only"), job.get("except")
    refs = only.get("refs") if isinstance(only, dict) else only
    refs = _as_list(refs) if refs is not None else ["branches", "tags"]
    if not _only_refs_match(refs, variables):
        return False
    ex_refs = exc.get("refs") if isinstance(exc, dict) else exc
    if ex_refs is not None and _only_refs_match(_as_list(ex_refs), variables):
        return False
    return True


# --------------------------------------------------------------------------- tools
def run_tool(cmd: list[str], cwd: Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def schema_errors(path: Path, builtin: str) -> list[str]:
    """check-jsonschema with its vendored schema (offline); returns the error lines."""
    proc = run_tool([sys.executable, "-m", "check_jsonschema", "--builtin-schema", builtin,
                     "--output-format", "text", str(path)], timeout=60)
    if proc.returncode == 0:
        return []
    text = proc.stdout + proc.stderr
    lines = [ln.strip() for ln in text.splitlines() if "::$" in ln]
    if not lines:  # a parse error or a tool failure: its own words
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()][-4:]
    return lines or ["check-jsonschema 이 아무것도 출력하지 않고 실패했습니다"]


# --------------------------------------------------------------------------- running commands
def logical_lines(script: str) -> list[str]:
    """A `run:` script split into commands (continuation lines joined, comments and blanks dropped)."""
    out, buf = [], ""
    for raw in script.splitlines():
        line = raw.rstrip()
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        line = (buf + line).strip()
        buf = ""
        if line and not line.startswith("#"):
            out.append(line)
    if buf.strip():
        out.append(buf.strip())
    return out


INSTALLER = re.compile(r"^(?:python3?\s+-m\s+)?pip3?\s+install\b")


def installer_unsatisfied(line: str, cwd: Path) -> list[str] | None:
    """For a pure `pip install ...` line: None if it is not one; else the requirements it names
    that the grader's environment (the course venv) does not satisfy ([] = all satisfied)."""
    if not INSTALLER.match(line) or any(ch in line for ch in ";&|"):
        return None
    from packaging.requirements import InvalidRequirement, Requirement

    try:
        args = shlex.split(line)
    except ValueError:
        return None
    args = args[args.index("install") + 1:]
    reqs: list[str] = []
    i = 0
    while i < len(args):
        a = args[i]
        if a in ("-r", "--requirement", "-c", "--constraint") and i + 1 < len(args):
            if a in ("-r", "--requirement"):
                reqs += _requirement_lines(cwd / args[i + 1])
            i += 2
            continue
        if a.startswith("-"):
            i += 1
            continue
        reqs.append(a)
        i += 1
    missing = []
    for spec in reqs:
        if spec in ("pip", "setuptools", "wheel") or spec.startswith(("pip>", "pip=", "pip<")):
            continue
        try:
            req = Requirement(spec)
        except InvalidRequirement:
            missing.append(spec)
            continue
        try:
            version = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            missing.append(spec)
            continue
        if req.specifier and not req.specifier.contains(version, prereleases=True):
            missing.append(f"{spec} (설치된 버전 {version})")
    return missing


def _requirement_lines(path: Path, depth: int = 0) -> list[str]:
    if not path.is_file() or depth > 5:
        return [f"-r {path.name} (파일 없음)"]
    out = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith(("-r ", "--requirement ")):
            out += _requirement_lines(path.parent / line.split(None, 1)[1], depth + 1)
        elif line.startswith("-"):
            continue
        else:
            out.append(line.split(";")[0].strip() if ";" in line and "python_version" not in line else line)
    return out


@dataclass
class StepRun:
    job: str
    name: str
    line: int | None
    commands: list[str]
    skipped_installers: list[str] = field(default_factory=list)
    returncode: int | None = None
    output: str = ""
    seconds: float = 0.0


_SINGLE_REF = re.compile(r"^\$\{\{\s*(secrets|vars)\.([A-Za-z_][A-Za-z0-9_]*)\s*\}\}$")


class Runner:
    """Runs the `run:` steps of GitHub Actions jobs in a scratch copy of the step folder, the way
    a runner would: bash -eo pipefail, GITHUB_* files, `env:` at workflow/job/step level with
    `${{ }}` evaluated, secrets and variables from the grader's own store."""

    def __init__(self, wf: Any, workdir: Path, secrets: dict[str, str], variables: dict[str, str],
                 forced_env: dict[str, str], label: str = GITHUB_WORKFLOW, event: Event = PUSH_MAIN):
        self.wf, self.workdir, self.label, self.event = wf, workdir, label, event
        self.secrets, self.variables, self.forced = secrets, variables, forced_env
        self.tmp = Path(tempfile.mkdtemp(prefix="grader-runner-"))
        self.summaries: dict[str, str] = {}

    def _contexts(self, env: dict[str, str], steps: dict) -> dict[str, Any]:
        ctx = github_contexts(self.event, env)
        ctx["secrets"] = dict(self.secrets)
        ctx["vars"] = dict(self.variables)
        ctx["steps"] = steps
        return ctx

    def _env_block(self, block: Any, env: dict[str, str], steps: dict) -> dict[str, str]:
        out = {}
        if not isinstance(block, dict):
            return out
        for k, v in block.items():
            text = "" if v is None else str(v).strip() if isinstance(v, str) else str(v).lower() if isinstance(v, bool) else str(v)
            m = _SINGLE_REF.match(text)
            if m:  # a single secrets.X / vars.X: the grader's value for X, or for the variable's own name
                store = self.secrets if m.group(1) == "secrets" else self.variables
                out[str(k)] = store.get(m.group(2), store.get(str(k), ""))
                continue
            out[str(k)] = github_template(text, self._contexts({**env, **out}, steps)) if "${{" in text else text
        return out

    def _base_env(self) -> dict[str, str]:
        from .harness import service_env

        env = service_env({})
        env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
        env.pop("VIRTUAL_ENV", None)
        ev = self.event
        env.update({
            "CI": "true", "GITHUB_ACTIONS": "true", "GITHUB_WORKSPACE": str(self.workdir),
            "GITHUB_SHA": "0123456789abcdef0123456789abcdef01234567", "GITHUB_REF": ev.ref,
            "GITHUB_REF_NAME": ev.ref.split("/", 2)[2], "GITHUB_EVENT_NAME": ev.name,
            "GITHUB_REPOSITORY": "learner/llm-chat", "RUNNER_OS": "Linux", "RUNNER_TEMP": str(self.tmp),
            "HOME": env.get("HOME", str(self.tmp)),
        })
        return env

    def run_job(self, job_id: str, timeout: float = 180.0) -> list[StepRun]:
        """Run every `run:` step of the job whose `if:` holds; stop at the first failing step."""
        import time

        job = github_jobs(self.wf).get(job_id)
        job = job if isinstance(job, dict) else {}
        try:
            env_static = {**self._env_block(self.wf.get("env"), {}, {})}
            env_static.update(self._env_block(job.get("env"), env_static, {}))
        except ExpressionError as exc:
            fail(expected=f"{self.label} 의 env 식을 해석할 수 있음", measured=str(exc))
        defaults = {}
        for d in (self.wf.get("defaults"), job.get("defaults")):
            if isinstance(d, dict) and isinstance(d.get("run"), dict):
                defaults.update(d["run"])
        summary = self.tmp / f"{job_id}-summary.md"
        files = {name: self.tmp / f"{job_id}-{name.lower()}" for name in ("GITHUB_OUTPUT", "GITHUB_ENV", "GITHUB_PATH")}
        for f in [summary, *files.values()]:
            f.write_text("", encoding="utf-8")
        added_env: dict[str, str] = {}
        extra_path: list[str] = []
        steps_ctx: dict[str, Any] = {}
        results: list[StepRun] = []
        for idx, step in run_steps(job):
            name = str(step.get("name") or step.get("uses") or f"{idx + 1}번째 스텝")
            if "run" not in step:
                continue
            env = {**env_static, **added_env}
            try:
                env.update(self._env_block(step.get("env"), env, steps_ctx))
                ctx = self._contexts(env, steps_ctx)
                if not github_if(step.get("if"), ctx):
                    continue
                script = github_template(str(step.get("run")), ctx)
            except ExpressionError as exc:
                fail(expected=f"{self.label} 의 식을 해석할 수 있음", measured=f"{where(self.label, step, 'run')}: {exc}")
            sr = StepRun(job_id, name, line_of(step, "run"), logical_lines(script))
            cwd = self.workdir / str(step.get("working-directory") or defaults.get("working-directory") or ".")
            kept = []
            for raw in script.splitlines():
                missing = installer_unsatisfied(raw.strip(), cwd) if raw.strip() else None
                if missing is None:
                    kept.append(raw)
                    continue
                if missing:
                    fail(expected=f"설치 줄 `{raw.strip()}` 의 패키지가 채점 환경(코스 .venv)에 있음 "
                                  "(채점기는 설치 줄을 실행하지 않고, 이미 설치돼 있을 때만 건너뜁니다)",
                         measured=f"{where(self.label, step, 'run')}: 없는 패키지 {', '.join(missing[:5])}")
                sr.skipped_installers.append(raw.strip())
                kept.append(":")
            shell = str(step.get("shell") or defaults.get("shell") or "bash")
            script_file = self.tmp / f"{job_id}-{idx}.sh"
            script_file.write_text("\n".join(kept) + "\n", encoding="utf-8")
            if shell == "bash":
                cmd = ["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script_file)]
            elif shell == "sh":
                cmd = ["sh", "-e", str(script_file)]
            elif shell == "python":
                cmd = [sys.executable, str(script_file)]
            else:
                fail(expected="run 스텝의 셸이 bash, sh, python 중 하나 (ubuntu 러너 기본값 bash)",
                     measured=f"{where(self.label, step, 'shell')}: shell: {shell}")
            full_env = {**self._base_env(), **env, **self.forced}
            full_env["GITHUB_STEP_SUMMARY"] = str(summary)
            for k, f in files.items():
                full_env[k] = str(f)
            if extra_path:
                full_env["PATH"] = os.pathsep.join(extra_path + [full_env["PATH"]])
            if not cwd.is_dir():
                fail(expected=f"working-directory {cwd.relative_to(self.workdir)} 가 단계 폴더에 있음",
                     measured=f"{where(self.label, step, 'working-directory')}: 폴더가 없습니다")
            started = time.monotonic()
            try:
                proc = subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout,
                                      stdin=subprocess.DEVNULL, start_new_session=True)
                sr.returncode, sr.output = proc.returncode, (proc.stdout + proc.stderr)
            except subprocess.TimeoutExpired as exc:
                sr.returncode = -1
                sr.output = f"{timeout:.0f}초 안에 끝나지 않음\n" + str(exc.stdout or "")[-2000:]
            sr.seconds = time.monotonic() - started
            results.append(sr)
            if sr.returncode != 0:
                break
            outputs = _read_kv(files["GITHUB_OUTPUT"])
            if step.get("id"):
                steps_ctx[str(step["id"])] = {"outputs": outputs, "outcome": "success", "conclusion": "success"}
            added_env.update(_read_kv(files["GITHUB_ENV"]))
            extra_path = [p for p in files["GITHUB_PATH"].read_text(encoding="utf-8").splitlines() if p.strip()]
            files["GITHUB_OUTPUT"].write_text("", encoding="utf-8")
        self.summaries[job_id] = summary.read_text(encoding="utf-8", errors="replace")
        return results

    def cleanup(self) -> None:
        import shutil

        shutil.rmtree(self.tmp, ignore_errors=True)


def _read_kv(path: Path) -> dict[str, str]:
    """KEY=VALUE lines and KEY<<DELIM heredocs, as in GITHUB_OUTPUT/GITHUB_ENV."""
    out: dict[str, str] = {}
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if "<<" in line and ("=" not in line or line.index("<<") < line.index("=")):
            key, delim = line.split("<<", 1)
            body = []
            i += 1
            while i < len(lines) and lines[i] != delim:
                body.append(lines[i])
                i += 1
            out[key] = "\n".join(body)
        elif "=" in line:
            key, value = line.split("=", 1)
            out[key] = value
        i += 1
    return out
