"""Reliability suite, part 2 (issue 17): fuzzing the course's Gemini simulator (coursekit/simulator, the session
simulator of tests/conftest.py). Malformed, huge and random bodies, wrong content types, unknown models, wrong
methods, missing keys, slow clients and vanishing clients (mid-request and mid-stream): always a Google-shaped
error JSON (`{"error": {"code", "message", "status"}}`, README §4) or a normal answer, never a 5xx or a
traceback, never a hang (every request bounded), and no leaked work (`in_flight` back to 0, streams counted)."""

from __future__ import annotations

import json
import socket
import time
from urllib.parse import urlsplit

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

KEY = "sim-any-key"
TIMEOUT = 10.0           # every request bounded
MODEL = "gemini-3.5-flash"
GEN = f"/v1/models/{MODEL}:generateContent"
STREAM = f"/v1/models/{MODEL}:streamGenerateContent?alt=sse"
COUNT = f"/v1/models/{MODEL}:countTokens"
EMBED = "/v1/models/gemini-embedding-001:batchEmbedContents"
VALID = {"contents": [{"role": "user", "parts": [{"text": "요금제가 어떻게 돼요?"}]}]}
FUZZ = settings(max_examples=40, derandomize=True, database=None, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture
def client(sim):
    with httpx.Client(base_url=sim.base_url, timeout=TIMEOUT) as c:
        yield c
    # No leaked work after any test of this module: nothing in flight, nothing queued.
    settle(sim, lambda s: s["in_flight"] == 0 and s["queued"] == 0, "in_flight and queued back to 0")


def settle(sim, ok, what: str, within: float = 5.0) -> dict:
    deadline = time.monotonic() + within
    while True:
        stats = sim.stats()
        if ok(stats):
            return stats
        if time.monotonic() > deadline:
            pytest.fail(f"simulator: expected {what} within {within:.0f} s; stats: in_flight={stats['in_flight']} "
                        f"queued={stats['queued']} streams={stats['streams']} by_status={stats['by_status']}")
        time.sleep(0.05)


def assert_google_error(r: httpx.Response, case: str, status: int | None = None, code: str | None = None) -> dict:
    where = f"{r.request.method} {r.request.url.path} ({case})"
    assert r.status_code < 500, f"{where}: {r.status_code} (a 5xx from the simulator): {r.text[:500]}"
    assert r.status_code >= 400, f"{where}: expected an error, got {r.status_code}: {r.text[:300]}"
    assert "Traceback" not in r.text and 'File "' not in r.text, f"{where}: traceback in the body: {r.text[:500]}"
    assert r.headers.get("content-type", "").startswith("application/json"), f"{where}: {r.headers}"
    body = r.json()
    err = body.get("error") if isinstance(body, dict) else None
    assert isinstance(err, dict), f"{where}: not Google-shaped: {r.text[:300]}"
    assert err.get("code") == r.status_code, f"{where}: error.code {err.get('code')} != {r.status_code}"
    assert isinstance(err.get("message"), str) and err["message"], f"{where}: empty error.message"
    assert isinstance(err.get("status"), str) and err["status"].isupper(), f"{where}: error.status {err.get('status')}"
    if status is not None:
        assert r.status_code == status, f"{where}: expected {status}, got {r.status_code}: {r.text[:300]}"
    if code is not None:
        assert err["status"] == code, f"{where}: expected {code}, got {err['status']}"
    return err


def answer_or_error(r: httpx.Response, case: str) -> None:
    """A 200 must be a JSON (or SSE) answer; anything else a Google-shaped 4xx."""
    if r.status_code == 200:
        assert r.headers.get("content-type", "").startswith(("application/json", "text/event-stream")), case
        return
    assert_google_error(r, case)


def post(client, path: str, content: bytes, ctype: str = "application/json", key: str | None = KEY):
    headers = {"content-type": ctype}
    if key is not None:
        headers["x-goog-api-key"] = key
    return client.post(path, content=content, headers=headers)


# --------------------------------------------------------------------------- bodies
def test_random_bytes_bodies(client):
    @FUZZ
    @given(body=st.binary(max_size=512), path=st.sampled_from([GEN, STREAM, COUNT, EMBED]))
    def run(body, path):
        answer_or_error(post(client, path, body), f"body {body[:60]!r}")

    run()


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(
        st.sampled_from(["contents", "parts", "text", "role", "systemInstruction", "generationConfig",
                         "maxOutputTokens", "requests", "content", "model", "outputDimensionality", "x"]),
        kids, max_size=4),
    max_leaves=12,
)


def test_random_json_bodies(client):
    @FUZZ
    @given(body=JSON, path=st.sampled_from([GEN, STREAM, COUNT, EMBED]))
    def run(body, path):
        answer_or_error(post(client, path, json.dumps(body).encode()), f"body {json.dumps(body)[:120]}")

    run()


@pytest.mark.parametrize("body", [b"", b"{", b"null", b"[]", b'{"contents": []}', b'{"contents": "x"}',
                                  b'{"contents": [{"role": "robot", "parts": [{"text": "a"}]}]}',
                                  b"\xff\xfe\x00", '{"contents": [{"parts": [{"text": "\ud800"}]}]}'.encode(
                                      "utf-8", "surrogatepass")],
                         ids=["empty", "truncated", "null", "array", "no-contents", "contents-str", "bad-role",
                              "not-utf8", "lone-surrogate"])
def test_malformed_bodies_are_400_invalid_argument(client, body):
    assert_google_error(post(client, GEN, body), f"body {body!r}", 400, "INVALID_ARGUMENT")


def test_huge_body_beyond_limit(client):
    body = b'{"contents": [{"parts": [{"text": "' + b"a" * (20 * 1024 * 1024 + 10) + b'"}]}]}'
    assert_google_error(post(client, GEN, body), "21 MiB body", 400, "INVALID_ARGUMENT")
    # ... also as a chunked body without Content-Length.
    r = client.post(GEN, content=iter([body[i:i + (1 << 20)] for i in range(0, len(body), 1 << 20)]),
                    headers={"content-type": "application/json", "x-goog-api-key": KEY})
    assert_google_error(r, "21 MiB chunked body", 400, "INVALID_ARGUMENT")


# --------------------------------------------------------------------------- headers, models, methods
def test_any_content_type(client):
    @FUZZ
    @given(ctype=st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40))
    def run(ctype):
        answer_or_error(post(client, GEN, json.dumps(VALID).encode(), ctype=ctype), f"content-type {ctype!r}")

    run()


MODEL_NAME = st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyz0123456789-._~%"), min_size=1, max_size=30)


def test_unknown_models(client):
    """README §4: an unknown model name answers with the default profile; embeddings: 404 NOT_FOUND."""
    @FUZZ
    @given(model=MODEL_NAME, action=st.sampled_from(["generateContent", "countTokens", "fooBar"]))
    def run(model, action):
        r = client.post(f"/v1/models/{model}:{action}", json=VALID, headers={"x-goog-api-key": KEY})
        answer_or_error(r, f"model {model!r}")
        if action == "fooBar":
            assert_google_error(r, f"unknown action for {model!r}", 404, "NOT_FOUND")

    run()
    r = client.post("/v1/models/nope-model:batchEmbedContents", headers={"x-goog-api-key": KEY},
                    json={"requests": [{"model": "models/nope-model", "content": {"parts": [{"text": "a"}]}}]})
    assert_google_error(r, "unknown embedding model", 404, "NOT_FOUND")


@pytest.mark.parametrize("method, path", [("GET", GEN), ("PUT", GEN), ("DELETE", GEN), ("PATCH", STREAM),
                                          ("PUT", "/v1beta/models"), ("DELETE", f"/v1beta/models/{MODEL}"),
                                          ("GET", EMBED)])
def test_wrong_methods(client, method, path):
    r = client.request(method, path, headers={"x-goog-api-key": KEY})
    err = assert_google_error(r, "wrong method")
    assert r.status_code in (404, 405), f"{method} {path}: {r.status_code}"
    assert err["status"] in ("NOT_FOUND", "METHOD_NOT_ALLOWED")


@pytest.mark.parametrize("path", [GEN, STREAM, COUNT, EMBED,
                                  "/v1beta/models", f"/v1beta/models/{MODEL}"])
def test_missing_key(client, path):
    r = client.request("GET" if path.startswith("/v1beta/models") and ":" not in path else "POST", path, json=VALID)
    assert_google_error(r, "no key", 403, "PERMISSION_DENIED")


def test_unknown_paths(client):
    @FUZZ
    @given(path=st.text(st.sampled_from("abcxyz019/:._-"), max_size=30))
    def run(path):
        r = client.post("/v1/" + path, json=VALID, headers={"x-goog-api-key": KEY})
        answer_or_error(r, f"path /v1/{path}")

    run()


# --------------------------------------------------------------------------- slow and vanishing clients
def raw_socket(sim) -> socket.socket:
    url = urlsplit(sim.base_url)
    s = socket.create_connection((url.hostname, url.port), timeout=TIMEOUT)
    return s


def request_head(path: str, length: int) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: sim\r\nx-goog-api-key: {KEY}\r\ncontent-type: application/json\r\n"
            f"content-length: {length}\r\n\r\n").encode()


@pytest.mark.parametrize("sent", ["headers", "half-body"])
def test_slow_client_does_not_block_others(sim, client, sent):
    """A client sends its headers (and maybe half the body) then stalls: other requests are still answered
    promptly, and once it goes away nothing is left in flight."""
    body = json.dumps(VALID).encode()
    s = raw_socket(sim)
    try:
        s.sendall(request_head(GEN, len(body)) + (body[: len(body) // 2] if sent == "half-body" else b""))
        time.sleep(0.3)
        started = time.monotonic()
        r = client.post(GEN, json=VALID, headers={"x-goog-api-key": KEY})
        assert r.status_code == 200 and time.monotonic() - started < 2.0, (r.status_code, time.monotonic() - started)
        time.sleep(0.5)
    finally:
        s.close()
    settle(sim, lambda st_: st_["in_flight"] == 0, "in_flight 0 after the slow client left")


def test_vanishing_client_mid_request(sim, client):
    """The client disconnects while its request hangs upstream: counted as 499, nothing left in flight."""
    sim.configure(hang_rate=1.0, hang_seconds=30)
    body = json.dumps(VALID).encode()
    s = raw_socket(sim)
    try:
        s.sendall(request_head(GEN, len(body)) + body)
        settle(sim, lambda st_: st_["in_flight"] == 1, "the hanging request in flight")
    finally:
        s.close()
    stats = settle(sim, lambda st_: st_["in_flight"] == 0, "in_flight 0 after the client vanished")
    assert stats["by_status"].get("499") == 1, stats["by_status"]
    sim.configure(hang_rate=0.0)
    assert client.post(GEN, json=VALID, headers={"x-goog-api-key": KEY}).status_code == 200


def test_vanishing_client_mid_stream(sim, client):
    """The client reads the first SSE chunk and disconnects: the stream is counted abandoned (not completed)
    and generation stops (nothing in flight)."""
    sim.configure(slow_stream_chunk_seconds=0.3)
    with client.stream("POST", STREAM, json=VALID, headers={"x-goog-api-key": KEY}) as r:
        assert r.status_code == 200
        next(r.iter_bytes())
    stats = settle(sim, lambda st_: st_["streams"]["abandoned"] == 1 and st_["in_flight"] == 0,
                   "streams.abandoned 1 and in_flight 0")
    assert stats["streams"]["completed"] == 0, stats["streams"]


def test_vanishing_client_before_first_token(sim, client):
    """Disconnect while waiting for the first token (slow_first_token): abandoned, nothing in flight."""
    sim.configure(slow_first_token_seconds=20)
    with pytest.raises(httpx.ReadTimeout):
        client.post(STREAM, json=VALID, headers={"x-goog-api-key": KEY}, timeout=0.5)
    settle(sim, lambda st_: st_["in_flight"] == 0, "in_flight 0 after the client gave up")


def test_many_vanishing_streams_leak_nothing(sim, client):
    """Twenty streams dropped at random points: afterwards started == completed + abandoned, in_flight 0."""
    sim.configure(slow_stream_chunk_seconds=0.02)
    for i in range(20):
        with client.stream("POST", STREAM, json=VALID, headers={"x-goog-api-key": KEY}) as r:
            assert r.status_code == 200
            for n, _ in enumerate(r.iter_bytes()):
                if n >= i % 5:
                    break
    stats = settle(sim, lambda st_: st_["in_flight"] == 0 and st_["streams"]["started"] == 20
                   and st_["streams"]["completed"] + st_["streams"]["abandoned"] == 20,
                   "every stream completed or abandoned, in_flight 0")
    assert stats["streams"]["abandoned"] >= 1, stats["streams"]


def test_any_api_key_value(client):
    """Any ASCII key value (header or ?key=) is accepted or refused Google-style, never a 5xx."""
    @FUZZ
    @given(key=st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=60),
           where=st.sampled_from(["header", "query"]))
    def run(key, where):
        if where == "header":
            r = client.post(GEN, json=VALID, headers={"x-goog-api-key": key})
        else:
            r = client.post(GEN, json=VALID, params={"key": key})
        answer_or_error(r, f"key {key!r} in {where}")

    run()


def test_vanishing_clients_while_queued(sim, client):
    """With max_concurrency=1 and a slow first token, one request generates and the next queues; both clients
    give up: the queued one leaves the queue at once (499); the generating one holds its slot until its delay
    has passed (a unary answer does not watch for disconnects, coursekit/simulator/app.py:446 — bounded, not a
    leak); afterwards nothing is active, queued or in flight."""
    import threading

    slow = 2.5
    sim.configure(max_concurrency=1, slow_first_token_seconds=slow)
    outcomes: list[str] = []

    def give_up():
        try:
            with httpx.Client(base_url=sim.base_url, timeout=1.0) as c:
                c.post(GEN, json=VALID, headers={"x-goog-api-key": KEY})
            outcomes.append("answered")
        except httpx.ReadTimeout:
            outcomes.append("timeout")

    threads = [threading.Thread(target=give_up) for _ in range(2)]
    for t in threads:
        t.start()
        time.sleep(0.2)
    settle(sim, lambda st_: st_["active"] == 1 and st_["queued"] == 1, "one request active, one queued")
    for t in threads:
        t.join(timeout=TIMEOUT)
    assert outcomes == ["timeout", "timeout"], outcomes
    settle(sim, lambda st_: st_["queued"] == 0 and st_["by_status"].get("499") == 1,
           "the queued request gone (499) right after its client left", within=1.0)
    stats = settle(sim, lambda st_: st_["in_flight"] == 0 and st_["queued"] == 0 and st_["active"] == 0,
                   "active, queued and in_flight back to 0", within=slow + 3)
    assert stats["queued_total"] == 1, stats["queued_total"]


def test_reset_during_a_request_leaves_the_gauges_at_zero(sim, client):
    """A reset while a model request still runs (its client gave up; the simulator sleeps out the latency): the
    gauges count only requests started since the reset, so in_flight, active and max_in_flight stay 0 when the
    old request ends (never -1), and a new request counts from 0 again (README §5)."""
    slow = 1.0
    sim.configure(max_concurrency=1, slow_first_token_seconds=slow)
    with pytest.raises(httpx.ReadTimeout):
        client.post(GEN, json=VALID, headers={"x-goog-api-key": KEY}, timeout=0.3)
    settle(sim, lambda st_: st_["in_flight"] == 1 and st_["active"] == 1, "the abandoned request still running")
    sim.reset()
    time.sleep(slow + 0.3)   # the old request has ended by now
    stats = sim.stats()
    gauges = {k: stats[k] for k in ("in_flight", "max_in_flight", "active", "queued", "queued_total")}
    assert gauges == dict.fromkeys(gauges, 0), f"gauges after the old request ended: {gauges}"
    sim.configure(slow_first_token_seconds=0)
    assert client.post(GEN, json=VALID, headers={"x-goog-api-key": KEY}).status_code == 200
    stats = settle(sim, lambda st_: st_["in_flight"] == 0 and st_["active"] == 0, "in_flight and active 0")
    assert stats["max_in_flight"] == 1, stats
