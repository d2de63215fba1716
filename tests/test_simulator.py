"""The simulator over raw HTTP: wire format, admin API, errors, faults, quotas; and its pure parts."""

from __future__ import annotations

import json

import httpx
import pytest

from coursekit.simulator import SimulatorProcess, knowledge, models, tokens
from coursekit.simulator.config import ConfigError, from_env, validate
from coursekit.simulator.generate import answer, knows

BODY = {"contents": [{"parts": [{"text": "요금제가 어떻게 돼요?"}], "role": "user"}],
        "safetySettings": [], "generationConfig": {"candidateCount": 1}}
KEY = {"x-goog-api-key": "test-key"}
# one client for the module: a bare httpx.post() builds a new SSL context each time (~50 ms)
http = httpx.Client(timeout=10)


def post(sim, path, body=BODY, headers=KEY, **kw):
    return http.post(sim.base_url + path, json=body, headers=headers, **kw)


# ---- pure parts ------------------------------------------------------------------------------
def test_token_count_rule():
    assert tokens.count_tokens("") == 0
    assert tokens.count_tokens("안녕") == 2            # 2 Hangul -> ceil(4/3) = 2
    assert tokens.count_tokens("안녕하세요") == 4      # 5 -> ceil(10/3) = 4
    assert tokens.count_tokens("hello") == 2           # 5 latin -> ceil(5/4)
    assert tokens.count_tokens("a, b!") == 4           # a , b !
    text = "하늘클라우드 API 키는 어디서 발급하나요?"
    assert "".join(tokens.split_tokens(text)) == text


def test_knowledge_base_is_big_enough_and_self_consistent():
    entries = knowledge.entries()
    assert len(entries) >= 30
    assert len({e.id for e in entries}) == len(entries)
    for e in entries:
        for q in e.questions:
            hit = knowledge.lookup(q)
            assert hit is not None and hit.id == e.id, (q, hit)


@pytest.mark.parametrize("question,expected", [
    ("요금제가 어떻게 돼요?", "billing-plans"),
    ("API 키가 유출됐어요 어떡하죠", "api-key-leak"),
    ("429 에러가 계속 나요", "api-429"),
    ("서울 리전 있나요", "ops-region"),
    ("오늘 날씨 어때?", None),
    ("안녕하세요", None),
])
def test_lookup_paraphrases(question, expected):
    hit = knowledge.lookup(question)
    assert (hit.id if hit else None) == expected


def test_relevance_measures_answer_coverage():
    e = knowledge.get("billing-plans")
    assert knowledge.relevance(e.answer, e) == 1.0
    assert knowledge.relevance("모르겠습니다", e) < 0.2


def test_answers_are_deterministic_and_seeded():
    a = answer("파이썬 데코레이터를 설명해 주세요", "gemini-3.5-flash", seed=0)
    assert a == answer("파이썬 데코레이터를 설명해 주세요", "gemini-3.5-flash", seed=0)
    assert a.text != answer("파이썬 데코레이터를 설명해 주세요", "gemini-3.5-flash", seed=1).text
    short = answer("질문", "gemini-3.5-flash", seed=0).output_tokens
    long = answer("질문 " + "아주 긴 설명이 필요한 복잡한 운영 문제입니다. " * 8, "gemini-3.5-flash", seed=0).output_tokens
    assert long > short


def test_weak_model_misses_some_kb_entries_deterministically():
    ids = [e.id for e in knowledge.entries()]
    weak = [i for i in ids if knows("gemini-2.0-flash-lite", i)]
    assert all(knows("gemini-3.5-flash", i) for i in ids)
    assert 0.3 * len(ids) < len(weak) < 0.85 * len(ids)
    missed = next(i for i in ids if not knows("gemini-2.0-flash-lite", i))
    q = knowledge.get(missed).questions[0]
    assert answer(q, "gemini-2.0-flash-lite").entry_id is None
    assert answer(q, "gemini-3.5-flash").entry_id == missed


def test_model_table_and_costs():
    for name in ("gemini-3.5-flash", "gemini-3.5-flash-lite", "gemini-3.5-pro", "gemini-2.0-flash-lite",
                 "gemini-3.5-flash-thinking"):
        assert name in models.known_models()
    assert models.load_table()["source_date"]
    flash, lite, pro = (models.price_for(m) for m in ("gemini-3.5-flash", "gemini-3.5-flash-lite", "gemini-3.5-pro"))
    assert lite.input_usd_per_1m < flash.input_usd_per_1m < pro.input_usd_per_1m
    assert models.cost_usd("gemini-3.5-flash", 1_000_000, 0) == pytest.approx(flash.input_usd_per_1m)
    assert models.cost_usd("gemini-3.5-flash", 0, 1000, thoughts_tokens=1000) == pytest.approx(
        2000 * flash.output_usd_per_1m / 1e6)
    assert models.price_for("no-such-model") == flash           # default profile
    assert models.profile("gemini-3.5-pro").thinking


def test_config_validation_and_env():
    assert validate({"error_429_rate": "0.5"}) == {"error_429_rate": 0.5}
    for bad in ({"error_429_rate": 2}, {"latency": "slow"}, {"nope": 1}, {"seed": "x"},
                {"error_429_rate": 0.6, "error_503_rate": 0.6}):
        with pytest.raises(ConfigError):
            validate(bad)
    env = {"SIM_VALID_KEYS": "a, b", "SIM_QUOTA_RPM": "5", "SIM_LATENCY": "realistic"}
    assert from_env(env) == {"valid_keys": ["a", "b"], "quota_rpm": 5, "latency": "realistic"}


# ---- wire format ----------------------------------------------------------------------------
def test_generate_content_shape(sim):
    r = post(sim, "/v1beta/models/gemini-3.5-flash:generateContent")
    assert r.status_code == 200
    data = r.json()
    cand = data["candidates"][0]
    assert cand["finishReason"] == "STOP"
    assert cand["content"]["role"] == "model"
    assert cand["content"]["parts"][0]["text"] == knowledge.get("billing-plans").answer
    u = data["usageMetadata"]
    assert u["totalTokenCount"] == u["promptTokenCount"] + u["candidatesTokenCount"]
    assert data["modelVersion"] == "gemini-3.5-flash" and data["responseId"]
    # same path under /v1 (what the client sends when base_url is set), key in ?key=
    r2 = http.post(sim.base_url + "/v1/models/gemini-3.5-flash:generateContent?key=k2", json=BODY, timeout=10)
    assert r2.json()["candidates"][0]["content"]["parts"][0]["text"] == cand["content"]["parts"][0]["text"]


def test_stream_is_sse_with_several_chunks_and_usage_last(sim):
    body = {"contents": [{"parts": [{"text": "운영 환경에서 장애가 났을 때 무엇부터 해야 하는지 자세히 설명해 주세요"}],
                          "role": "user"}]}
    r = post(sim, "/v1/models/gemini-3.5-flash:streamGenerateContent?alt=sse", body)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = [e for e in r.text.split("\r\n\r\n") if e]
    assert len(events) >= 3
    chunks = [json.loads(e.removeprefix("data: ")) for e in events]
    assert all("usageMetadata" not in c for c in chunks[:-1])
    assert chunks[-1]["candidates"][0]["finishReason"] == "STOP"
    full = post(sim, "/v1/models/gemini-3.5-flash:generateContent", body).json()
    assert "".join(c["candidates"][0]["content"]["parts"][0]["text"] for c in chunks) == \
        full["candidates"][0]["content"]["parts"][0]["text"]
    assert chunks[-1]["usageMetadata"] == full["usageMetadata"]


def test_count_tokens_matches_prompt_tokens(sim):
    body = {"contents": BODY["contents"], "systemInstruction": {"parts": [{"text": "너는 친절한 상담원이다."}]}}
    n = post(sim, "/v1/models/gemini-3.5-flash:countTokens", body).json()["totalTokens"]
    u = post(sim, "/v1/models/gemini-3.5-flash:generateContent", body).json()["usageMetadata"]
    assert n == u["promptTokenCount"]
    wrapped = post(sim, "/v1/models/gemini-3.5-flash:countTokens", {"generateContentRequest": body}).json()
    assert wrapped["totalTokens"] == n


def test_max_output_tokens_truncates(sim):
    body = dict(BODY, generationConfig={"maxOutputTokens": 10})
    data = post(sim, "/v1/models/gemini-3.5-flash:generateContent", body).json()
    assert data["candidates"][0]["finishReason"] == "MAX_TOKENS"
    assert data["usageMetadata"]["candidatesTokenCount"] <= 10


def test_thinking_model_reports_thoughts(sim):
    data = post(sim, "/v1/models/gemini-3.5-pro:generateContent").json()
    u = data["usageMetadata"]
    assert u["thoughtsTokenCount"] > 0
    assert u["totalTokenCount"] == u["promptTokenCount"] + u["candidatesTokenCount"] + u["thoughtsTokenCount"]
    budget = dict(BODY, generationConfig={"thinkingConfig": {"thinking_budget": 7}})
    assert post(sim, "/v1/models/gemini-3.5-pro:generateContent", budget).json()["usageMetadata"][
        "thoughtsTokenCount"] == 7
    assert "thoughtsTokenCount" not in post(sim, "/v1/models/gemini-3.5-flash:generateContent").json()[
        "usageMetadata"]


def test_models_list_and_get(sim):
    names = [m["name"] for m in http.get(sim.base_url + "/v1beta/models", headers=KEY).json()["models"]]
    assert "models/gemini-3.5-flash" in names and len(names) >= 5
    m = http.get(sim.base_url + "/v1beta/models/gemini-3.5-pro", headers=KEY).json()
    assert m["name"] == "models/gemini-3.5-pro" and "generateContent" in m["supportedGenerationMethods"]


def test_unknown_model_served_with_default_profile(sim):
    r = post(sim, "/v1/models/my-own-model:generateContent")
    assert r.status_code == 200 and r.json()["modelVersion"] == "my-own-model"
    assert sim.stats()["by_model"] == {"my-own-model": 1}


# ---- errors -----------------------------------------------------------------------------------
def _err(r):
    return r.json()["error"]


@pytest.mark.parametrize("path,raw,status,google_status", [
    ("/v1/models/gemini-3.5-flash:generateContent", b"{not json", 400, "INVALID_ARGUMENT"),
    ("/v1/models/gemini-3.5-flash:generateContent", b"[1, 2]", 400, "INVALID_ARGUMENT"),
    ("/v1/models/gemini-3.5-flash:generateContent", b'{"contents": []}', 400, "INVALID_ARGUMENT"),
    ("/v1/models/gemini-3.5-flash:generateContent", b'{}', 400, "INVALID_ARGUMENT"),
    ("/v1/models/gemini-3.5-flash:generateContent", b'{"contents": "hi"}', 400, "INVALID_ARGUMENT"),
    ("/v1/models/gemini-3.5-flash:generateContent", b'{"contents": [{"parts": [{"text": 5}]}]}', 400,
     "INVALID_ARGUMENT"),
    ("/v1/models/gemini-3.5-flash:generateContent", b'{"contents": [{"parts": []}]}', 400, "INVALID_ARGUMENT"),
    ("/v1/models/gemini-3.5-flash:generateContent", b'{"contents": [{"parts": [{"text": "a"}]}],'
                                                    b' "generationConfig": {"maxOutputTokens": -1}}', 400,
     "INVALID_ARGUMENT"),
    ("/v1/models/gemini-3.5-pro:generateContent", b'{"contents": [{"parts": [{"text": "a"}]}],'
                                                  b' "generationConfig": {"thinkingConfig": {"thinkingBudget": [1]}}}',
     400, "INVALID_ARGUMENT"),
    ("/v1/models/gemini-3.5-pro:generateContent", b'{"contents": [{"parts": [{"text": "a"}]}],'
                                                  b' "generationConfig": {"thinkingConfig": [1]}}', 400,
     "INVALID_ARGUMENT"),
    ("/v1/models/gemini-3.5-flash:fooBar", b'{}', 404, "NOT_FOUND"),
    ("/v2/something", b'{}', 404, "NOT_FOUND"),
])
def test_bad_requests_get_google_shaped_errors(sim, path, raw, status, google_status):
    r = http.post(sim.base_url + path, content=raw, headers=dict(KEY, **{"content-type": "application/json"}))
    assert r.status_code == status
    err = _err(r)
    assert err["code"] == status and err["status"] == google_status and err["message"]
    assert http.get(sim.base_url + "/_sim/health").status_code == 200   # still alive


def test_missing_key_is_403_and_unknown_key_400_in_valid_key_mode(sim):
    r = post(sim, "/v1/models/gemini-3.5-flash:generateContent", headers={})
    assert r.status_code == 403 and _err(r)["status"] == "PERMISSION_DENIED"
    sim.configure(valid_keys=["good-key"])
    r = post(sim, "/v1/models/gemini-3.5-flash:generateContent", headers={"x-goog-api-key": "bad"})
    assert r.status_code == 400
    assert _err(r)["details"][0]["reason"] == "API_KEY_INVALID"
    assert "API key not valid" in _err(r)["message"]
    assert post(sim, "/v1/models/gemini-3.5-flash:generateContent",
                headers={"x-goog-api-key": "good-key"}).status_code == 200


def test_valid_keys_from_cli_flag_and_env():
    with SimulatorProcess(valid_keys=["k1", "k2"]) as s:
        assert post(s, "/v1/models/m:generateContent", headers={"x-goog-api-key": "k2"}).status_code == 200
        assert post(s, "/v1/models/m:generateContent", headers={"x-goog-api-key": "k3"}).status_code == 400
    with SimulatorProcess(env={"SIM_VALID_KEYS": "e1", "SIM_SEED": "7"}) as s:
        assert s.config()["valid_keys"] == ["e1"] and s.config()["seed"] == 7
        assert post(s, "/v1/models/m:generateContent", headers={"x-goog-api-key": "x"}).status_code == 400


# ---- faults, quotas, counters, config --------------------------------------------------------------
@pytest.mark.parametrize("rate,status,google_status", [
    ("error_429_rate", 429, "RESOURCE_EXHAUSTED"),
    ("error_500_rate", 500, "INTERNAL"),
    ("error_503_rate", 503, "UNAVAILABLE"),
])
def test_fault_injection_shapes(sim, rate, status, google_status):
    sim.configure(**{rate: 1.0})
    r = post(sim, "/v1/models/gemini-3.5-flash:generateContent")
    assert r.status_code == status and _err(r)["status"] == google_status
    if status == 429:
        retry = [d for d in _err(r)["details"] if d["@type"] == "type.googleapis.com/google.rpc.RetryInfo"]
        assert retry and retry[0]["retryDelay"].endswith("s")
    assert sim.stats()["by_status"] == {str(status): 1}


def test_fault_rate_is_seeded_and_roughly_right(sim):
    def run():
        sim.reset()
        return [post(sim, "/v1/models/gemini-3.5-flash:generateContent").status_code for _ in range(200)]
    sim.configure(error_503_rate=0.25, seed=3)
    first = run()
    assert first == run()                       # same seed -> same fault sequence
    assert 25 <= first.count(503) <= 75


def test_fault_models_limit_faults(sim):
    sim.configure(error_503_rate=1.0, fault_models=["gemini-3.5-pro"])
    assert post(sim, "/v1/models/gemini-3.5-flash:generateContent").status_code == 200
    assert post(sim, "/v1/models/gemini-3.5-pro:generateContent").status_code == 503


def test_hang_then_answer_and_client_timeout(sim):
    sim.configure(hang_rate=1.0, hang_seconds=0.3)
    r = post(sim, "/v1/models/gemini-3.5-flash:generateContent")
    assert r.status_code == 200 and r.elapsed.total_seconds() >= 0.3
    sim.configure(hang_seconds=5)
    with pytest.raises(httpx.ReadTimeout):
        http.post(sim.base_url + "/v1/models/gemini-3.5-flash:generateContent", json=BODY, headers=KEY,
                  timeout=0.3)
    assert sim.stats()["faults"]["hang"] == 2


def test_quota_per_key(sim):
    sim.configure(quota_rpm=3)
    codes = [post(sim, "/v1/models/m:generateContent", headers={"x-goog-api-key": "a"}).status_code
             for _ in range(5)]
    assert codes == [200, 200, 200, 429, 429]
    r = post(sim, "/v1/models/m:generateContent", headers={"x-goog-api-key": "a"})
    assert "quota" in _err(r)["message"]
    assert post(sim, "/v1/models/m:generateContent", headers={"x-goog-api-key": "b"}).status_code == 200
    s = sim.stats()
    assert s["faults"]["quota_429"] == 3 and s["by_key"] == {"a": 6, "b": 1}


def test_counters_and_reset(sim):
    post(sim, "/v1/models/gemini-3.5-flash:generateContent")
    post(sim, "/v1/models/gemini-3.5-flash:countTokens")
    post(sim, "/v1/models/gemini-3.5-pro:generateContent", headers={"x-goog-api-key": "other"})
    s = sim.stats()
    assert s["requests_total"] == 3
    assert s["by_model"] == {"gemini-3.5-flash": 2, "gemini-3.5-pro": 1}
    assert s["by_key"] == {"test-key": 2, "other": 1}
    assert s["by_action"] == {"generateContent": 2, "countTokens": 1}
    assert s["by_status"] == {"200": 3}
    assert s["tokens"]["input"] > 0 and s["tokens"]["output"] > 0 and s["tokens"]["thoughts"] > 0
    sim.reset()
    assert sim.stats()["requests_total"] == 0


def test_runtime_config_over_http(sim):
    assert sim.config()["latency"] == "zero"
    new = sim.configure(error_429_rate=0.5, fault_models="gemini-3.5-pro,gemini-3.5-flash")
    assert new["error_429_rate"] == 0.5 and new["fault_models"] == ["gemini-3.5-pro", "gemini-3.5-flash"]
    r = http.patch(sim.base_url + "/_sim/config", json={"error_429_rate": 3})
    assert r.status_code == 400 and "0 과 1 사이" in r.json()["error"]
    assert http.patch(sim.base_url + "/_sim/config", json={"bogus": 1}).status_code == 400
    assert http.patch(sim.base_url + "/_sim/config", content=b"{").status_code == 400
    assert sim.config()["error_429_rate"] == 0.5


def test_cli_flags_override_env(monkeypatch):
    import argparse

    from coursekit.simulator import add_arguments, config_from_args

    monkeypatch.setenv("SIM_ERROR_503_RATE", "0.2")
    monkeypatch.setenv("SIM_SEED", "9")
    parser = add_arguments(argparse.ArgumentParser())
    args = parser.parse_args(["--seed", "3", "--latency", "realistic", "--fault-models", "a,b", "--quota-rpm", "10"])
    cfg = config_from_args(args)
    assert cfg == {"error_503_rate": 0.2, "seed": 3, "latency": "realistic", "fault_models": ["a", "b"],
                   "quota_rpm": 10}
    helptext = parser.format_help()
    assert "지연 시간" in helptext and "--valid-keys" in helptext


def test_malformed_200_body(sim):
    """malformed_rate: HTTP 200 whose body is not a GenerateContentResponse (truncated JSON)."""
    sim.configure(malformed_rate=1.0)
    r = post(sim, "/v1/models/gemini-3.5-flash:generateContent")
    assert r.status_code == 200 and r.content
    with pytest.raises(ValueError):
        r.json()
    r = http.post(sim.base_url + "/v1/models/gemini-3.5-flash:streamGenerateContent?alt=sse", json=BODY,
                  headers=KEY)
    assert r.status_code == 200 and r.text.startswith("data: ")
    with pytest.raises(ValueError):
        json.loads(r.text.removeprefix("data: ").strip())
    s = sim.stats()
    assert s["faults"]["malformed"] == 2 and s["by_status"] == {"200": 2}
    assert s["tokens"]["output"] == 0                     # nothing usable was answered
    sim.configure(fault_models=["gemini-3.5-pro"])        # fault_models applies to it too
    assert post(sim, "/v1/models/gemini-3.5-flash:generateContent").json()["candidates"]
    sim.configure(fault_models=None, malformed_rate=0.3, seed=5)

    def run():
        sim.reset()
        out = []
        for _ in range(100):
            try:
                post(sim, "/v1/models/gemini-3.5-flash:generateContent").json()
                out.append(True)
            except ValueError:
                out.append(False)
        return out
    first = run()
    assert first == run() and 15 <= first.count(False) <= 45   # seeded, roughly the rate
    assert http.patch(sim.base_url + "/_sim/config", json={"malformed_rate": 2}).status_code == 400


def test_malformed_rate_flag_and_env():
    import argparse

    from coursekit.simulator import add_arguments, config_from_args

    args = add_arguments(argparse.ArgumentParser()).parse_args(["--malformed-rate", "0.5"])
    assert config_from_args(args) == {"malformed_rate": 0.5}
    with SimulatorProcess(env={"SIM_MALFORMED_RATE": "1"}) as s:
        assert s.config()["malformed_rate"] == 1.0


def test_reset_can_restore_startup_config():
    with SimulatorProcess(seed=4, error_429_rate=0.1) as s:
        s.configure(error_503_rate=0.5, malformed_rate=0.2, seed=9)
        post(s, "/v1/models/m:generateContent")
        s.reset()                                         # plain reset keeps the config
        assert s.config()["error_503_rate"] == 0.5 and s.stats()["requests_total"] == 0
        r = http.post(s.base_url + "/_sim/reset", json={"config": False})
        assert r.status_code == 200 and s.config()["seed"] == 9
        s.configure(error_503_rate=0.9)
        post(s, "/v1/models/m:generateContent")
        assert s.reset(config=True)["config"] == s.config()
        cfg = s.config()
        assert cfg["seed"] == 4 and cfg["error_429_rate"] == 0.1
        assert cfg["error_503_rate"] == 0.0 and cfg["malformed_rate"] == 0.0
        assert s.stats()["requests_total"] == 0
        bad = http.post(s.base_url + "/_sim/reset", json={"config": "yes"})
        assert bad.status_code == 400 and "config" in bad.json()["error"]
        assert http.post(s.base_url + "/_sim/reset", content=b"{").status_code == 400


def test_non_ascii_valid_keys_rejected_in_korean(sim):
    """Keys travel in HTTP headers: a Korean placeholder must be refused up front, not as a
    UnicodeEncodeError on every later request."""
    with pytest.raises(ConfigError, match="ASCII"):
        validate({"valid_keys": "sim-key,아무-문자열"})
    r = http.patch(sim.base_url + "/_sim/config", json={"valid_keys": ["키"]})
    assert r.status_code == 400 and "ASCII" in r.json()["error"]
    assert validate({"valid_keys": "sim-any-key"}) == {"valid_keys": ["sim-any-key"]}


# ---- step 05: trace context and request id as received ------------------------------------------
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_requests_rows_carry_traceparent_and_request_id(sim):
    post(sim, "/v1/models/gemini-2.5-flash:generateContent",
         headers={**KEY, "traceparent": TRACEPARENT, "X-Request-ID": "req-12345678"})
    post(sim, "/v1/models/gemini-2.5-flash:streamGenerateContent?alt=sse", headers={**KEY, "X-Request-ID": "only-id-1"})
    post(sim, "/v1/models/gemini-2.5-flash:generateContent")          # neither header
    rows = sim.requests()
    assert [(r["traceparent"], r["request_id"]) for r in rows] == [
        (TRACEPARENT, "req-12345678"), (None, "only-id-1"), (None, None)]


def test_stats_count_every_attempt_by_request_id(sim):
    """Failed attempts are not rows of /_sim/requests, but by_request_id counts them (LLM spans per request)."""
    sim.configure(error_503_rate=1.0)
    for _ in range(3):
        assert post(sim, "/v1/models/m:generateContent", headers={**KEY, "X-Request-ID": "retry-abcdef"}).status_code == 503
    sim.configure(error_503_rate=0.0)
    assert post(sim, "/v1/models/m:generateContent", headers={**KEY, "X-Request-ID": "retry-abcdef"}).status_code == 200
    post(sim, "/v1/models/m:generateContent")
    assert sim.stats()["by_request_id"] == {"retry-abcdef": 4}
    assert [r["request_id"] for r in sim.requests()] == ["retry-abcdef", None]
    sim.reset()
    assert sim.stats()["by_request_id"] == {}
