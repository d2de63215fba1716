"""The lesson kit (`coursekit.lesson`): simulator discovery, fault contexts that always restore,
services started and stopped by PID, and the in-notebook self-check."""

from __future__ import annotations

import os
import shutil
import textwrap

import httpx
import pytest

from coursekit import REPO_ROOT, lesson
from coursekit.simulator import SimulatorProcess


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_setup_starts_own_simulator_once_and_cleanup_stops_it(own_sim):
    assert own_sim.own and own_sim.api_key == "sim-any-key"
    assert lesson.setup(quiet=True) is own_sim, "setup() twice must not start a second simulator"
    assert httpx.get(own_sim.base_url + "/_sim/health").status_code == 200
    pid = own_sim.pid
    lesson.cleanup()
    assert _gone(pid)


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt()], ids=["exception", "interrupt"])
def test_sim_faults_restores_previous_config(own_sim, exc):
    own_sim.configure(latency_scale=0.5)
    before = own_sim.config()
    with pytest.raises(type(exc)):
        with lesson.sim_faults(error_503_rate=1.0, hang_seconds=2) as sim:
            assert sim.config()["error_503_rate"] == 1.0
            raise exc
    assert own_sim.config() == before


def test_sim_faults_counts_what_the_client_sent(own_sim):
    own_sim.reset()
    with lesson.sim_faults(error_429_rate=1.0):
        r = httpx.post(own_sim.base_url + "/v1beta/models/gemini-3.5-flash:generateContent",
                       headers={"x-goog-api-key": own_sim.api_key},
                       json={"contents": [{"parts": [{"text": "안녕"}]}]})
    assert r.status_code == 429
    assert own_sim.upstream_calls() == 1


def test_setup_uses_course_lab_simulator_and_clears_left_faults(monkeypatch, capsys):
    lesson.cleanup()
    with SimulatorProcess(latency="zero") as shared:
        shared.configure(error_503_rate=1.0)  # an interrupted lesson left it in fault mode
        monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", shared.base_url)
        monkeypatch.setenv("GOOGLE_API_KEY", "sim-any-key")
        try:
            sim = lesson.setup()
            assert not sim.own and sim.base_url == shared.base_url
            assert shared.config()["error_503_rate"] == 0.0
            assert "장애 모드" in capsys.readouterr().out
            sim.configure(latency_scale=0.2)
        finally:
            lesson.cleanup()
        # cleanup restores the shared simulator's configuration and leaves it running
        assert shared.config()["latency_scale"] == 1.0
        assert shared.proc.poll() is None


DEMO = textwrap.dedent("""
    import os
    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/health")
    def health():
        return {"status": "ok", "base_url": os.environ["GOOGLE_GEMINI_BASE_URL"], "mode": os.environ["DEMO_MODE"]}
""")


def test_start_service_and_stop_by_pid(own_sim):
    app = lesson.workdir() / "demo_app.py"
    app.write_text(DEMO, encoding="utf-8")
    svc = lesson.start_service(app, env={"DEMO_MODE": "x"})
    body = httpx.get(svc.url + "/health").json()
    assert body == {"status": "ok", "base_url": own_sim.base_url, "mode": "x"}
    other = lesson.start_service(app.parent, module="demo_app", env={"DEMO_MODE": "y"})
    assert other.port != svc.port
    svc.stop()
    assert _gone(svc.pid) and other.alive
    lesson.cleanup()  # what atexit does
    assert _gone(other.pid)


def test_start_service_failure_shows_log_in_korean(own_sim):
    bad = lesson.workdir() / "broken.py"
    bad.write_text("raise RuntimeError('설정이 없습니다: SERVICE_API_KEY')\n", encoding="utf-8")
    with pytest.raises(lesson.LessonError, match="시작하자마자 종료") as info:
        lesson.start_service(bad, timeout=30)
    assert "SERVICE_API_KEY" in str(info.value), "the service log tail must be shown"
    with pytest.raises(lesson.LessonError, match="파일이 없습니다"):
        lesson.start_service(lesson.workdir(), module="nothing_here")


def test_self_check_passes_on_solutions(capsys):
    results = lesson.self_check("step02.health", "step02.auth", target=REPO_ROOT / "solutions")
    assert {cid: r["outcome"] for cid, r in results.items()} == {
        "step02.health": "passed", "step02.auth": "passed"}
    out = capsys.readouterr().out
    assert "셀프 체크: 2/2 통과" in out


def test_self_check_fails_on_a_broken_folder_with_korean_message(tmp_path, capsys):
    broken = tmp_path / "02-fastapi"
    shutil.copytree(REPO_ROOT / "solutions" / "02-fastapi", broken)
    (broken / "main.py").write_text(textwrap.dedent("""
        from fastapi import FastAPI

        app = FastAPI()

        @app.get("/health")
        def health():
            return {"status": "ok"}
    """), encoding="utf-8")
    results = lesson.self_check("step02.health", target=tmp_path)
    assert results["step02.health"]["outcome"] == "failed"
    out = capsys.readouterr().out
    assert "❌ step02.health" in out and "실패" in out
    assert "기대:" in out and "측정:" in out and "힌트: lesson.ipynb §7" in out


def test_self_check_rejects_unknown_ids():
    with pytest.raises(KeyError):
        lesson.self_check("step02.no_such_check")


def test_section_checks_follow_the_manifest_hints():
    from coursekit import manifest

    step = manifest.load().step("step02")
    by_section = {n: lesson.section_checks("step02", n) for n in range(0, 12)}
    assert sorted(c for ids in by_section.values() for c in ids) == sorted(c.id for c in step.checks), (
        "every step02 check's hint must name one lesson section (lesson.ipynb §N)")
    assert lesson.section_checks("step02", "§7") == lesson.section_checks("step02", 7)


READY = [s for s in __import__("coursekit.manifest", fromlist=["load"]).load().steps if s.status == "ready"]


@pytest.mark.parametrize("step", READY, ids=[s.id for s in READY])
def test_every_lesson_section_ends_with_its_self_check(step):
    """DESIGN §8.6: each lesson section with checks has a self-check cell grading exactly those checks,
    and no code cell reads solutions/."""
    import json
    import re

    nb = json.loads((REPO_ROOT / "steps" / step.folder / step.notebook).read_text(encoding="utf-8"))
    sections: dict[str, list[str]] = {}
    current = None
    for cell in nb["cells"]:
        src = "".join(cell["source"])
        if cell["cell_type"] == "markdown":
            for line in src.splitlines():
                m = re.match(r"^##\s+§\s*(\d+)\b", line)
                if m:
                    current = m.group(1)
                    sections.setdefault(current, [])
        elif current is not None:
            sections[current].append(src)
        if cell["cell_type"] == "code":
            assert not re.search(r"""["'/]solutions\b|\bsolutions["'/]""", src), (
                f"{step.notebook}: a lesson never reads solutions/:\n{src[:300]}")
    problems = []
    for n in sorted({*sections, *(str(i) for i in range(20) if lesson.section_checks(step.id, i))}, key=int):
        wanted = set(lesson.section_checks(step.id, n))
        if not wanted:
            continue
        cells = [c for c in sections.get(n, []) if "self_check(" in c]
        covered = set()
        for c in cells:
            if re.search(rf"section\s*=\s*['\"]?§?{n}\b", c):
                covered |= wanted
            covered |= {cid for cid in wanted if cid in c}
        if wanted - covered:
            problems.append(f"§{n}: 셀프 체크가 없는 항목 {sorted(wanted - covered)}")
    assert not problems, f"{step.id} {step.notebook}: " + "; ".join(problems)
