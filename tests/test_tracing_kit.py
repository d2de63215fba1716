"""The real MLflow trace backend of step 05 (coursekit.tracing): started once for the module,
spans posted by the real OpenTelemetry OTLP/HTTP exporter (configured only by the standard env vars
`MLflowServer.env()` gives a service) come back through MLflow's REST API with their GenAI
attributes, and MLflow aggregates the token usage. Skipped with a Korean note when `.venv-mlflow`
is missing (make tracing-backend); failing instead under COURSE_REQUIRE_TOOLS=1 (CI)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from coursekit import tracing

# A separate process, as a service would be: it knows only the OTEL_* env vars.
EXPORTER = textwrap.dedent('''
    import json, sys
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.trace import Status, StatusCode

    tp = TracerProvider(resource=Resource.create({"service.name": "llm-chat"}))
    tp.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    tracer = tp.get_tracer("test")
    with tracer.start_as_current_span("POST /chat") as root:
        root.set_attribute("http.route", "/chat")
        with tracer.start_as_current_span("chat gemini-2.5-flash") as failed:
            failed.set_attributes({"gen_ai.operation.name": "chat", "gen_ai.provider.name": "gcp.gemini",
                                   "gen_ai.request.model": "gemini-2.5-flash", "error.type": "503"})
            failed.set_status(Status(StatusCode.ERROR))
        with tracer.start_as_current_span("chat gemini-2.5-flash") as ok:
            ok.set_attributes({"gen_ai.operation.name": "chat", "gen_ai.provider.name": "gcp.gemini",
                               "gen_ai.request.model": "gemini-2.5-flash",
                               "gen_ai.usage.input_tokens": 12, "gen_ai.usage.output_tokens": 34})
    tp.shutdown()
    print(json.dumps({"trace_id": format(root.get_span_context().trace_id, "032x"),
                      "root": format(root.get_span_context().span_id, "016x")}))
''')


@pytest.fixture(scope="module")
def mlflow():
    tracing.require_backend("step 05 의 추적 백엔드 테스트")
    with tracing.MLflowServer(experiment="kit-test", share=False) as server:
        print(f"MLflow 시작: {server.startup_seconds} s")
        yield server
    assert not server.alive


def _post_spans(env: dict[str, str]) -> dict[str, str]:
    proc = subprocess.run([sys.executable, "-c", EXPORTER], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_env_is_the_standard_exporter_configuration(mlflow):
    env = mlflow.env()
    assert env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] == f"{mlflow.url}/v1/traces" == mlflow.otlp_endpoint
    assert env["OTEL_EXPORTER_OTLP_TRACES_HEADERS"] == f"x-mlflow-experiment-id={mlflow.experiment_id}"
    assert mlflow.otlp_headers == {"x-mlflow-experiment-id": mlflow.experiment_id}
    assert mlflow.url.startswith("http://127.0.0.1:")


def test_span_posted_over_otlp_comes_back_with_genai_attributes(mlflow):
    ids = _post_spans(mlflow.env())
    trace = mlflow.wait_for_trace(ids["trace_id"], spans=3, timeout=30)
    assert trace["otel_trace_id"] == ids["trace_id"] and trace["experiment_id"] == mlflow.experiment_id
    assert trace["tags"]["service.name"] == "llm-chat"
    # MLflow adds up gen_ai.usage.* of the LLM spans into the trace's token usage
    assert trace["token_usage"] == {"input_tokens": 12, "output_tokens": 34, "total_tokens": 46}
    spans = trace["spans"]
    assert [s["name"] for s in spans] == ["POST /chat", "chat gemini-2.5-flash", "chat gemini-2.5-flash"]
    root, failed, ok = spans
    assert root["parent_span_id"] is None and root["span_id"] == ids["root"]
    assert {failed["parent_span_id"], ok["parent_span_id"]} == {ids["root"]}
    assert all(s["trace_id"] == ids["trace_id"] for s in spans)
    assert ok["attributes"]["gen_ai.usage.input_tokens"] == 12
    assert ok["attributes"]["gen_ai.usage.output_tokens"] == 34
    assert ok["attributes"]["gen_ai.request.model"] == "gemini-2.5-flash"
    assert ok["attributes"]["gen_ai.provider.name"] == "gcp.gemini"
    assert failed["attributes"]["error.type"] == "503" and "gen_ai.usage.input_tokens" not in failed["attributes"]
    assert failed["status"].get("code") == "STATUS_CODE_ERROR"
    # the same trace is listed, and spans() answers the same list by either id form
    assert ids["trace_id"] in [t["otel_trace_id"] for t in mlflow.traces()]
    assert [s["span_id"] for s in mlflow.spans("tr-" + ids["trace_id"])] == [s["span_id"] for s in spans]


def test_unknown_trace_and_wrong_experiment(mlflow):
    assert mlflow.trace("0" * 31 + "1") is None and mlflow.spans("0" * 31 + "1") == []
    with pytest.raises(tracing.TracingError, match="오지 않았습니다"):
        mlflow.wait_for_trace("0" * 31 + "2", timeout=0.5)
    other = mlflow.create_experiment("kit-test-other")
    assert mlflow.traces(other) == []


def test_stopped_by_pid_with_its_children(mlflow):
    """Last test of the module: stop the module's server, its whole process group goes."""
    pid, folder = mlflow.pid, mlflow.folder
    assert mlflow in tracing.running()
    mlflow.stop()
    assert not mlflow.alive and mlflow not in tracing.running() and not folder.exists()
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)  # no process of its group is left (uvicorn worker, job runner)
