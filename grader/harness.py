"""Tools the step graders use: check marks, Korean failures, measured values,
the learner's service as a real process, Locust as a headless subprocess.

A grader module looks like this::

    STEP = "step02"

    @check("step02.auth")
    def test_auth(service):
        r = httpx.post(...)
        if r.status_code != 401:
            fail(expected="401", measured=str(r.status_code))

Everything a check needs (thresholds, scenarios, fixtures) lives in `grader/`, never in
the learner's folder, so editing files outside the step folder cannot make a check pass.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest

from coursekit import locust_stats, manifest
from coursekit.procs import free_port, skip_or_fail, stop_process, tools_required, wait_until
from coursekit.procs import port_open as _port_open

__all__ = [
    "CheckFailed",
    "blocked",
    "LocustResult",
    "Service",
    "check",
    "copy_step",
    "fail",
    "free_port",
    "record",
    "require_tool",
    "run_locust",
    "run_service",
    "tools_required",
    "wait_until",
]

GRADER_DIR = Path(__file__).resolve().parent
SCENARIOS = GRADER_DIR / "scenarios"


# --------------------------------------------------------------------------- checks
class CheckFailed(AssertionError):
    """A check did not pass; its message is Korean and meant for the learner.

    `hint` (optional) is the hint for what actually failed; the report shows it instead of the
    check's hint from the manifest. `blocked_by` names the check whose failure made this one
    impossible to grade (see `blocked`).
    """

    def __init__(self, expected: str, measured: str, detail: str | None = None, *,
                 hint: str | None = None, blocked_by: str | None = None):
        self.expected, self.measured, self.detail = expected, measured, detail
        self.hint, self.blocked_by = hint, blocked_by
        lines = [f"기대: {expected}", f"측정: {measured}"]
        if detail:
            lines.append(detail)
        super().__init__("\n".join(lines))


def fail(expected: str, measured: str, detail: str | None = None, *, hint: str | None = None):
    """Fail the current check with what was expected and what was measured.

    `hint` replaces the check's manifest hint for this failure (when the failure has a more
    precise cause than the check as a whole, e.g. a missing Retry-After header)."""
    raise CheckFailed(expected, measured, detail, hint=hint)


def blocked(by: str, measured: str, detail: str | None = None):
    """Fail the current check because its precondition, the check `by`, failed.

    The message says which check must pass first, and the hint is that check's hint, so a
    learner is sent to the real cause instead of this check's own advice."""
    pre = manifest.load().check(by)
    raise CheckFailed(
        expected=f"먼저 `{by}` ({pre.title}) 가 통과해야 이 항목을 검사할 수 있습니다",
        measured=measured,
        detail=detail,
        hint=f"`{by}` 부터 고치세요: {pre.hint}",
        blocked_by=by,
    )


def check(check_id: str):
    """Mark a test as the grader of one check of the manifest (`coursekit/course.toml`)."""
    manifest.load().check(check_id)  # unknown ids fail at import, not at grading time
    return pytest.mark.check(check_id)


# Measured values of the test that is running now (set by the conftest hooks).
_current: dict[str, Any] | None = None


def record(name: str, value: Any) -> None:
    """Attach a measured value (a number, a short string) to the running check."""
    if _current is not None:
        _current[name] = value


def _set_current(store: dict[str, Any] | None) -> None:
    global _current
    _current = store


# --------------------------------------------------------------------------- tools
def require_tool(name: str, reason: str, available: bool | None = None) -> None:
    """Skip (learner's laptop) or fail (CI) when a system tool is missing.

    `available` overrides the PATH lookup (e.g. "the docker engine answers").
    """
    ok = shutil.which(name) is not None if available is None else available
    if ok:
        return
    what = "없어" if available is None else "사용할 수 없어"
    skip_or_fail(f"{name} 을(를) {what} 이 항목을 건너뜁니다: {reason}")


# --------------------------------------------------------------------------- service
# Variables of the learner's own shell that must not leak into a graded service.
_SCRUBBED_ENV = (
    "GOOGLE_API_KEY",
    "GEMINI_API_KEY",
    "GOOGLE_GEMINI_BASE_URL",
    "GOOGLE_GENAI_USE_VERTEXAI",
    "GOOGLE_CLOUD_PROJECT",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "SERVICE_API_KEY",
    "LLM_MODEL",
    "LLM_TIMEOUT_SECONDS",
    "LLM_MAX_ATTEMPTS",
    "MAX_MESSAGE_CHARS",
    "PROMPT_VERSION",
)

# Services started by the running test, so a failure can show their output.
_started: list["Service"] = []
# Every service log file of this process (removed by `remove_service_logs` at the end).
_log_files: list[Path] = []


@dataclass
class Service:
    """The learner's service, running as a real uvicorn process."""

    base_url: str
    port: int
    process: subprocess.Popen
    log_path: Path
    cwd: Path
    env: dict[str, str] = field(default_factory=dict)
    name: str = ""  # shown above its log in the report, e.g. "02-fastapi (부하 테스트용)"

    def output(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.output().splitlines()[-lines:])

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, grace: float = 10.0) -> None:
        if self in _started:
            _started.remove(self)
        stop_process(self.process, grace)


# What a copy of a learner's step folder leaves out: local secrets/settings and caches.
COPY_IGNORE = (".env", ".venv", "venv", "__pycache__", ".git", ".pytest_cache", ".mypy_cache", ".ruff_cache",
               "node_modules", ".ipynb_checkpoints")


def copy_step(step_dir: Path, dest_root: Path) -> Path:
    """Copy a step folder to `dest_root/<folder name>` without `.env` and caches, so the
    learner's local `.env` cannot change the settings a check pins. Returns the copy."""
    step_dir = Path(step_dir)
    dest = Path(dest_root) / step_dir.name
    shutil.copytree(step_dir, dest, ignore=shutil.ignore_patterns(*COPY_IGNORE), symlinks=True)
    return dest


def service_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED_ENV}
    env.update({"PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"})
    env.update(extra)
    return env


@contextmanager
def run_service(
    step_dir: Path,
    env: dict[str, str] | None = None,
    app: str = "main:app",
    startup_timeout: float = 30.0,
    name: str | None = None,
) -> Iterator[Service]:
    """Run `uvicorn main:app` in the step folder on a free loopback port, as the
    notebook tells the learner to, and stop it (by PID) afterwards. `name` labels its log
    in the report (default: the folder name)."""
    step_dir = Path(step_dir)
    if not (step_dir / (app.split(":")[0] + ".py")).is_file():
        fail(
            expected=f"{step_dir.name}/{app.split(':')[0]}.py 에 FastAPI 앱 `{app}`",
            measured="파일이 없습니다",
        )
    port = free_port()
    fd, log_name = tempfile.mkstemp(prefix=f"grader-{step_dir.name}-", suffix=".log")
    os.close(fd)
    log = Path(log_name)
    _log_files.append(log)
    full_env = service_env(env or {})
    cmd = [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=step_dir, env=full_env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    svc = Service(f"http://127.0.0.1:{port}", port, proc, log, step_dir, env or {}, name or step_dir.name)
    _started.append(svc)
    try:
        up = wait_until(lambda: _port_open(port) or proc.poll() is not None, startup_timeout)
        if proc.poll() is not None or not up:
            svc.stop()
            what = f"프로세스가 종료됨 (종료 코드 {proc.returncode})" if proc.poll() is not None else (
                f"{startup_timeout:.0f}초 안에 포트가 열리지 않음")
            fail(
                expected=f"`uvicorn {app}` 가 {step_dir.name} 폴더에서 시작됨",
                measured=what,
                detail="서비스 로그 (마지막 줄):\n" + svc.tail(25),
            )
        yield svc
    finally:
        svc.stop()


def running_services() -> list[Service]:
    """Services started by the grader that are still running (for failure reports)."""
    return list(_started)


def remove_service_logs() -> None:
    """Delete the log files of every service this process started (after the report used them)."""
    while _log_files:
        _log_files.pop().unlink(missing_ok=True)


# --------------------------------------------------------------------------- locust
@dataclass(frozen=True)
class LocustResult:
    users: int
    run_time_s: float
    requests: int
    failures: int
    rps: float
    p50: float
    p95: float
    p99: float
    output: str = ""
    errors: tuple[tuple[str, int], ...] = ()  # (Locust's error text, occurrences), most frequent first

    def summary(self) -> str:
        text = (
            f"사용자 {self.users}명, {self.run_time_s:.0f}초: 요청 {self.requests}개, 실패 {self.failures}개, "
            f"{self.rps:.1f} req/s, p50 {self.p50:.2f}s, p95 {self.p95:.2f}s, p99 {self.p99:.2f}s"
        )
        if self.errors:
            text += " [실패 원인: " + ", ".join(f"{e} x{n}" for e, n in self.errors[:3]) + "]"
        return text


def _num(value: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def run_locust(
    scenario: str | Path,
    host: str,
    users: int,
    spawn_rate: float,
    run_time_s: float,
    env: dict[str, str] | None = None,
) -> LocustResult:
    """Run Locust headless as a subprocess (never as a library inside pytest: gevent's
    monkey-patching breaks it). Counts and percentiles come from its final --json-file statistics
    (coursekit.locust_stats: the --csv files lag the last second of the run); the failure list from
    its failures CSV."""
    scenario = Path(scenario)
    if not scenario.is_absolute():
        scenario = SCENARIOS / scenario
    with tempfile.TemporaryDirectory(prefix="grader-locust-") as tmp:
        prefix = Path(tmp) / "run"
        cmd = [
            sys.executable, "-m", "locust", "-f", str(scenario), "--headless",
            "-u", str(users), "-r", str(spawn_rate), "-t", f"{int(run_time_s)}s",
            "--host", host, "--csv", str(prefix), "--json-file", str(prefix), "--only-summary", "--loglevel", "WARNING",
            "--stop-timeout", "0",
        ]
        full_env = {**os.environ, **(env or {})}
        try:
            proc = subprocess.run(cmd, env=full_env, capture_output=True, text=True,
                                  timeout=run_time_s + 90, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as exc:
            fail(expected=f"Locust 가 {run_time_s:.0f}초 동안 부하를 주고 끝남", measured="Locust 가 끝나지 않음",
                 detail=str(exc))
        output = (proc.stdout or "") + (proc.stderr or "")
        stats = Path(f"{prefix}.json")
        if not stats.exists():
            fail(expected="Locust 통계 (--json-file)", measured=f"생성되지 않음 (종료 코드 {proc.returncode})",
                 detail=output[-2000:])
        try:
            agg = locust_stats.read(stats, run_time_s)["Aggregated"]
        except (ValueError, KeyError, TypeError) as exc:
            fail(expected="Locust 통계 (--json-file)", measured=f"읽을 수 없음: {exc}", detail=output[-2000:])
        errors: list[tuple[str, int]] = []
        failures_csv = Path(f"{prefix}_failures.csv")
        if failures_csv.exists():
            with open(failures_csv, newline="", encoding="utf-8") as fh:
                for row in csv.DictReader(fh):
                    errors.append((row.get("Error", "?"), int(_num(row.get("Occurrences", "0")))))
            errors.sort(key=lambda e: -e[1])
    return LocustResult(
        users=users,
        run_time_s=run_time_s,
        requests=agg.requests,
        failures=agg.failures,
        rps=agg.rps,
        p50=agg.p50,
        p95=agg.p95,
        p99=agg.p99,
        output=output[-4000:],
        errors=tuple(errors),
    )


@contextmanager
def report_grading_time(request, step_id: str, budget_seconds: float) -> Iterator[None]:
    """Around a step's graded checks (a module-scoped autouse fixture): print how long grading took
    against its budget (DESIGN §8), outside pytest's output capture."""
    started = time.monotonic()
    yield
    took = time.monotonic() - started
    capman = request.config.pluginmanager.getplugin("capturemanager")
    reporter = request.config.pluginmanager.getplugin("terminalreporter")
    if capman is not None and reporter is not None:
        with capman.global_and_fixture_disabled():
            reporter.write_line(f"\n{step_id} 채점 시간: {took:.1f}초 (예산 {budget_seconds}초)")
