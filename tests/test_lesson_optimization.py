"""The step 06 lesson kit (`coursekit.lesson_optimization`) and its demo faq-widget (step 06 edition): the
deadline holds under upstream 503s, the fallback answers marked when the primary is down, odd upstream answers
are JSON (never 500) after the fix, and a Redis-backed limit holds across two replicas where memory doubles it."""

from __future__ import annotations

import httpx
import pytest

from coursekit import lesson
from coursekit import lesson_optimization as lo


def test_deadline_and_marked_fallback(own_sim):
    robust = lo.start_widget({"WIDGET_DEADLINE": "1.5"}, name="robust")
    fb = lo.start_widget({"WIDGET_FALLBACK": "gemini-3.5-flash-lite", "WIDGET_BREAKER": "3"}, name="fb")
    with lesson.sim_faults(error_503_rate=1.0, fault_models=["gemini-3.5-flash"]):
        down = lo.load(robust.url, users=2, requests=4)
        marked = lo.load(fb.url, users=2, requests=6)
    assert down.statuses == {503: 4} and max(down.latencies) < 2.0
    assert marked.statuses == {200: 6} and {r[4] for r in marked.rows} == {"gemini-3.5-flash-lite"}
    assert all(h.get("x-fallback") == "gemini-3.5-flash-lite" for h in marked.headers)


def test_odd_answers_are_json_after_and_500_before(own_sim):
    naive = lo.start_widget({"WIDGET_RETRY": "sdk"}, name="naive")
    robust = lo.start_widget({}, name="robust")
    with lesson.sim_faults(malformed_rate=1.0):
        before = httpx.post(naive.url + "/ask", json={"q": "요금제?"}, headers={"X-API-Key": lo.WIDGET_KEY}, timeout=10)
        after = httpx.post(robust.url + "/ask", json={"q": "요금제?"}, headers={"X-API-Key": lo.WIDGET_KEY}, timeout=10)
    assert before.status_code == 500
    assert after.status_code == 502 and after.json() == {"code": "upstream_malformed"}


def test_limit_in_memory_doubles_with_two_replicas_redis_holds(own_sim):
    redis = lo.start_redis()
    env = {"WIDGET_RATE_LIMIT": "5/minute"}
    for url, expected in (("", 10), (redis.url, 5)):
        reps = [lo.start_widget({**env, "WIDGET_REDIS_URL": url}, name="rl") for _ in range(2)]
        ok = sum(httpx.post(reps[i % 2].url + "/ask", json={"q": "요금제?"}, headers={"X-API-Key": lo.WIDGET_KEY}).status_code == 200
                 for i in range(20))
        assert ok == expected
        for r in reps:
            r.stop(grace=1)


def test_lesson_and_demo_repeat_no_step06_solution_line():
    """The lesson shows the demo's code and an nginx fragment; on the site neither may print an answer line of
    solutions/06-optimization (tests/test_docs.py flagged five nginx lines and one asyncio line before)."""
    import json

    import solutionless

    answers = {src: lines for src, lines in solutionless.distinctive_solution_lines().items() if "06-optimization" in src}
    if not answers:
        pytest.skip("solutions/06-optimization 가 없습니다 (강사용 사본)")
    nb = json.loads((lo.DEMO_SOURCE.parents[2] / "steps" / "06-optimization" / "lesson.ipynb").read_text(encoding="utf-8"))
    shown = {"lesson.ipynb": "\n".join("".join(c["source"]) for c in nb["cells"])}
    shown.update({p.name: p.read_text(encoding="utf-8") for p in lo.DEMO_SOURCE.glob("*.py")})
    flat = {name: " ".join(solutionless._norm(line) for line in text.splitlines()) for name, text in shown.items()}
    found = [(name, src, line) for name, text in flat.items() for src, lines in answers.items() for line in lines if line in text]
    assert not found, found


def test_every_step06_check_has_a_self_check_cell_in_its_section():
    """Each §N that a step06 check's hint names ends with `lesson.self_check(step="step06", section=N)`, inside §N
    (before the next heading); together the cells grade every step06 check of the manifest."""
    import json
    import re

    from coursekit import manifest

    nb = json.loads((lo.DEMO_SOURCE.parents[2] / "steps" / "06-optimization" / "lesson.ipynb").read_text(encoding="utf-8"))
    section, graded = None, {}
    for cell in nb["cells"]:
        text = "".join(cell["source"])
        heading = re.match(r"## §(\d+) ", text) if cell["cell_type"] == "markdown" else None
        if heading:
            section = int(heading.group(1))
        for n in re.findall(r'self_check\(step="step06", section=(\d+)', text) if cell["cell_type"] == "code" else []:
            assert int(n) == section, f"§{n} 의 셀프 체크가 §{section} 안에 있습니다"
            graded.update({cid: int(n) for cid in lesson.section_checks("step06", n)})
    assert set(graded) == {c.id for c in manifest.load().step("step06").checks}
    assert graded["step06.graceful"] == 8 and graded["step06.tls"] == 9 and graded["step06.redis_outage"] == 5


def test_rolling_restart_behind_nginx_fails_no_request(own_sim):
    """§8's demo: two replicas (same ports after a restart) behind nginx with fail_timeout=2s, a small load, and a
    rolling restart that takes each replica out of nginx's rotation before its SIGTERM and puts it back once it is
    ready again: every request answered 200."""
    import threading

    fragment = ("upstream w { server ${REPLICA_1} max_fails=1 fail_timeout=2s; server ${REPLICA_2} max_fails=1 fail_timeout=2s; }\n"
                "server { listen 127.0.0.1:${HTTP_PORT}; location / { proxy_pass http://w; proxy_next_upstream error timeout; } }\n")
    rs = lo.start_replicas({}, name="rolling")
    lb = lo.start_balancer(fragment, rs)
    finished, started, waited = threading.Event(), threading.Event(), []

    def roll(elapsed):
        if elapsed > 0.3 and not started.is_set():
            started.set()
            rs.rolling_restart(balancer=lb, after=lambda i, t: waited.append(t))
            finished.set()

    run = lo.load(lb.http_url, users=3, seconds=30, pause=0.1, during=roll, until=finished,   # a small load, as in §8
                  keepalive=False)
    assert finished.is_set() and run.seconds < 25, run.summary()
    assert [r.starts for r in rs.replicas] == [2, 2] and len(waited) == 2
    assert run.statuses == {200: len(run.rows)} and len(run.rows) > 10, run.summary()
