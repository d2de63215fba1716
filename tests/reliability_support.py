"""Helpers of the reliability suite (tests/test_reliability_*.py): each step's solution service started as the
graders start it (a copy of the folder, uvicorn on loopback, the course simulator behind it, non-default
settings), and a bounded, derandomized schemathesis run of one API operation."""

from __future__ import annotations

import json
from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis import checks as sc

ROOT = Path(__file__).resolve().parents[1]
SOLUTIONS = ROOT / "solutions"

# The one documented service key of the labs and examples (README, .env.example, `make lab`).
SERVICE_KEY = "lab-service-key"
GOOGLE_KEY = "sim-any-key"
MAX_EXAMPLES = 30          # per operation and generation mode (positive, negative)
REQUEST_TIMEOUT_S = 10.0   # every request is bounded: a hang is a failure, not a stuck suite

# What a response must satisfy: no 5xx, a documented status code, a documented content type, the documented
# body schema and headers. (schemathesis' defaults also include stateful/auth checks that need links or
# several credentials; these five are the contract checks the issue asks for.)
CHECKS = [sc.not_a_server_error, sc.status_code_conformance, sc.content_type_conformance,
          sc.response_schema_conformance, sc.response_headers_conformance]
# Negative cases (data that violates the schema) must also be rejected with a 4xx.
NEGATIVE_CHECKS = CHECKS + [sc.negative_data_rejection]


def service_env(step_folder: str, simulator_url: str, tmp: Path) -> dict[str, str]:
    """Settings of the step's service, non-default where the graders pin them (a model other than the default,
    a smaller message limit, a short upstream timeout); later steps' extra settings only where they exist."""
    env = {
        "SERVICE_API_KEY": SERVICE_KEY,
        "GOOGLE_API_KEY": GOOGLE_KEY,
        "GOOGLE_GEMINI_BASE_URL": simulator_url,
        "LLM_MODEL": "gemini-3.5-flash-lite",
        "LLM_TIMEOUT_SECONDS": "5",
        "LLM_MAX_ATTEMPTS": "2",
        "MAX_MESSAGE_CHARS": "1500",
    }
    if step_folder >= "04":
        env.update({"JUDGE_SAMPLE_RATE": "0", "DRIFT_WINDOW": "20"})
    if step_folder >= "05":
        env.update({"LOG_DIR": str(tmp / "service-logs"), "LOG_LEVEL": "WARNING"})
    if step_folder >= "06":
        # Fuzzing sends a few hundred requests with one key: a limit that a fuzz run cannot reach (the rate
        # limit itself is graded in grader/test_step06_optimization.py), fallback to a non-default model.
        env.update({"RATE_LIMIT": "100000/minute", "MAX_IN_FLIGHT": "200", "REQUEST_DEADLINE_SECONDS": "4",
                    "FALLBACK_MODEL": "gemini-2.0-flash-lite", "CIRCUIT_FAIL_MAX": "100"})
    return env


def load_schema(base_url: str):
    return schemathesis.openapi.from_url(base_url + "/openapi.json")


def operations(schema) -> dict[str, object]:
    """label ("POST /chat") -> APIOperation, for every operation of the schema."""
    return {op.label: op for op in (r.ok() for r in schema.get_all_operations())}


def has_inputs(op) -> bool:
    """Whether the operation takes anything negative cases could break (body or parameters)."""
    return bool(op.body or op.query or op.path_parameters or op.headers or op.cookies)


def content_type(response) -> str:
    """The Content-Type of a schemathesis Response (its headers map names to lists of values)."""
    values = response.headers.get("content-type") or [""]
    return values[0] if isinstance(values, list) else values


def sse_problem(text: str) -> str | None:
    """schemathesis has no schema for a `text/event-stream` body, so the stream's documented shape is checked
    here: every event's data is JSON, `delta` events carry {"text"}, and the stream ends with exactly one
    `done` (with response_id, model, usage) or `error` ({"error": {"code", "message"}}) event."""
    events = []
    for block in text.replace("\r\n", "\n").strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line and not line.startswith(":"))
        if "data" not in fields:
            continue
        try:
            data = json.loads(fields["data"])
        except ValueError:
            return f"SSE event data is not JSON: {fields['data'][:200]!r}"
        events.append((fields.get("event", "message"), data))
    if not events:
        return f"empty event stream: {text[:200]!r}"
    names = [name for name, _ in events]
    last, data = events[-1]
    if last not in ("done", "error") or names.count("done") + names.count("error") != 1:
        return f"the stream must end with one done or error event, got {names}"
    if any(name != "delta" or not isinstance(d.get("text"), str) for name, d in events[:-1]):
        return f"events before the last must be delta {{text}}: {names}"
    if last == "done" and not {"response_id", "model", "usage"} <= set(data):
        return f"done event without response_id/model/usage: {data}"
    if last == "error" and not {"code", "message"} <= set(data.get("error") or {}):
        return f"error event without error.code/message: {data}"
    return None


def fuzz(op, base_url: str, mode: GenerationMode, where: str, max_examples: int = MAX_EXAMPLES) -> dict[int, int]:
    """Run up to `max_examples` derandomized cases of `op` against the live service (the documented key in
    X-API-Key; negative cases may still drop or break it, and 401 is documented) and check each response. Returns {status: count}.
    A failure raises AssertionError naming `where`, the operation, the mode and schemathesis' report
    (which ends with the curl command that reproduces the case)."""
    seen: dict[int, int] = {}
    checks = NEGATIVE_CHECKS if mode is GenerationMode.NEGATIVE else CHECKS

    @settings(max_examples=max_examples, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck), report_multiple_bugs=False)
    @given(case=op.as_strategy(generation_mode=mode))
    def run(case):
        response = case.call(base_url=base_url, headers={"X-API-Key": SERVICE_KEY}, timeout=REQUEST_TIMEOUT_S)
        seen[response.status_code] = seen.get(response.status_code, 0) + 1
        case.validate_response(response, checks=checks)
        if response.status_code == 200 and content_type(response).startswith("text/event-stream"):
            problem = sse_problem(response.text)
            assert problem is None, f"{problem}\n\nReproduce with:\n\n    {case.as_curl_command()}"

    try:
        run()
    # schemathesis' FailureGroup is a BaseExceptionGroup; a timeout or a dropped connection is an OSError (requests).
    except (AssertionError, BaseExceptionGroup, OSError) as exc:
        raise AssertionError(f"{where} {op.label} ({mode.value} cases, statuses seen {seen}):\n{exc}") from None
    return seen
