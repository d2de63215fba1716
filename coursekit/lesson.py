"""Lesson plumbing for the step notebooks, so a lesson starts with a few lines and its cells teach.

    from coursekit import lesson

    sim = lesson.setup()                     # simulator of `course lab`, or one of its own
    with lesson.sim_faults(error_503_rate=1.0):
        ...                                  # previous config restored, even on Ctrl+C
    svc = lesson.start_service("demo_app.py", env={"DEMO_MODE": "async"})
    httpx.get(svc.url + "/health")
    svc.stop()                               # or left to the automatic cleanup at exit
    lesson.self_check("step02.validation")   # only these grader checks, Korean results

Everything a lesson starts here (its own simulator, services, the work folder) is stopped by
PID when the kernel exits, and by `lesson.cleanup()`.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import httpx

from . import REPO_ROOT, manifest
from .procs import free_port, port_open, stop_process

__all__ = [
    "LessonError",
    "SelfCheckResult",
    "Service",
    "Simulator",
    "cleanup",
    "on_cleanup",
    "section_checks",
    "self_check",
    "setup",
    "sim_faults",
    "simulator",
    "start_service",
    "workdir",
]

SIM_API_KEY = "sim-any-key"
"""The Gemini key used with the simulator (any non-empty ASCII key works there)."""

# Only these keys of /_sim/config are settable (GET also reports no host/port today,
# but a future field must not break restoring).
_FAULT_KEYS = ("error_429_rate", "error_500_rate", "error_503_rate", "hang_rate")


class LessonError(RuntimeError):
    """A lesson helper could not do its job; the message is Korean and says why."""


# --------------------------------------------------------------------------- simulator
class Simulator:
    """Handle on the Gemini simulator a lesson talks to (its admin API under /_sim/)."""

    def __init__(self, base_url: str, api_key: str, process: Any = None):
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.process = process  # SimulatorProcess when the lesson started its own
        self._admin = httpx.Client(base_url=self.base_url, timeout=10.0)
        self._startup_config = self.config()

    @property
    def own(self) -> bool:
        """True when this lesson started the simulator (it is stopped at exit)."""
        return self.process is not None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def _call(self, method: str, path: str, **kw) -> Any:
        try:
            r = self._admin.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise LessonError(f"시뮬레이터({self.base_url})에 연결할 수 없습니다: {exc}. "
                              "course lab 을 다시 시작하거나 첫 셀을 다시 실행하세요.") from None
        if r.status_code >= 400:
            raise LessonError(f"시뮬레이터 {method} {path} → {r.status_code}: {r.text}")
        return r.json()

    def config(self) -> dict[str, Any]:
        """The simulator's current configuration (latency, fault rates, ...)."""
        return self._call("GET", "/_sim/config")

    def configure(self, **changes: Any) -> dict[str, Any]:
        """Change the configuration at run time; returns the whole new configuration.
        Prefer `with lesson.sim_faults(...)` for faults: it puts the old values back."""
        return self._call("PATCH", "/_sim/config", json=changes)

    def stats(self) -> dict[str, Any]:
        """Counters since the last reset: requests_total, by_action, by_status, tokens, faults ..."""
        return self._call("GET", "/_sim/stats")

    def reset(self, config: bool = False) -> None:
        """Zero the counters; with `config=True` also restore the simulator's start-up configuration."""
        self._call("POST", "/_sim/reset", json={"config": True} if config else None)

    def upstream_calls(self, action: str = "generateContent") -> int:
        """How many `action` calls the simulator received since the last reset (each retry counts)."""
        return int(self.stats()["by_action"].get(action, 0))

    def env(self) -> dict[str, str]:
        """Environment variables that point a service (ChatGoogleGenerativeAI) at this simulator."""
        return {"GOOGLE_GEMINI_BASE_URL": self.base_url, "GOOGLE_API_KEY": self.api_key}

    def restore(self, config: dict[str, Any] | None = None) -> None:
        """Re-apply a saved configuration (default: the one found when the lesson connected)."""
        saved = self._startup_config if config is None else config
        self.configure(**{k: v for k, v in saved.items() if k not in ("host", "port")})

    def close(self) -> None:
        self._admin.close()
        if self.process is not None:
            self.process.stop()
            self.process = None

    def __repr__(self) -> str:
        who = f"이 노트북 전용, PID {self.pid}" if self.own else "course lab"
        return f"<Simulator {self.base_url} ({who})>"


_SIM: Simulator | None = None


def setup(latency: str = "zero", quiet: bool = False) -> Simulator:
    """Connect to the simulator of `course lab` (GOOGLE_GEMINI_BASE_URL) or start one for this
    kernel (stopped at exit). Calling it again returns the same simulator.

    `latency` applies only to a simulator the lesson starts itself. A shared simulator left
    in fault mode by an interrupted lesson gets its fault rates set back to 0 (and says so).
    """
    global _SIM
    if _SIM is not None:
        try:
            _SIM.config()
            return _SIM
        except LessonError:  # the lab was restarted: connect again
            _SIM = None
    url = os.environ.get("GOOGLE_GEMINI_BASE_URL")
    if url:
        sim = Simulator(url, os.environ.get("GOOGLE_API_KEY") or SIM_API_KEY)
        left = {k: v for k, v in sim._startup_config.items() if k in _FAULT_KEYS and v}
        if left:
            sim.configure(**{k: 0.0 for k in left})
            sim._startup_config = sim.config()
            if not quiet:
                print(f"시뮬레이터가 장애 모드로 남아 있어 되돌렸습니다: {left}")
        if not quiet:
            print(f"course lab 의 시뮬레이터를 씁니다: {sim.base_url}")
    else:
        from .simulator import SimulatorProcess

        proc = SimulatorProcess(latency=latency).start()
        sim = Simulator(proc.base_url, SIM_API_KEY, process=proc)
        if not quiet:
            print(f"이 노트북 전용 시뮬레이터를 띄웠습니다: {sim.base_url} (PID {sim.pid}, 커널이 끝나면 멈춤)")
    _SIM = sim
    return sim


def simulator() -> Simulator:
    """The simulator of this lesson (`setup()` on first use)."""
    return _SIM if _SIM is not None else setup(quiet=True)


@contextlib.contextmanager
def sim_faults(**changes: Any) -> Iterator[Simulator]:
    """Apply a simulator configuration for the duration of a `with` block and put the previous
    configuration back on exit, also after an exception or a KeyboardInterrupt (kernel interrupt).

        with lesson.sim_faults(error_429_rate=1.0):
            await llm.ainvoke("...")
    """
    sim = simulator()
    saved = sim.config()
    sim.configure(**changes)
    try:
        yield sim
    finally:
        sim.restore(saved)


# --------------------------------------------------------------------------- work folder
_WORK: Path | None = None


def workdir() -> Path:
    """A temporary folder for the lesson's demo files and logs (removed at exit)."""
    global _WORK
    if _WORK is None or not _WORK.is_dir():
        _WORK = Path(tempfile.mkdtemp(prefix="lesson-"))
    return _WORK


# --------------------------------------------------------------------------- services
@dataclass
class Service:
    """A uvicorn process started by a lesson on a free loopback port."""

    url: str
    port: int
    process: subprocess.Popen
    log_path: Path
    cwd: Path
    app: str
    env: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def base_url(self) -> str:
        return self.url

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM (graceful shutdown: lifespan exit runs), then SIGKILL after `grace` seconds."""
        if self in _SERVICES:
            _SERVICES.remove(self)
        stop_process(self.process, grace)

    def __enter__(self) -> "Service":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


_SERVICES: list[Service] = []


def start_service(folder_or_file: str | os.PathLike, module: str = "main", env: dict[str, str] | None = None,
                  timeout: float = 60.0, app: str = "app") -> Service:
    """Run `uvicorn <module>:<app>` from a folder (or `.py` file) as a real process on a free
    loopback port and wait, with a deadline, until it accepts connections (uvicorn opens its
    port after the lifespan startup). The service talks to the lesson's simulator
    (GOOGLE_GEMINI_BASE_URL, GOOGLE_API_KEY); `env` is added on top. Stopped at exit or by `.stop()`.
    """
    path = Path(folder_or_file).expanduser().resolve()
    if path.suffix == ".py":
        cwd, module = path.parent, path.stem
    else:
        cwd = path
    if not (cwd / f"{module}.py").is_file():
        raise LessonError(f"{cwd / (module + '.py')} 파일이 없습니다.")
    sim = simulator()
    full_env = {**os.environ, **sim.env(), "PYTHONUNBUFFERED": "1", **(env or {})}
    port = free_port()
    log_path = workdir() / f"{module}-{port}.log"
    target = f"{module}:{app}"
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", target, "--host", "127.0.0.1", "--port", str(port)],
            cwd=cwd, env=full_env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,  # a kernel interrupt (SIGINT to the group) does not reach it
        )
    svc = Service(f"http://127.0.0.1:{port}", port, proc, log_path, cwd, target, env or {})
    _SERVICES.append(svc)
    deadline = time.monotonic() + timeout
    while proc.poll() is None and not port_open(port):
        if time.monotonic() > deadline:
            svc.stop()
            raise LessonError(f"`uvicorn {target}` 가 {timeout:.0f}초 안에 포트 {port} 를 열지 않았습니다 "
                              f"({cwd}).\n--- 서비스 로그 (마지막 줄) ---\n{svc.tail()}")
        time.sleep(0.05)
    if proc.poll() is not None:
        svc.stop()
        raise LessonError(f"`uvicorn {target}` 가 시작하자마자 종료되었습니다 (종료 코드 {proc.returncode}, "
                          f"{cwd}).\n--- 서비스 로그 (마지막 줄) ---\n{svc.tail()}")
    return svc


# --------------------------------------------------------------------------- self-check
SERVICE_LOG_LINES = 12
_ICON = {"passed": "✅", "failed": "❌", "skipped": "⏭ ", "not_graded": "⬜"}
_KO = {"passed": "통과", "failed": "실패", "skipped": "건너뜀", "not_graded": "채점 안 됨"}


class SelfCheckResult(dict):
    """{check_id: {...}} with a one-line summary as its notebook display (the details are printed)."""

    @property
    def passed(self) -> bool:
        return bool(self) and all(r["outcome"] == "passed" for r in self.values())

    def __repr__(self) -> str:
        done = sum(r["outcome"] == "passed" for r in self.values())
        return f"<셀프 체크 {done}/{len(self)} 통과: {', '.join(self)}>"

    def _repr_pretty_(self, p, cycle) -> None:
        p.text(repr(self))


_SECTION = re.compile(r"lesson\.ipynb\s*§(\d+)")


def section_checks(step: str, section: int | str) -> list[str]:
    """Ids of a step's checks whose hint points at lesson section §N (the manifest is the source)."""
    wanted = str(section).lstrip("§")
    out = []
    for chk in manifest.load().step(step).checks:
        found = _SECTION.search(chk.hint)
        if found and found.group(1) == wanted:
            out.append(chk.id)
    return out


def self_check(*check_ids: str, step: str | None = None, section: int | str | None = None,
               target: str | os.PathLike | None = None, timeout: float = 300.0,
               quiet: bool = False) -> SelfCheckResult:
    """Run only these grader checks on the learner's step folders (default `<repo>/steps`),
    like otter-grader's `grader.check()`, and print each outcome in Korean: expected, measured
    and the hint on failure. Returns {check_id: {"outcome", "title", "messages", "measured", "hint"}}.
    A failing check does not raise: the lesson goes on.

    `self_check(step="step02", section=2)` grades the checks whose hint names lesson §2.
    """
    m = manifest.load()
    if step is not None:
        check_ids = tuple(check_ids) + tuple(c for c in (section_checks(step, section) if section is not None
                                                          else [c.id for c in m.step(step).checks])
                                             if c not in check_ids)
    if not check_ids:
        raise ValueError("self_check 에 채점 항목 id 를 하나 이상 주세요 (예: \"step02.auth\")")
    checks = {cid: m.check(cid) for cid in check_ids}  # unknown ids raise here, in the lesson cell
    target_dir = Path(target).expanduser().resolve() if target is not None else REPO_ROOT / "steps"
    with tempfile.TemporaryDirectory(prefix="self-check-") as tmp:
        report_path = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "pytest", str(REPO_ROOT / "grader"), "-p", "no:cacheprovider",
               "-q", "--no-header", "-o", "console_output_style=classic",
               "--checks", ",".join(check_ids), "--target", str(target_dir),
               "--grade-report", str(report_path)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
        try:
            proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                                  timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise LessonError(f"채점이 {timeout:.0f}초 안에 끝나지 않았습니다: {', '.join(check_ids)}") from None
        report = json.loads(report_path.read_text(encoding="utf-8")) if report_path.exists() else None
    found: dict[str, dict[str, Any]] = {}
    for step in (report or {}).get("steps", {}).values():
        found.update(step["checks"])
    results = SelfCheckResult()
    for cid, chk in checks.items():
        got = found.get(cid)
        results[cid] = {
            "outcome": got["outcome"] if got else "not_graded",
            "title": chk.title,
            "messages": got["messages"] if got else [],
            "measured": got["measured"] if got else {},
            # the hint for what failed (a failure may carry its own), else the manifest's
            "hint": got.get("hint", chk.hint) if got else chk.hint,
            "blocked_by": got.get("blocked_by", []) if got else [],
            "service_log": "\n\n".join(e["log_tail"] for e in (report or {}).get("service_logs", [])
                                       if cid in e.get("checks", []) and e.get("log_tail")),
        }
    if report is None or proc.returncode not in (0, 1):
        out = (proc.stdout + proc.stderr).strip().splitlines()
        if not quiet:
            print(f"채점기를 실행하지 못했습니다 (pytest 종료 코드 {proc.returncode}). 출력의 마지막 부분:")
            print("\n".join(out[-25:]))
        return results
    if not quiet:
        _print_results(results, target_dir)
    return results


def _print_results(results: dict[str, dict[str, Any]], target_dir: Path) -> None:
    passed = sum(r["outcome"] == "passed" for r in results.values())
    print(f"셀프 체크: {passed}/{len(results)} 통과  (채점 대상: {target_dir})")
    for cid, r in results.items():
        print(f"{_ICON[r['outcome']]} {cid} — {r['title']}: {_KO[r['outcome']]}")
        if r["outcome"] == "passed":
            continue
        for msg in dict.fromkeys(r["messages"]):  # the same message from several cases once
            for line in msg.splitlines():
                print(f"    {line}")
        if r["outcome"] == "failed":
            if r["blocked_by"]:
                print(f"    먼저 통과해야 하는 항목: {', '.join(r['blocked_by'])}")
            print(f"    힌트: {r['hint']}")
    # a service shared by several failed checks: its log once, at the end
    logs = dict.fromkeys(r["service_log"] for r in results.values() if r["outcome"] == "failed" and r["service_log"])
    for log in logs:
        print(f"--- 채점 중 여러분의 서비스 로그 (마지막 {SERVICE_LOG_LINES}줄) ---")
        for line in log.splitlines()[-SERVICE_LOG_LINES:]:
            print(f"    {line}")


# --------------------------------------------------------------------------- cleanup
_CLEANUPS: list = []


def on_cleanup(func) -> None:
    """Run `func()` first in every `cleanup()` (other kit modules stop what they started: Prometheus ...)."""
    if func not in _CLEANUPS:
        _CLEANUPS.append(func)


def cleanup() -> None:
    """Stop every service and the lesson's own simulator (by PID), restore a shared simulator's
    configuration, and remove the work folder. Safe to call more than once."""
    global _SIM, _WORK
    for func in list(_CLEANUPS):
        func()
    for svc in list(_SERVICES):
        svc.stop()
    if _SIM is not None:
        if not _SIM.own:
            with contextlib.suppress(LessonError):
                _SIM.restore()
        _SIM.close()
        _SIM = None
    if _WORK is not None:
        shutil.rmtree(_WORK, ignore_errors=True)
        _WORK = None


atexit.register(cleanup)


def show_source(path: str | os.PathLike, start: str | None = None, end: str | None = None):
    """A demo file (or its lines from the first one containing `start` up to the line before the
    next one containing `end`) as highlighted code in the notebook; plain text outside IPython."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    if start is not None:
        first = next(i for i, l in enumerate(lines) if start in l)
        last = len(lines)
        if end is not None:
            last = next((i for i, l in enumerate(lines[first + 1:], first + 1) if end in l), len(lines))
        lines = lines[first:last]
    text = "\n".join(lines).rstrip() + "\n"
    try:
        from IPython.display import Code

        return Code(text, language="python")
    except ImportError:  # outside IPython
        return text
