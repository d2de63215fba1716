"""Reliability suite, part 1 (issue 17): property-based API fuzzing of every step's SOLUTION service from its own
OpenAPI schema (schemathesis), against the real uvicorn process on loopback with the course simulator behind it.

Per operation and generation mode (positive: valid per the schema; negative: violates it) a fixed number of
derandomized cases (`reliability_support.MAX_EXAMPLES`); every response must be a non-5xx with a documented
status code, content type, body schema and headers, and negative cases must be rejected with a 4xx. Each
request is bounded (`REQUEST_TIMEOUT_S`), so a hang fails the case instead of stalling the suite.

Streaming (`POST /chat/stream`, step 06): its 200 is `text/event-stream` without a JSON schema, so schemathesis
checks its status and content type but cannot check the events' bodies; `reliability_support.sse_problem` checks
the documented event shape instead (delta {text}..., then one done or error). Its error responses are checked
like every other operation's.

Each bug found has a minimal, hand-written reproduction (test_minimal_reproduction, xfail(strict=True)) that does
not depend on what the generator draws; the fuzz cases that run into it are xfail(strict=False) (see KNOWN).
"""

from __future__ import annotations

import pytest
import reliability_support as rs
from schemathesis import GenerationMode

from grader.harness import copy_step, run_service

POS, NEG = GenerationMode.POSITIVE, GenerationMode.NEGATIVE

# The operations each step's schema documents (a new endpoint must be added here: test_schema_operations_listed).
OPERATIONS = {
    "01-docker": ["GET /health", "POST /chat"],
    "02-fastapi": ["GET /health", "POST /chat"],
    "03-cicd": ["GET /health", "POST /chat"],
    "04-monitoring": ["GET /health", "POST /chat", "POST /feedback"],
    "05-logging": ["GET /health", "POST /chat", "POST /feedback"],
    "06-optimization": ["GET /health", "GET /ready", "POST /chat", "POST /feedback", "POST /chat/stream",
                        "POST /chat/batch", "GET /canary"],
}

# Known failures found by this suite (the lead decides; the owners' files are not edited here).
# Each has a minimal, hand-written reproduction below (MINIMAL) marked xfail(strict=True): once fixed, it passes
# and the mark must go. The fuzz cases that run into the same bug are xfail(strict=False): whether a derandomized
# run draws the failing input depends on the test code's digest (hypothesis seeds from it), so a strict mark there
# would flip with unrelated edits.
STEP01_500 = ("by design: the outline's quick-start app has no input validation: POST /chat?message= (empty) -> "
              "simulator 400 -> unhandled exception -> 500 (solutions/01-docker/main.py:23 `llm.invoke(message)`); "
              "step 02 fixes it")
# FastAPI's built-in body limit (max_body_size) answers a declared Content-Length over the limit with its own
# text/plain "Content Too Large" before the app's exception handlers (grader/test_step02_fastapi.py says so and
# checks the JSON shape only for chunked bodies); a negative run that draws a body over 64 KiB meets it.
BODY_LIMIT_413 = ("FastAPI's max_body_size answers a Content-Length over 64 KiB with text/plain 413 before the app's "
                  "handlers (framework behaviour, see grader step02.validation), not the documented ErrorResponse")
KNOWN = {
    ("01-docker", "POST /chat", POS): STEP01_500,
    ("01-docker", "POST /chat", NEG): STEP01_500,
    ("06-optimization", "POST /chat/batch", NEG): BODY_LIMIT_413,
}


def cases():
    for step, ops in OPERATIONS.items():
        for label in ops:
            for mode in (POS, NEG):
                marks = []
                if (step, label, mode) in KNOWN:
                    marks.append(pytest.mark.xfail(strict=False, reason=KNOWN[step, label, mode]))
                yield pytest.param(step, label, mode, id=f"{step}-{label.replace(' ', '')}-{mode.value}",
                                   marks=marks)


@pytest.fixture(scope="module")
def services(simulator, tmp_path_factory):
    """One running solution service per step (started on first use, stopped by PID at module end)."""
    from contextlib import ExitStack

    started: dict[str, tuple] = {}
    with ExitStack() as stack:
        def get(step: str):
            if step not in started:
                root = tmp_path_factory.mktemp(f"reliability-{step}")
                folder = copy_step(rs.SOLUTIONS / step, root)
                svc = stack.enter_context(run_service(folder, env=rs.service_env(step[:2], simulator.base_url, root),
                                                      name=f"{step} (reliability)"))
                started[step] = (svc, rs.operations(rs.load_schema(svc.base_url)))
            return started[step]

        yield get


@pytest.mark.parametrize("step", list(OPERATIONS))
def test_schema_operations_listed(services, step):
    _, ops = services(step)
    assert sorted(ops) == sorted(OPERATIONS[step]), f"{step}: update OPERATIONS for the schema's operations"


@pytest.mark.parametrize("step, label, mode", list(cases()))
def test_fuzz_operation(services, simulator, step, label, mode):
    svc, ops = services(step)
    op = ops[label]
    if mode is NEG and not rs.has_inputs(op):
        pytest.skip(f"{label} takes no body or parameters: there is no invalid input to generate")
    simulator.reset(config=True)
    seen = rs.fuzz(op, svc.base_url, mode, where=f"solutions/{step}")
    assert svc.alive, f"solutions/{step}: the service died while fuzzing {label}:\n{svc.tail()}"
    assert seen, f"solutions/{step} {label}: no case was generated"


# Minimal reproductions of the known failures, checked by the same schemathesis checks; the same request against
# a step whose contract holds is the control (it must pass, so these cases can fail for the right reason only).
MINIMAL = [
    ("01-docker", "POST /chat", {"query": {"message": ""}}, KNOWN["01-docker", "POST /chat", POS]),
    ("01-docker", "POST /chat", {"query": {"message": "안녕하세요"}}, None),
    ("02-fastapi", "POST /chat", {"body": b"\x00"}, None),
    ("05-logging", "POST /chat", {"body": b"\x00"}, None),
    ("06-optimization", "POST /chat", {"body": b"\x00"}, None),
    ("06-optimization", "POST /chat/batch", {"body": {"messages": [" "]}}, None),
    ("06-optimization", "POST /chat/stream", {"body": {"message": "안녕하세요"}, "key": None},
     None),
    ("06-optimization", "POST /chat/stream", {"body": {"message": "안녕하세요"}}, None),
]


@pytest.mark.parametrize(
    "step, label, request_, reason",
    [pytest.param(*m, id=f"{m[0]}-{m[1].replace(' ', '')}-{i}",
                  marks=[pytest.mark.xfail(strict=True, reason=m[3])] if m[3] else []) for i, m in enumerate(MINIMAL)])
def test_minimal_reproduction(services, simulator, step, label, request_, reason):
    svc, ops = services(step)
    op = ops[label]
    body = request_.get("body")
    case = op.Case(body=body, media_type="application/json") if body is not None else op.Case(query=request_["query"])
    key = request_.get("key", rs.SERVICE_KEY)
    headers = {"X-API-Key": key} if key else {}
    simulator.reset(config=True)
    if isinstance(body, bytes):
        response = case.call(base_url=svc.base_url, headers={**headers, "Content-Type": "application/json"},
                             data=body, timeout=rs.REQUEST_TIMEOUT_S)
    else:
        response = case.call(base_url=svc.base_url, headers=headers, timeout=rs.REQUEST_TIMEOUT_S)
    try:
        case.validate_response(response, checks=rs.CHECKS)
    except (AssertionError, BaseExceptionGroup) as exc:
        raise AssertionError(f"solutions/{step} {label} {request_}:\n{exc}") from None
    if rs.content_type(response).startswith("text/event-stream"):
        assert rs.sse_problem(response.text) is None, rs.sse_problem(response.text)


def test_sse_check_can_fail():
    """The SSE body check used above accepts the documented stream and rejects broken ones."""
    ok = 'event: delta\r\ndata: {"text": "a"}\r\n\r\nevent: done\r\ndata: {"response_id": "x", "model": "m", "usage": {}}\r\n\r\n'
    assert rs.sse_problem(ok) is None
    assert rs.sse_problem('event: error\ndata: {"error": {"code": "upstream_timeout", "message": "..."}}\n\n') is None
    assert "not JSON" in rs.sse_problem("event: delta\ndata: {oops\n\n")
    assert "must end" in rs.sse_problem('event: delta\ndata: {"text": "a"}\n\n')  # stopped without done/error
    assert "must end" in rs.sse_problem(ok + ok.split("\r\n\r\n")[1] + "\r\n\r\n")  # two done events
    assert "without" in rs.sse_problem('event: done\ndata: {"model": "m"}\n\n')
    assert "empty" in rs.sse_problem("")
