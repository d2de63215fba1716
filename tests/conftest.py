"""Shared fixtures of the maintainers' tests (kept minimal)."""

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from coursekit.simulator import SimulatorProcess

# pytest-timeout's limit (600 s, pyproject.toml) covers a test's setup too: the first test that asks for the
# executed lessons (or the site built from them) pays for running every ready lesson once (about 10 minutes,
# growing with each step), so those tests get a limit of their own. Each lesson keeps its own bound (nbconvert
# timeout, 900 s per notebook) and each other test keeps 600 s.
LESSONS_TIMEOUT_S = 2400


def pytest_collection_modifyitems(config, items):
    for item in items:
        if {"executed_lessons", "site"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.timeout(LESSONS_TIMEOUT_S))


@pytest.fixture(scope="session")
def simulator():
    """One simulator process for the whole test session (zero latency)."""
    with SimulatorProcess(latency="zero") as sim:
        yield sim


@pytest.fixture(scope="session")
def shared_trace_backend():
    """One MLflow trace backend for every grading subprocess of the session that needs one (step 05
    and later): `COURSE_MLFLOW_URL` makes their `MLflowServer` attach to it with an experiment of its
    own instead of starting a server each (about 12 s each). Absent backend: nothing is shared and
    each grading run reports the missing tool itself."""
    import os

    from coursekit import tracing

    if os.environ.get(tracing.SHARED_URL_ENV) or tracing.find_backend() is None:
        yield None
        return
    with tracing.MLflowServer(experiment="shared", share=False) as server:
        yield server


def needs_trace_backend(request, step_id: str | None) -> None:
    """When a test grades step 05 or later: start (once) the shared trace backend and point this test's
    grading subprocesses at it (`COURSE_MLFLOW_URL`, set for this test only; in-process code never sees it)."""
    if step_id and step_id >= "step05":
        server = request.getfixturevalue("shared_trace_backend")
        if server is not None:
            from coursekit import tracing

            request.getfixturevalue("monkeypatch").setenv(tracing.SHARED_URL_ENV, server.url)


@pytest.fixture
def own_sim(monkeypatch):
    """The lesson kit's own simulator, as a lesson started without `course lab` gets it (the lesson kit tests);
    the kit's cleanup stops it and whatever the test started through the kit."""
    from coursekit import lesson

    monkeypatch.delenv("GOOGLE_GEMINI_BASE_URL", raising=False)
    lesson.cleanup()
    sim = lesson.setup(quiet=True)
    yield sim
    lesson.cleanup()


@pytest.fixture
def sim(simulator):
    """The session simulator with fresh counters; its config is restored after the test."""
    original = simulator.config()
    simulator.reset()
    yield simulator
    simulator.configure(**original)
    simulator.reset()


@dataclass(frozen=True)
class LessonRun:
    notebook: Path
    returncode: int
    output: str
    seconds: float


@pytest.fixture(scope="session")
def executed_lessons(tmp_path_factory, shared_trace_backend):
    """A copy of the course WITHOUT solutions/ (what an instructor hands out) whose ready lessons
    were each executed once, top to bottom, in place, against a simulator of their own (the
    lesson kit starts it). tests/test_notebooks.py asserts each run passed; tests/test_docs.py
    builds the site from the same executed notebooks, so `make test` runs every lesson once.
    The lessons' trace backend and their self-checks' grading runs attach to the session's shared
    MLflow (`shared_trace_backend`) instead of starting one each."""
    import solutionless

    from coursekit import manifest

    copy = solutionless.copy_without_solutions(tmp_path_factory.mktemp("lessons") / "course")
    runs: dict[str, LessonRun] = {}
    for step in (s for s in manifest.load().steps if s.status == "ready"):
        nb = copy / "steps" / step.folder / step.notebook
        env = solutionless.env(copy)
        if shared_trace_backend is not None:
            from coursekit import tracing

            env[tracing.SHARED_URL_ENV] = shared_trace_backend.url
        for key in ("GOOGLE_GEMINI_BASE_URL", "GOOGLE_API_KEY"):
            env.pop(key, None)
        started = time.monotonic()
        if not nb.exists():
            runs[step.id] = LessonRun(nb, -1, f"steps/{step.folder}/{step.notebook} 가 없습니다", 0.0)
            continue
        proc = subprocess.run(
            [sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute", "--inplace",
             "--ExecutePreprocessor.timeout=300", "--ExecutePreprocessor.kernel_name=python3", nb.name],
            cwd=nb.parent, env=env, capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL,
        )
        runs[step.id] = LessonRun(nb, proc.returncode, proc.stdout + proc.stderr, time.monotonic() - started)
    return copy, runs


DOCS_BUILD_TIMEOUT_S = 540


def docs_env() -> dict[str, str]:
    env = dict(os.environ)
    env["NO_MKDOCS_2_WARNING"] = "1"
    env.pop("COURSE_DOCS_CACHE", None)  # never reuse a cache of an earlier build in tests
    return env


@pytest.fixture(scope="session")
def site(tmp_path_factory, executed_lessons) -> Path:
    """The docs site (`mkdocs build --strict`) from the executed, solution-less copy: built once per session for
    tests/test_docs.py (browser, pages) and tests/test_secrets_scan.py (no key in any built file)."""
    import solutionless

    copy, runs = executed_lessons
    failed = [sid for sid, run in runs.items() if run.returncode != 0]
    if failed:
        pytest.fail(f"레슨 실행이 실패해서 사이트를 만들 수 없습니다: {', '.join(failed)} "
                    "(tests/test_notebooks.py 의 실패 내용을 보세요)", pytrace=False)
    out = tmp_path_factory.mktemp("docs") / "site"
    started = time.monotonic()
    env = solutionless.env(copy, docs_env())
    # The lessons in the copy already ran once (with outputs); the build shows those outputs.
    env["COURSE_DOCS_EXECUTE"] = "false"
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=copy,
        env=env,
        capture_output=True,
        text=True,
        timeout=DOCS_BUILD_TIMEOUT_S,
        check=False,
    )
    elapsed = time.monotonic() - started
    if proc.returncode != 0:
        pytest.fail(
            f"solutions/ 가 없는 사본에서 mkdocs build --strict 실패 (종료 코드 {proc.returncode}, "
            f"{elapsed:.1f}초)\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}",
            pytrace=False,
        )
    print(f"\n문서 빌드 (solutions/ 없는 사본, 실행된 레슨): {elapsed:.1f}초 -> {out}")
    return out
