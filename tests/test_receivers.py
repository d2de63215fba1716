"""The Sentry and LangSmith stand-ins (coursekit.receivers) against the real clients: sentry_sdk
and the langsmith client / LangChain tracing, each in its own process configured only by the
documented environment variables, as a service would be."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import textwrap

import httpx
import pytest
from langsmith import schemas

from coursekit.receivers import LangSmithReceiver, SentryReceiver, decode_body, parse_envelope

PROMPT = "비밀 질문 하늘클라우드 요금제"


def _run(code: str, env: dict[str, str]) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("LANGSMITH_", "LANGCHAIN_", "SENTRY_"))}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env={**clean, **env},
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


# ---------------------------------------------------------------------------------- Sentry
SENTRY_APP = '''
    import os, sentry_sdk
    algo = os.environ["ALGO"]
    experiments = {"transport_compression_algo": algo} if algo in ("gzip", "br") else {}
    if algo == "plain":
        experiments = {"transport_compression_level": 0}
    sentry_sdk.init(dsn=os.environ["SENTRY_DSN"], send_default_pii=False, _experiments=experiments)
    sentry_sdk.set_tag("request_id", "req-abcdef12")
    try:
        raise RuntimeError("upstream 503")
    except RuntimeError as exc:
        sentry_sdk.capture_exception(exc)
    sentry_sdk.flush(10)
'''


@pytest.mark.parametrize("algo", ["default", "gzip", "plain"])
def test_sentry_sdk_event_arrives_parsed_and_raw(algo):
    with SentryReceiver() as sentry:
        assert sentry.dsn == f"http://coursekey@127.0.0.1:{sentry.port}/1"
        _run(SENTRY_APP, {"SENTRY_DSN": sentry.dsn, "ALGO": algo})
        events = sentry.wait_for_events(1, timeout=5)
        assert len(events) == 1
        event = events[0]
        assert event["tags"]["request_id"] == "req-abcdef12"
        assert event["exception"]["values"][-1]["type"] == "RuntimeError"
        raw = [r for r in sentry.raw() if r.path.startswith("/api/1/envelope")]
        assert raw and all(r.method == "POST" for r in raw)
        expected = {"default": "br", "gzip": "gzip", "plain": ""}[algo]   # brotli is installed: the SDK's default
        assert raw[0].content_encoding == expected
        if expected:
            assert raw[0].body != raw[0].decoded()            # raw() is the compressed bytes as sent
        assert parse_envelope(raw[0].decoded())["header"]["event_id"] == event["event_id"]


def test_sentry_store_endpoint_plain_and_gzip_and_unknown_paths():
    event = {"event_id": "a" * 32, "message": "hello", "tags": {"request_id": "r-12345678"}}
    with SentryReceiver(project_id=7) as sentry, httpx.Client() as http:
        base = f"http://127.0.0.1:{sentry.port}"
        assert http.post(f"{base}/api/7/store/", json=event).status_code == 200
        r = http.post(f"{base}/api/7/store/", content=gzip.compress(json.dumps(event).encode()),
                      headers={"Content-Encoding": "gzip"})
        assert r.status_code == 200 and r.json()["id"] == "a" * 32
        assert http.post(f"{base}/api/8/store/", json=event).status_code == 404   # another project
        assert http.get(f"{base}/api/7/store/").status_code == 404
        assert [e["tags"] for e in sentry.events()] == [event["tags"]] * 2
        assert len(sentry.raw()) == 2 and sentry.raw()[1].body[:2] == b"\x1f\x8b"
        sentry.clear()
        assert sentry.events() == [] and sentry.raw() == []


def test_parse_envelope_with_and_without_length():
    body = (b'{"event_id":"e1"}\n{"type":"event","length":13}\n{"message":1}\n'
            b'{"type":"attachment","length":3}\nab\n\n{"type":"session"}\n{"sid":"s"}\n')
    env = parse_envelope(body)
    assert env["header"] == {"event_id": "e1"}
    assert [i["header"]["type"] for i in env["items"]] == ["event", "attachment", "session"]
    assert env["items"][0]["payload"] == {"message": 1} and env["items"][1]["payload"] == b"ab\n"
    assert env["items"][2]["payload"] == {"sid": "s"}
    assert decode_body(gzip.compress(b"x"), "gzip") == b"x" and decode_body(b"x", None) == b"x"


# ---------------------------------------------------------------------------------- LangSmith
TRACEABLE_APP = '''
    from langsmith import Client, traceable

    client = Client()

    @traceable(client=client, name="chat")
    def chat(message):
        return {"answer": "답변: " + message}

    chat("''' + PROMPT + '''")
    client.flush()
'''

LANGCHAIN_APP = '''
    from langchain_core.runnables import RunnableLambda
    from langchain_core.tracers.langchain import wait_for_all_tracers

    RunnableLambda(lambda x: {"answer": "답변: " + x["message"]}, name="chat").invoke({"message": "''' + PROMPT + '''"})
    wait_for_all_tracers()
'''

PATCH_APP = '''
    import uuid, datetime
    from langsmith import Client

    client = Client(auto_batch_tracing=False)
    rid = uuid.uuid4()
    client.create_run("chat", {"message": "hi"}, "llm", id=rid)
    client.update_run(rid, outputs={"answer": "ok"}, end_time=datetime.datetime.now(datetime.timezone.utc))
    print(rid)
'''


def test_info_answers_what_the_client_expects():
    with LangSmithReceiver() as smith:
        info = httpx.get(smith.endpoint + "/info").json()
        parsed = schemas.LangSmithInfo(**info)
        assert parsed.batch_ingest_config["use_multipart_endpoint"] is True
        assert smith.raw() == []                                   # GET /info is not recorded


@pytest.mark.parametrize("options,route,encoding", [
    ({}, "/runs/multipart", "zstd"),
    ({"compression": False}, "/runs/multipart", ""),
    ({"multipart": False}, "/runs/batch", ""),
])
def test_langsmith_client_runs_arrive(options, route, encoding):
    with LangSmithReceiver(**options) as smith:
        env = smith.env()
        assert env["LANGSMITH_ENDPOINT"] == smith.endpoint and env["LANGSMITH_TRACING"] == "true"
        _run(TRACEABLE_APP, env)
        runs = smith.wait_for_runs(1, timeout=5)
        assert [r["name"] for r in runs] == ["chat"] and runs[0]["end_time"]
        assert runs[0]["inputs"] == {"message": PROMPT}
        assert runs[0]["outputs"] == {"answer": "답변: " + PROMPT}
        assert runs[0]["session_name"] == "llm-chat"
        assert {(r.method, r.path, r.content_encoding) for r in smith.raw()} == {("POST", route, encoding)}
        assert all(r.headers.get("x-api-key") == env["LANGSMITH_API_KEY"] for r in smith.raw())
        bodies = "".join(r.text() for r in smith.raw())
        assert PROMPT in bodies and env["LANGSMITH_API_KEY"] not in bodies   # the key only in the header


def test_langsmith_post_and_patch_runs_merge_by_id():
    with LangSmithReceiver() as smith:
        rid = _run(PATCH_APP, smith.env()).strip()
        assert [(r.method, r.path) for r in smith.raw()] == [("POST", "/runs"), ("PATCH", f"/runs/{rid}")]
        (run,) = smith.runs()
        assert run["id"] == rid and run["inputs"] == {"message": "hi"} and run["outputs"] == {"answer": "ok"}
        assert run["end_time"]
        assert [k for k, _ in smith.operations()] == ["post", "patch"]


@pytest.mark.parametrize("hide", [False, True])
def test_langchain_tracing_env_vars_and_hiding(hide):
    with LangSmithReceiver() as smith:
        env = smith.env(project="course-test")
        if hide:
            env |= {"LANGSMITH_HIDE_INPUTS": "true", "LANGSMITH_HIDE_OUTPUTS": "true"}
        _run(LANGCHAIN_APP, env)
        runs = smith.wait_for_runs(1, timeout=5)
        assert [r["name"] for r in runs] == ["chat"] and runs[0]["session_name"] == "course-test"
        bodies = "".join(r.text() for r in smith.raw())
        if hide:
            assert runs[0]["inputs"] == {} and runs[0]["outputs"] == {}
            assert PROMPT not in bodies and "답변" not in bodies
        else:
            assert runs[0]["inputs"] == {"message": PROMPT} and PROMPT in bodies


def test_unknown_langsmith_routes_are_404_and_not_recorded():
    with LangSmithReceiver() as smith, httpx.Client() as http:
        assert http.post(smith.endpoint + "/sessions", json={}).status_code == 404
        assert http.delete(smith.endpoint + "/runs/x").status_code in (404, 501)
        assert smith.raw() == [] and smith.runs() == []
    assert not smith.alive
