"""06단계 2부 단위 테스트: 응답 캐시의 키와 정규화, TTL(가짜 시계), 캐시하지 않는 답, 요청 합치기(50개 -> 호출 1번),
Redis 장애의 fail open, 스트리밍(SSE)의 이벤트 모양, 끊긴 업스트림, 떠난 클라이언트. 가짜 LLM 만 씁니다 (네트워크 없음).
redis-server 가 있으면 진짜 Redis 로 두 복제본이 캐시를 함께 쓰는지도 봅니다 (없으면 그 테스트만 건너뜀)."""

import asyncio
import hashlib
import json

import pytest
from conftest import FakeLLM
from fastapi.testclient import TestClient
from langchain_core.messages import AIMessageChunk

HEADERS = {"X-API-Key": "test-service-key"}
QUESTION = "MLOps 가 무엇인가요?"
ANSWER = "MLOps 는 머신러닝 모델을 배포하고 운영하는 방법입니다."


class CountingLLM(FakeLLM):
    """정해 둔 답, 호출마다 delay 초 (동시에 온 질문이 겹치게). script 의 예외는 차례로 던짐. calls = 모든 호출."""

    def __init__(self, delay: float = 0.0, script: list | None = None, default: str = ANSWER):
        super().__init__(default=default)
        self.delay = delay
        self.script = list(script or [])

    async def ainvoke(self, messages):
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.script:
            self.calls.append(messages)
            raise self.script.pop(0)
        return await super().ainvoke(messages)

    async def aclose(self):
        pass


def server_error():
    from google.genai.errors import ServerError

    return ServerError(503, {"error": {"code": 503, "message": "overloaded", "status": "UNAVAILABLE"}})


@pytest.fixture
def cached(service, monkeypatch):
    """캐시를 켠 서비스 (프로세스 안의 TTLCache, TTL 60 초). conftest 는 다른 테스트를 위해 캐시를 꺼 둠."""
    monkeypatch.setattr(service.settings, "cache_ttl_seconds", 60.0)
    monkeypatch.setattr(service.settings, "redis_url", None)
    return service


def metric(text: str, name: str, label: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{") and label in line)


def use_llm(service, llm):
    service.app.dependency_overrides[service.get_llm] = lambda: llm


def ask(client, message=QUESTION):
    return client.post("/chat", json={"message": message}, headers=HEADERS)


# --------------------------------------------------------------------------- 키와 정규화

def test_cache_key_is_sha256_of_model_prompt_version_and_normalized_message(service):
    key = service.caching.cache_key("gemini-3.5-flash", "v2", "  MLOps  가\t무엇인가요? ")
    payload = json.dumps(["gemini-3.5-flash", "v2", "mlops 가 무엇인가요?"], ensure_ascii=False)
    assert key == hashlib.sha256(payload.encode("utf-8")).hexdigest()


def test_normalization_nfkc_casefold_whitespace(service):
    normalize = service.caching.normalize
    assert normalize("ＭＬＯｐｓ　가\n\n무엇인가요?  ") == "mlops 가 무엇인가요?"  # 전각 글자와 전각 공백 (NFKC)
    assert normalize("STRASSE") == normalize("straße")  # casefold (lower 로는 같지 않음)
    assert normalize("a  b") != normalize("ab")  # 공백을 없애지는 않음: 다른 질문


def test_key_changes_with_model_prompt_version_and_question(service):
    key = service.caching.cache_key
    base = key("m", "v2", QUESTION)
    assert base == key("m", "v2", QUESTION.upper() + "  ")
    assert len({base, key("m2", "v2", QUESTION), key("m", "v3", QUESTION), key("m", "v2", QUESTION + "?")}) == 4


# --------------------------------------------------------------------------- 캐시 저장소

def test_ttl_with_a_fake_clock(service):
    now = [1000.0]
    cache = service.caching.ResponseCache(10, 100, None, timer=lambda: now[0])

    async def run():
        await cache.set("k", {"response": "a"})
        seen = [await cache.get("k")]
        now[0] += 9.9
        seen.append(await cache.get("k"))
        now[0] += 0.2
        seen.append(await cache.get("k"))
        return seen

    assert asyncio.run(run()) == [{"response": "a"}, {"response": "a"}, None]


def test_ttl_zero_switches_the_cache_off(service):
    cache = service.caching.ResponseCache(0, 100, None)

    async def run():
        await cache.set("k", {"response": "a"})
        return await cache.get("k")

    assert not cache.enabled and asyncio.run(run()) is None


def test_max_entries_bounds_the_in_process_cache(service):
    cache = service.caching.ResponseCache(60, 3, None)

    async def run():
        for i in range(10):
            await cache.set(f"k{i}", {"response": str(i)})

    asyncio.run(run())
    assert len(cache.local) == 3


def test_unreachable_redis_fails_open_as_a_miss(service):
    """닫힌 포트의 Redis: get 은 None (예외 없음), set 도 조용히 실패, 둘 다 result="error" 로 셈."""
    cache = service.caching.ResponseCache(60, 100, "redis://127.0.0.1:9/0")

    async def run():
        try:
            return await cache.get("k"), await cache.set("k", {"response": "a"})
        finally:
            await cache.aclose()

    def errors():
        return metric(service.telemetry.metrics_body()[0].decode(), "llm_cache_requests_total", 'result="error"')

    before = errors()
    assert asyncio.run(run()) == (None, None)
    assert errors() == before + 2


# --------------------------------------------------------------------------- /chat

def test_second_question_is_a_hit_without_an_upstream_call(cached):
    llm = CountingLLM()
    use_llm(cached, llm)
    with TestClient(cached.app) as client:
        first, second, variant = ask(client), ask(client), ask(client, "  mlops 가   무엇인가요?")
        metrics = client.get("/metrics").text
    assert [r.headers.get("X-Cache") for r in (first, second, variant)] == ["miss", "hit", "hit"]
    assert len(llm.calls) == 1
    a, b = first.json(), second.json()
    assert a["cached"] is False and b["cached"] is True and variant.json()["cached"] is True
    assert b["response"] == a["response"] and b["usage"] == a["usage"] and b["model"] == a["model"]
    assert len({a["response_id"], b["response_id"], variant.json()["response_id"]}) == 3  # 피드백은 응답마다
    assert 'result="hit"' in metrics and 'result="miss"' in metrics


def test_a_hit_records_no_tokens(cached):
    use_llm(cached, CountingLLM())
    with TestClient(cached.app) as client:
        ask(client, "토큰 세기 질문")
        before = client.get("/metrics").text
        ask(client, "토큰 세기 질문")
        after = client.get("/metrics").text

    def tokens(text):
        return [line for line in text.splitlines() if line.startswith(("gen_ai_client_token_usage_count", "llm_cost_usd"))]

    assert tokens(before) == tokens(after)


def test_hit_feedback_works_with_its_own_response_id(cached):
    use_llm(cached, CountingLLM())
    with TestClient(cached.app) as client:
        ids = [ask(client).json()["response_id"] for _ in range(2)]
        statuses = [client.post("/feedback", json={"response_id": rid, "rating": "up"}, headers=HEADERS).status_code
                    for rid in ids]
    assert statuses == [200, 200]


def test_model_or_prompt_version_change_is_a_miss(cached, monkeypatch):
    llm = CountingLLM()
    use_llm(cached, llm)
    with TestClient(cached.app) as client:
        ask(client)
        monkeypatch.setattr(cached.settings, "llm_model", "gemini-3.5-pro")
        other_model = ask(client)
        monkeypatch.setattr(cached.settings, "prompt_version", "v1")
        other_prompt = ask(client)
    assert other_model.headers["X-Cache"] == "miss" and other_prompt.headers["X-Cache"] == "miss"
    assert len(llm.calls) == 3


def test_errors_are_never_cached(cached):
    llm = CountingLLM(script=[server_error(), server_error()])  # LLM_MAX_ATTEMPTS=2: 첫 요청은 502
    use_llm(cached, llm)
    with TestClient(cached.app) as client:
        failed, then, again = ask(client), ask(client), ask(client)
    assert failed.status_code == 502 and "X-Cache" not in failed.headers
    assert (then.status_code, then.headers["X-Cache"]) == (200, "miss")
    assert (again.status_code, again.headers["X-Cache"]) == (200, "hit")


def test_refusals_are_never_cached(cached):
    llm = CountingLLM(default="제공된 정보로는 답할 수 없습니다.")
    use_llm(cached, llm)
    with TestClient(cached.app) as client:
        statuses = [ask(client).headers["X-Cache"] for _ in range(2)]
    assert statuses == ["miss", "miss"] and len(llm.calls) == 2


def test_fallback_answers_are_never_cached(cached, monkeypatch):
    import pybreaker

    monkeypatch.setattr(cached.settings, "fallback_model", "gemini-3.5-flash-lite")
    monkeypatch.setattr(cached, "PRIMARY_CIRCUIT", pybreaker.CircuitBreaker(fail_max=1000, reset_timeout=10))
    primary, fallback = CountingLLM(script=[server_error()] * 10), CountingLLM()
    use_llm(cached, primary)
    with TestClient(cached.app) as client:
        client.app.state.fallback_llm = fallback
        first, second = ask(client), ask(client)
    assert first.json()["fallback"] is True and second.json()["fallback"] is True
    assert [first.headers["X-Cache"], second.headers["X-Cache"]] == ["miss", "miss"]
    assert len(fallback.calls) == 2


def test_cache_off_has_no_header_and_no_cached_answers(service):
    llm = CountingLLM()
    use_llm(service, llm)  # conftest: CACHE_TTL_SECONDS=0
    with TestClient(service.app) as client:
        rs = [ask(client) for _ in range(2)]
    assert all("X-Cache" not in r.headers and r.json()["cached"] is False for r in rs) and len(llm.calls) == 2


# --------------------------------------------------------------------------- 요청 합치기

def test_coalescer_makes_one_call_for_50_waiters(service):
    calls = []

    async def upstream():
        calls.append(1)
        await asyncio.sleep(0.05)
        return "answer"

    async def run():
        coalescer = service.caching.Coalescer()
        results = await asyncio.gather(*[coalescer.run("k", upstream) for _ in range(50)])
        return results, coalescer.in_flight

    results, left = asyncio.run(run())
    assert len(calls) == 1 and {r for r, _ in results} == {"answer"}
    assert [leader for _, leader in results].count(True) == 1 and left == {}


def test_coalesced_failure_reaches_every_waiter_and_is_forgotten(service):
    calls = []

    async def failing():
        calls.append(1)
        await asyncio.sleep(0.02)
        raise RuntimeError("upstream down")

    async def run():
        coalescer = service.caching.Coalescer()
        results = await asyncio.gather(*[coalescer.run("k", failing) for _ in range(10)], return_exceptions=True)
        return results, coalescer.in_flight

    results, left = asyncio.run(run())
    assert len(calls) == 1 and all(isinstance(r, RuntimeError) for r in results) and left == {}


def test_a_waiter_leaving_does_not_cancel_the_shared_call(service):
    async def upstream():
        await asyncio.sleep(0.05)
        return "answer"

    async def run():
        coalescer = service.caching.Coalescer()
        leader = asyncio.create_task(coalescer.run("k", upstream))
        await asyncio.sleep(0)
        follower = asyncio.create_task(coalescer.run("k", upstream))
        await asyncio.sleep(0.01)
        leader.cancel()  # 첫 요청의 클라이언트가 떠남
        return await follower

    assert asyncio.run(run()) == ("answer", False)


def test_50_identical_concurrent_chats_make_one_upstream_call(cached):
    llm = CountingLLM(delay=0.2)

    async def run():
        async with cached.lifespan(cached.app):
            return await asyncio.gather(*[cached.answer_cached(llm, QUESTION) for _ in range(50)])

    results = asyncio.run(run())
    assert len(llm.calls) == 1
    assert sorted(state for _, _, state in results) == ["coalesced"] * 49 + ["miss"]
    assert {reply.text for reply, _, _ in results} == {ANSWER}


# --------------------------------------------------------------------------- 스트리밍 (§12)

class StreamingLLM:
    """astream 이 조각을 하나씩 (조각 사이 delay 초). fail_after 개 뒤에는 fail 을 던짐. 닫혔는지(closed) 기록."""

    def __init__(self, pieces, delay=0.0, fail_after=None, fail=None, first_delay=0.0):
        self.pieces, self.delay, self.fail_after, self.fail, self.first_delay = pieces, delay, fail_after, fail, first_delay
        self.sent = 0
        self.closed = False
        self.finished = False

    async def astream(self, messages):
        try:
            await asyncio.sleep(self.first_delay)
            for i, piece in enumerate(self.pieces):
                if self.fail_after is not None and i == self.fail_after:
                    raise self.fail
                if i:
                    await asyncio.sleep(self.delay)
                last = i == len(self.pieces) - 1
                usage = {"input_tokens": 10, "output_tokens": 7, "total_tokens": 17} if last else None
                self.sent += 1
                yield AIMessageChunk(content=piece, usage_metadata=usage)
            self.finished = True
        finally:
            self.closed = True

    async def aclose(self):
        pass


def sse_events(text: str) -> list[tuple[str, dict]]:
    events = []
    for block in text.split("\n\n"):
        name, data = None, []
        for line in block.splitlines():
            if line.startswith("event:"):
                name = line.removeprefix("event:").strip()
            elif line.startswith("data:"):
                data.append(line.removeprefix("data:").strip())
        if name:
            events.append((name, json.loads("\n".join(data))))
    return events


def stream(client, message=QUESTION, headers=HEADERS):
    with client.stream("POST", "/chat/stream", json={"message": message}, headers=headers) as r:
        return r, r.read().decode()


def test_stream_sends_deltas_then_done(service):
    llm = StreamingLLM(["MLOps 는 ", "머신러닝 ", "운영입니다."])
    use_llm(service, llm)
    with TestClient(service.app) as client:
        r, body = stream(client)
        metrics = client.get("/metrics").text
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(body)
    assert [name for name, _ in events] == ["delta", "delta", "delta", "done"]
    assert "".join(data["text"] for name, data in events if name == "delta") == "MLOps 는 머신러닝 운영입니다."
    done = events[-1][1]
    assert set(done) == {"response_id", "model", "prompt_version", "usage"} and len(done["response_id"]) == 32
    assert done["usage"] == {"input_tokens": 10, "output_tokens": 7, "total_tokens": 17}
    assert 'llm_time_to_first_token_seconds_count{gen_ai_request_model="gemini-3.5-flash"' in metrics


def test_stream_errors_before_the_stream_are_json(service):
    use_llm(service, StreamingLLM(["a"]))
    with TestClient(service.app) as client:
        no_key, _ = stream(client, headers={})
        blank, _ = stream(client, message="   ")
    assert no_key.status_code == 401 and blank.status_code == 422


def test_cut_upstream_stream_ends_with_an_error_event(service):
    import httpx2

    llm = StreamingLLM(["앞부분 ", "중간 ", "끝"], fail_after=2,
                       fail=httpx2.RemoteProtocolError("peer closed connection without sending complete message body"))
    use_llm(service, llm)
    with TestClient(service.app) as client:
        _, body = stream(client)
    events = sse_events(body)
    assert [name for name, _ in events] == ["delta", "delta", "error"]
    assert events[-1][1]["error"]["code"] == "upstream_malformed" and events[-1][1]["error"]["message"]


def test_upstream_failure_before_the_first_chunk_is_an_error_event(service):
    use_llm(service, StreamingLLM(["a"], fail_after=0, fail=server_error()))
    with TestClient(service.app) as client:
        _, body = stream(client)
    assert [(name, data["error"]["code"]) for name, data in sse_events(body)] == [("error", "upstream_error")]


def test_first_chunk_after_the_deadline_is_upstream_timeout(service, monkeypatch):
    monkeypatch.setattr(service.settings, "request_deadline_seconds", 0.2)
    llm = StreamingLLM(["a"], first_delay=5)
    use_llm(service, llm)
    with TestClient(service.app) as client:
        _, body = stream(client)
    assert [(name, data["error"]["code"]) for name, data in sse_events(body)] == [("error", "upstream_timeout")]
    assert llm.closed


def test_safety_block_in_a_stream_is_content_blocked(service):
    class Blocked(StreamingLLM):
        async def astream(self, messages):
            yield AIMessageChunk(content="", response_metadata={"finish_reason": "SAFETY"})

    use_llm(service, Blocked([]))
    with TestClient(service.app) as client:
        _, body = stream(client)
    assert [(name, data["error"]["code"]) for name, data in sse_events(body)] == [("error", "content_blocked")]


def test_client_disconnect_closes_the_upstream_stream(service):
    """ASGI 로 직접: 첫 delta 를 받은 뒤 클라이언트가 떠남(http.disconnect) -> 업스트림 생성기가 닫히고 더 읽지 않음."""
    llm = StreamingLLM([f"조각{i} " for i in range(20)], delay=0.05)
    use_llm(service, llm)
    body = json.dumps({"message": QUESTION}).encode()
    first_delta = asyncio.Event()
    sent: list[bytes] = []

    async def receive():
        if not sent:
            sent.append(b"")
            return {"type": "http.request", "body": body, "more_body": False}
        await first_delta.wait()
        return {"type": "http.disconnect"}

    async def send(message):
        if message["type"] == "http.response.body" and b"event: delta" in message.get("body", b""):
            first_delta.set()

    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": "/chat/stream", "raw_path": b"/chat/stream",
             "query_string": b"", "root_path": "", "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 5000),
             "headers": [(b"content-type", b"application/json"), (b"x-api-key", b"test-service-key"),
                         (b"content-length", str(len(body)).encode())]}

    async def run():
        async with service.lifespan(service.app):
            await asyncio.wait_for(service.app(scope, receive, send), timeout=5)
            sent_then = llm.sent
            await asyncio.sleep(0.3)
            return sent_then

    sent_then = asyncio.run(run())
    assert llm.closed and not llm.finished
    assert llm.sent == sent_then < 5  # 떠난 뒤에는 한 조각도 더 읽지 않음


# --------------------------------------------------------------------------- 진짜 Redis: 복제본 두 개

def test_two_replicas_share_the_cache_in_redis(service):
    try:
        from coursekit.redis_server import RedisServer, find_redis
    except ImportError:
        pytest.skip("coursekit.redis_server 가 없습니다 (코스 저장소 밖)")
    if find_redis() is None:
        pytest.skip("redis-server 가 없습니다")
    key = service.caching.cache_key("gemini-3.5-flash", "v2", QUESTION)
    with RedisServer() as server:
        async def run():
            a = service.caching.ResponseCache(2.5, 100, server.url)
            b = service.caching.ResponseCache(2.5, 100, server.url)
            try:
                await a.set(key, {"response": ANSWER})
                return await b.get(key)
            finally:
                await a.aclose()
                await b.aclose()

        seen = asyncio.run(run())
        client = server.client()
        stored, ttl_ms = client.get("llm-chat:cache:v1:" + key), client.pttl("llm-chat:cache:v1:" + key)
    assert seen == {"response": ANSWER} and json.loads(stored) == {"response": ANSWER}
    assert 2000 < ttl_ms <= 2500
