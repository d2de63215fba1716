"""05단계 단위 테스트: 요청당 JSON 로그 한 줄, X-Request-ID, 시도마다 LLM 스팬, Sentry, 프롬프트 암호화, 로그 조회.

LLM 은 가짜(conftest.FakeLLM 과 아래 FlakyLLM), 스팬은 메모리(InMemorySpanExporter), Sentry 는 코스 키트의 수신기
(coursekit.receivers.SentryReceiver: 진짜 sentry_sdk 가 보낸 그대로)로 받습니다. 네트워크 밖으로는 아무것도 안 나갑니다.
"""

import json
import os
import re
import tempfile

import pytest
from conftest import FakeLLM

# 서비스가 쓰는 로그 폴더: 이 폴더의 logs/ 가 아니라 임시 폴더 (main 을 처음 불러오기 전에 정해야 함).
os.environ.setdefault("LOG_DIR", tempfile.mkdtemp(prefix="llm-chat-logs-"))

HEADERS = {"X-API-Key": "test-service-key"}
QUESTION = "비밀 질문 qz7w: 요금제가 어떻게 되나요?"
REQUIRED = {"timestamp", "level", "event", "request_id", "trace_id", "span_id", "method", "route", "status", "latency_ms"}
CHAT_FIELDS = {"model", "prompt_version", "input_tokens", "output_tokens", "cost_usd", "attempts"}


@pytest.fixture
def spans(service):
    """main 의 TracerProvider 에 메모리 내보내기를 붙입니다 (테스트가 끝나면 비움)."""
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    if not hasattr(service, "_test_exporter"):
        service._test_exporter = InMemorySpanExporter()
        service.TRACER_PROVIDER.add_span_processor(SimpleSpanProcessor(service._test_exporter))
    service._test_exporter.clear()
    yield service._test_exporter
    service._test_exporter.clear()


@pytest.fixture
def log_dir(service, tmp_path):
    import observability

    observability.configure_logging(tmp_path, "INFO")
    yield tmp_path
    observability.configure_logging(service.settings.log_dir, service.settings.log_level)


def request_lines(log_dir):
    lines = [json.loads(x) for x in (log_dir / "app.jsonl").read_text(encoding="utf-8").splitlines()]
    return [x for x in lines if x.get("event") == "request"]


class FlakyLLM(FakeLLM):
    """처음 `failures` 번은 업스트림 503 (google.genai ServerError), 그 뒤에는 답."""

    def __init__(self, failures: int):
        super().__init__()
        self.failures = failures
        self.attempts = 0

    async def ainvoke(self, messages):
        from google.genai.errors import ServerError

        self.attempts += 1
        if self.attempts <= self.failures:
            raise ServerError(503, {"error": {"code": 503, "message": "overloaded", "status": "UNAVAILABLE"}})
        return await super().ainvoke(messages)


@pytest.fixture
def no_wait(service, monkeypatch):
    """재시도 사이의 대기(1~2초)를 없앱니다: 시도 횟수만 봅니다."""
    from tenacity import wait_none

    monkeypatch.setattr(service, "wait_exponential_jitter", lambda **kw: wait_none())


# --------------------------------------------------------------------------- 로그 한 줄 (§2)
def test_every_request_yields_exactly_one_json_line_with_the_response_request_id(client, log_dir):
    responses = [
        client.post("/chat", json={"message": QUESTION}, headers=HEADERS),          # 200
        client.post("/chat", json={"message": QUESTION}),                           # 401
        client.get("/no-such-path"),                                                 # 404
        client.post("/chat", content=b"x" * 70_000, headers={**HEADERS, "Content-Type": "application/json"}),  # 413
        client.post("/chat", json={"message": "   "}, headers=HEADERS),             # 422
    ]
    assert [r.status_code for r in responses] == [200, 401, 404, 413, 422]
    client.get("/health"), client.get("/metrics")  # 남기지 않음 (샘플링 0)
    lines = request_lines(log_dir)
    assert [x["status"] for x in lines] == [200, 401, 404, 413, 422]
    for r, line in zip(responses, lines):
        assert REQUIRED <= set(line), REQUIRED - set(line)
        assert line["request_id"] == r.headers["X-Request-ID"]
        assert re.fullmatch(r"[0-9a-f]{32}", line["trace_id"]) and re.fullmatch(r"[0-9a-f]{16}", line["span_id"])
        assert line["timestamp"].endswith("Z") and isinstance(line["latency_ms"], float)
    ok, unauthorized, missing, too_large, invalid = lines
    assert CHAT_FIELDS <= set(ok) and ok["route"] == "/chat" and ok["attempts"] == 1 and ok["level"] == "info"
    assert ok["cost_usd"] > 0 and ok["input_tokens"] > 0
    assert unauthorized["error_code"] == "unauthorized" and unauthorized["level"] == "warning"
    assert missing["route"] is None and missing["path"] == "/no-such-path" and missing["error_code"] == "not_found"
    assert too_large["error_code"] == "payload_too_large"
    assert invalid["error_code"] == "validation_error"


def test_log_holds_no_key_no_header_no_prompt_no_answer(client, log_dir, fake_llm):
    fake_llm.default = "비밀 답 qz9v"
    client.post("/chat", json={"message": QUESTION}, headers={**HEADERS, "Authorization": "Bearer tok-5b2d",
                                                               "Cookie": "session=ck-4a1f"})
    text = (log_dir / "app.jsonl").read_text(encoding="utf-8")
    for secret in ("test-service-key", "test-gemini-key", "tok-5b2d", "ck-4a1f", "qz7w", "qz9v"):
        assert secret not in text


def test_uvicorn_access_log_is_off():
    import logging

    import observability  # noqa: F401 (main 이 불러올 때 설정함)
    import main  # noqa: F401

    access = logging.getLogger("uvicorn.access")
    own = [h for h in access.handlers if not type(h).__name__.startswith(("LogCapture", "_LiveLogging"))]  # pytest 의 것
    assert own == [] and access.propagate is False


# --------------------------------------------------------------------------- 요청 ID (§3)
@pytest.mark.parametrize("supplied, kept", [
    ("req-2026.11_28-abc", True),
    ("a" * 64, True),
    ("a" * 65, False),          # 너무 긺
    ("short", False),           # 8자 미만
    ("bad id;<script>", False),  # 허용하지 않는 글자
    (None, False),
])
def test_request_id_is_kept_only_when_well_formed(client, log_dir, supplied, kept):
    headers = {**HEADERS, **({"X-Request-ID": supplied} if supplied is not None else {})}
    r = client.post("/chat", json={"message": QUESTION}, headers=headers)
    rid = r.headers["X-Request-ID"]
    if kept:
        assert rid == supplied
    else:
        assert rid != supplied and re.fullmatch(r"[0-9a-f]{32}", rid)
    (line,) = request_lines(log_dir)
    assert line["request_id"] == rid
    if supplied and not kept:
        assert supplied not in (log_dir / "app.jsonl").read_text(encoding="utf-8")


def test_upstream_request_carries_traceparent_of_the_attempt_span_and_request_id(service):
    import asyncio

    import httpx2
    import structlog

    import observability

    async def go():
        request = httpx2.Request("POST", "http://upstream.invalid/v1beta/models/x:generateContent")
        structlog.contextvars.bind_contextvars(request_id="req-upstream-1")
        try:
            with service.tracer.start_as_current_span("chat test") as span:
                await observability.add_upstream_headers(request)
                return request, span.get_span_context()
        finally:
            structlog.contextvars.unbind_contextvars("request_id")

    request, ctx = asyncio.run(go())
    assert request.headers["X-Request-ID"] == "req-upstream-1"
    assert request.headers["traceparent"].startswith(f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-")


# --------------------------------------------------------------------------- 추적 (§6)
def test_one_llm_span_per_attempt_under_retries(client, service, spans, log_dir, no_wait, monkeypatch):
    monkeypatch.setattr(service.settings, "llm_max_attempts", 3)
    flaky = FlakyLLM(failures=2)
    service.app.dependency_overrides[service.get_llm] = lambda: flaky
    r = client.post("/chat", json={"message": QUESTION}, headers=HEADERS)
    assert r.status_code == 200 and flaky.attempts == 3
    finished = spans.get_finished_spans()
    (server,) = [s for s in finished if s.kind.name == "SERVER"]
    llm = [s for s in finished if s.name == "chat gemini-3.5-flash"]
    assert len(llm) == 3
    assert all(s.parent.span_id == server.context.span_id and s.context.trace_id == server.context.trace_id for s in llm)
    assert [s.attributes.get("error.type") for s in llm] == ["upstream_error", "upstream_error", None]
    for s in llm:
        assert s.attributes["gen_ai.operation.name"] == "chat"
        assert s.attributes["gen_ai.provider.name"] == "gcp.gemini"
        assert s.attributes["gen_ai.request.model"] == "gemini-3.5-flash"
    usage = r.json()["usage"]
    assert llm[-1].attributes["gen_ai.usage.input_tokens"] == usage["input_tokens"]
    assert llm[-1].attributes["gen_ai.usage.output_tokens"] == usage["output_tokens"]
    assert server.resource.attributes["service.name"] == "llm-chat"
    (line,) = request_lines(log_dir)
    assert line["attempts"] == 3 and line["trace_id"] == f"{server.context.trace_id:032x}"
    assert QUESTION not in json.dumps([dict(s.attributes) for s in finished], ensure_ascii=False)


def test_attempts_stop_at_llm_max_attempts(client, service, spans, log_dir, no_wait, monkeypatch):
    monkeypatch.setattr(service.settings, "llm_max_attempts", 3)
    flaky = FlakyLLM(failures=99)
    service.app.dependency_overrides[service.get_llm] = lambda: flaky
    r = client.post("/chat", json={"message": QUESTION}, headers=HEADERS)
    assert r.status_code == 502 and flaky.attempts == 3
    assert len([s for s in spans.get_finished_spans() if s.name.startswith("chat ")]) == 3
    (line,) = request_lines(log_dir)
    assert line["attempts"] == 3 and line["error_code"] == "upstream_error" and line["level"] == "error"


def test_incoming_traceparent_is_continued(client, spans):
    trace_id, parent = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
    client.post("/chat", json={"message": QUESTION}, headers={**HEADERS, "traceparent": f"00-{trace_id}-{parent}-01"})
    (server,) = [s for s in spans.get_finished_spans() if s.kind.name == "SERVER"]
    assert f"{server.context.trace_id:032x}" == trace_id and f"{server.parent.span_id:016x}" == parent


def test_sdk_retries_are_off_so_attempts_are_not_multiplied(client, service):
    # 클라이언트도 재시도하면 서비스의 시도마다 또 시도합니다 (2 x 2 = 4번): 클라이언트는 시도 한 번 (max_retries=1).
    assert service.app.state.llm.max_retries == 1 and service.app.state.judge_llm.max_retries == 1


# --------------------------------------------------------------------------- Sentry (§9)
@pytest.fixture
def sentry(service):
    from coursekit.receivers import SentryReceiver

    import observability

    with SentryReceiver() as receiver:
        observability.init_sentry(receiver.dsn, secrets=["test-service-key", "test-gemini-key"])
        yield receiver
        import sentry_sdk

        sentry_sdk.flush(2)
        observability.init_sentry(None, secrets=["test-service-key", "test-gemini-key"])


def test_one_scrubbed_sentry_event_per_failed_upstream_chat(client, service, sentry, no_wait, monkeypatch):
    import sentry_sdk

    monkeypatch.setattr(service.settings, "llm_max_attempts", 3)
    service.app.dependency_overrides[service.get_llm] = lambda: FlakyLLM(failures=99)
    failed = client.post("/chat", json={"message": QUESTION},
                         headers={**HEADERS, "Authorization": "Bearer tok-5b2d", "Cookie": "s=ck-4a1f"})
    service.app.dependency_overrides[service.get_llm] = lambda: FakeLLM()
    ok = client.post("/chat", json={"message": QUESTION}, headers=HEADERS)
    client.post("/chat", json={"message": QUESTION})  # 401: 이벤트 없음
    assert (failed.status_code, ok.status_code) == (502, 200)
    options = sentry_sdk.get_client().options
    assert options["send_default_pii"] is False and options["include_local_variables"] is False
    assert options["before_send"] is not None
    sentry_sdk.flush(5)
    events = sentry.wait_for_events(1, timeout=5)
    assert len(events) == 1  # 시도마다(3번)가 아니라 실패한 요청마다
    assert events[0]["tags"]["request_id"] == failed.headers["X-Request-ID"]
    raw = "".join(r.text() for r in sentry.raw())
    for secret in ("test-service-key", "test-gemini-key", "tok-5b2d", "ck-4a1f", "qz7w", "Authorization"):
        assert secret not in raw


def test_scrub_removes_headers_bodies_and_keys():
    import observability

    observability._secrets[:] = ["k-123456"]
    event = {"request": {"headers": {"Authorization": "x"}, "cookies": "c", "data": "질문", "url": "http://s/chat"},
             "extra": {"note": "key k-123456 here", "x-api-key": "v"}}
    out = observability.scrub(event, {})
    assert out["request"] == {"url": "http://s/chat"}
    assert out["extra"] == {"note": "key [Filtered] here", "x-api-key": "[Filtered]"}


# --------------------------------------------------------------------------- LangSmith (§8)
def test_langsmith_hides_inputs_and_outputs(service):
    import os

    assert os.environ["LANGSMITH_HIDE_INPUTS"] == "true" and os.environ["LANGSMITH_HIDE_OUTPUTS"] == "true"


# --------------------------------------------------------------------------- 프롬프트 암호화 (§4)
def test_prompt_store_encrypts_decrypts_and_rotates(tmp_path, monkeypatch, capsys):
    from cryptography.fernet import Fernet

    import prompt_store

    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    prompt_store.append(tmp_path, prompt_store.keyring(old), "req-00000001", QUESTION, "답 qz9v")
    text = (tmp_path / "prompts.jsonl").read_text(encoding="utf-8")
    assert "qz7w" not in text and "qz9v" not in text
    monkeypatch.setenv("LOG_DIR", str(tmp_path))
    monkeypatch.setenv("PROMPT_ENCRYPTION_KEYS", f"{new},{old}")  # 새 키가 먼저, 옛 키로 만든 토큰도 읽힘
    assert prompt_store.main(["show", "req-00000001"]) == 0
    assert json.loads(capsys.readouterr().out)["message"] == QUESTION
    assert prompt_store.main(["rotate"]) == 0
    monkeypatch.setenv("PROMPT_ENCRYPTION_KEYS", new)  # 교체 뒤에는 새 키만으로
    capsys.readouterr()
    assert prompt_store.main(["show", "req-00000001"]) == 0
    assert json.loads(capsys.readouterr().out)["answer"] == "답 qz9v"
    monkeypatch.setenv("PROMPT_ENCRYPTION_KEYS", old)  # 옛 키만으로는 더 이상 안 됨
    assert prompt_store.main(["show", "req-00000001"]) == 1


def test_chat_stores_the_prompt_only_when_keys_are_set(client, service, log_dir, monkeypatch):
    from cryptography.fernet import Fernet

    import prompt_store

    client.post("/chat", json={"message": QUESTION}, headers=HEADERS)
    assert not (log_dir / "prompts.jsonl").exists()
    key = Fernet.generate_key().decode()
    monkeypatch.setattr(service.settings, "log_dir", str(log_dir))
    monkeypatch.setattr(service, "PROMPT_FERNET", prompt_store.keyring(key))
    r = client.post("/chat", json={"message": QUESTION}, headers=HEADERS)
    (row,) = prompt_store.show(log_dir, prompt_store.keyring(key), r.headers["X-Request-ID"])
    assert row["message"] == QUESTION and row["answer"] == r.json()["response"]


# --------------------------------------------------------------------------- 로그 조회 (§5)
def test_logstore_finds_the_lines_of_one_request(client, log_dir, monkeypatch, capsys):
    import logstore

    ids = [client.post("/chat", json={"message": QUESTION}, headers=HEADERS).headers["X-Request-ID"] for _ in range(3)]
    (row,) = logstore.lines_for(log_dir, ids[1])
    assert row["request_id"] == ids[1] and row["status"] == 200
    monkeypatch.setenv("LOG_DIR", str(log_dir))
    assert logstore.main([ids[2]]) == 0
    assert json.loads(capsys.readouterr().out)["request_id"] == ids[2]
    assert logstore.main(["no-such-request"]) == 1
    assert logstore.lines_for(log_dir, "x' OR '1'='1") == []  # 값은 SQL 에 붙이지 않음
