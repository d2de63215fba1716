"""The step 05 lesson kit (`coursekit.lesson_logging`) and its demo service faq-widget (step 05 edition):
one JSON line per request for every outcome, X-Request-ID validated/returned/propagated, one LLM span per
attempt in a real MLflow, Sentry events scrubbed and sent once per failed request, the Fernet vault's
show/rotate, and cleanup by PID."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
import pytest
from cryptography.fernet import Fernet

from coursekit import lesson
from coursekit import lesson_logging as ll


def _requests(svc):
    return [l for l in ll.log_lines(svc) if l.get("event") == "request"]


def test_one_json_line_per_request_and_request_ids(own_sim):
    key = Fernet.generate_key().decode()
    widget = ll.start_widget({"WIDGET_PROMPT_KEYS": key})
    h = {"X-API-Key": ll.WIDGET_KEY}
    sent = [
        httpx.post(widget.url + "/ask", json={"q": "요금제가 어떻게 돼요?"}, headers={**h, "X-Request-ID": "valid-id-0001"}),
        httpx.post(widget.url + "/ask", json={"q": "요금제?"}, headers={**h, "X-Request-ID": "a" * 65}),
        httpx.post(widget.url + "/ask", json={"q": "요금제?"}, headers={"X-Request-ID": "bad id"}),
        httpx.get(widget.url + "/nope", headers=h),
        httpx.post(widget.url + "/ask", json={"question": "?"}, headers=h),
    ]
    with lesson.sim_faults(error_503_rate=1.0):
        sent.append(httpx.post(widget.url + "/ask", json={"q": "요금제?"}, headers=h, timeout=30))
    httpx.get(widget.url + "/healthz")  # sampled out
    assert [r.status_code for r in sent] == [200, 200, 401, 404, 422, 502]
    ids = [r.headers["X-Request-ID"] for r in sent]
    assert ids[0] == "valid-id-0001"
    assert all(ll.REQUEST_ID.fullmatch(i) for i in ids) and len(set(ids)) == len(ids)
    lines = _requests(widget)
    assert [l["request_id"] for l in lines] == ids            # exactly one line each, in order, none for /healthz
    assert [l["status"] for l in lines] == [200, 200, 401, 404, 422, 502]
    assert lines[0]["route"] == "/ask" and lines[3]["route"] == "<unmatched>"
    assert lines[0]["input_tokens"] > 0 and lines[0]["cost_usd"] > 0 and lines[0]["attempts"] == 1
    assert lines[5]["attempts"] == 3 and lines[5]["error_code"] == "upstream_error" and lines[5]["level"] == "error"
    assert all(len(l["trace_id"]) == 32 for l in lines)
    # every stdout line is JSON (uvicorn's own lines folded), no access-log line
    out = ll.stdout_lines(widget)
    assert out and all(ll.is_json(s) for s in out)
    assert not any('"POST /ask HTTP/1.1"' in s for s in out)
    # upstream saw the request id on every attempt
    assert own_sim.stats()["by_request_id"].get(ids[5]) == 3
    # nothing secret or prompt-like in the logs; the vault decrypts and rotates
    logs = (ll.log_dir(widget) / "app.jsonl").read_text(encoding="utf-8")
    assert not ll.leaks(logs, ll.WIDGET_KEY, "요금제가 어떻게 돼요?")
    vault = ll.log_dir(widget) / "prompts.jsonl"
    assert "요금제" not in vault.read_text(encoding="utf-8")
    env = {**os.environ, "WIDGET_LOG_DIR": str(ll.log_dir(widget))}
    run = lambda *a, keys: subprocess.run([sys.executable, "vault.py", *a], cwd=widget.cwd, capture_output=True,
                                          text=True, env={**env, "WIDGET_PROMPT_KEYS": keys})
    assert json.loads(run("show", "valid-id-0001", keys=key).stdout)[0]["q"] == "요금제가 어떻게 돼요?"
    new = Fernet.generate_key().decode()
    assert run("rotate", keys=f"{new},{key}").returncode == 0
    assert json.loads(run("show", "valid-id-0001", keys=new).stdout)[0]["q"] == "요금제가 어떻게 돼요?"
    assert run("show", "valid-id-0001", keys=key).returncode != 0    # the old key alone no longer reads it


def test_access_log_on_is_a_second_line(own_sim):
    noisy = ll.start_widget({"WIDGET_UVICORN_ACCESS": "1"}, name="noisy")
    before = len(ll.stdout_lines(noisy))
    httpx.get(noisy.url + "/nope")
    import time
    time.sleep(0.3)
    assert len(ll.stdout_lines(noisy)) - before == 2


def test_spans_per_attempt_in_mlflow_and_one_scrubbed_sentry_event(own_sim):
    from coursekit import tracing

    if tracing.find_backend() is None:
        pytest.skip(tracing.missing_note())
    mlflow = ll.start_tracing()
    sentry, smith = ll.start_receivers()
    widget = ll.start_widget({**mlflow.env(), "WIDGET_SENTRY_DSN": sentry.dsn, **smith.env(project="faq-widget"),
                              "LANGSMITH_HIDE_INPUTS": "true", "LANGSMITH_HIDE_OUTPUTS": "true"})
    own_sim.reset()
    with lesson.sim_faults(error_503_rate=1.0):
        r = httpx.post(widget.url + "/ask", json={"q": "비밀 질문 7788"}, timeout=30,
                       headers={"X-API-Key": ll.WIDGET_KEY, "X-Request-ID": "failing-0001"})
    ok = httpx.post(widget.url + "/ask", json={"q": "요금제가 어떻게 돼요?"}, headers={"X-API-Key": ll.WIDGET_KEY})
    assert r.status_code == 502 and ok.status_code == 200
    line = next(l for l in _requests(widget) if l["request_id"] == "failing-0001")
    trace = mlflow.wait_for_trace(line["trace_id"], spans=4, timeout=60)
    llm = [s for s in trace["spans"] if s["name"] == "chat gemini-3.5-flash"]
    assert len(llm) == 3 == own_sim.stats()["by_request_id"]["failing-0001"]
    assert all(s["attributes"]["error.type"] == "upstream_error" for s in llm)
    assert all(s["attributes"]["gen_ai.provider.name"] == "gcp.gemini" for s in llm)
    events = sentry.wait_for_events(1)
    assert len(events) == 1 and events[0]["tags"]["request_id"] == "failing-0001"
    assert not ll.leaks(ll.sent_text(sentry), ll.WIDGET_KEY, "비밀 질문 7788")
    smith.wait_for_runs(4)
    assert not ll.leaks(ll.sent_text(smith), "비밀 질문 7788", "요금제가 어떻게 돼요?")
    pids = [widget.pid, mlflow.pid]
    lesson.cleanup()
    assert not mlflow.alive and not sentry.alive
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_demo_code_repeats_no_step05_solution_line():
    """The lesson shows the demo's code; on the site it must not print an answer line of solutions/05-logging
    (tests/test_docs.py checks the built site only once the lesson is executed there)."""
    import solutionless

    answers = {src: lines for src, lines in solutionless.distinctive_solution_lines().items() if "05-logging" in src}
    if not answers:
        pytest.skip("solutions/05-logging 가 없습니다 (강사용 사본)")
    demo = {p.name: solutionless._norm(p.read_text(encoding="utf-8")) for p in ll.DEMO_SOURCE.glob("*.py")}
    found = [(name, src, line) for name, text in demo.items() for src, lines in answers.items() for line in lines if line in text]
    assert not found, found
