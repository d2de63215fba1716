"""Step 06 faults of the simulator: on the wire, in the counters, and as the real client sees them.

These tests pin the step 06 rows of coursekit/simulator/README.md (sections 1 and 2):
safety_block_rate, empty_candidates_rate, slow_first_token_seconds/_rate, slow_stream_chunk_seconds,
stream_cut_rate, max_concurrency.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import httpx
import httpx2
import pytest
from langchain_core.exceptions import ModelError
from langchain_google_genai import ChatGoogleGenerativeAI

from coursekit.simulator import (
    SimulatorProcess,
    add_arguments,
    config_from_args,
    knowledge,
)

PROMPT = "요금제가 어떻게 돼요?"
LONG = "운영 중인 챗봇의 응답이 느려졌을 때 무엇부터 확인해야 하나요? 자세히 알려 주세요."
BODY = {"contents": [{"parts": [{"text": PROMPT}], "role": "user"}]}
KEY = {"x-goog-api-key": "test-key"}
GEN = "/v1/models/gemini-3.5-flash:generateContent"
STREAM = "/v1/models/gemini-3.5-flash:streamGenerateContent?alt=sse"
http = httpx.Client(timeout=20)


def post(sim, path=GEN, **kw):
    return http.post(sim.base_url + path, json=BODY, headers=KEY, **kw)


@pytest.fixture
def client_env(sim, monkeypatch):
    monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", sim.base_url)
    monkeypatch.setenv("GOOGLE_API_KEY", "client-key")
    return sim


def llm(model="gemini-3.5-flash", **kw):
    return ChatGoogleGenerativeAI(model=model, **kw)


async def _collect(model, prompt=PROMPT):
    out = []
    async for chunk in model.astream(prompt):
        out.append(chunk)
    return out


# ---- on the wire ---------------------------------------------------------------------------------
def test_safety_block_wire_shape(sim):
    sim.configure(safety_block_rate=1.0)
    r = post(sim)
    assert r.status_code == 200
    cand = r.json()["candidates"]
    assert len(cand) == 1 and cand[0]["finishReason"] == "SAFETY" and "content" not in cand[0]
    assert any(x.get("blocked") for x in cand[0]["safetyRatings"])
    r = post(sim, STREAM)
    assert r.status_code == 200 and r.text.startswith("data: ")
    assert json.loads(r.text.removeprefix("data: "))["candidates"][0]["finishReason"] == "SAFETY"
    s = sim.stats()
    assert s["faults"]["safety_block"] == 2 and s["by_status"] == {"200": 2}
    assert s["tokens"]["output"] == 0 and sim.requests() == []     # no answer was given


def test_empty_candidates_wire_shape(sim):
    sim.configure(empty_candidates_rate=1.0)
    body = post(sim).json()
    assert body["candidates"] == [] and body["usageMetadata"]["promptTokenCount"] > 0
    assert sim.stats()["faults"]["empty_candidates"] == 1


def test_new_faults_honour_fault_models(sim):
    sim.configure(safety_block_rate=1.0, empty_candidates_rate=1.0, stream_cut_rate=1.0,
                  slow_first_token_seconds=2.0, max_concurrency=1, fault_models=["gemini-3.5-pro"])
    t = time.monotonic()
    assert post(sim).json()["candidates"][0]["finishReason"] == "STOP"
    r = post(sim, STREAM)
    assert r.status_code == 200 and '"finishReason":"STOP"' in r.text
    assert time.monotonic() - t < 1.5
    assert post(sim, "/v1/models/gemini-3.5-pro:generateContent").json()["candidates"][0]["finishReason"] == "SAFETY"
    f = sim.stats()["faults"]
    assert f["safety_block"] == 1 and f["stream_cut"] == 0 and f["slow_first_token"] == 0


def test_zero_rates_keep_the_old_fault_order():
    """With every step 06 rate at 0 the seeded RNG is used exactly as before they existed: the
    statuses and response ids (which carry RNG bytes) of 40 requests with 429/503 faults and
    realistic-latency draws hash to the value the simulator gave at commit ebe49c1 (before step 06;
    computed there with this same loop)."""
    import hashlib

    import orjson

    from coursekit.simulator.app import Simulator

    body = orjson.dumps(BODY)
    scope = {"type": "http", "path": GEN, "method": "POST", "headers": [(b"x-goog-api-key", b"k")],
             "query_string": b""}

    async def run(**extra):
        sim = Simulator(error_503_rate=0.3, error_429_rate=0.1, seed=11, latency="realistic",
                        latency_scale=0.0001, **extra)
        out = []
        for _ in range(40):
            sent = []

            async def receive():
                return {"type": "http.request", "body": body, "more_body": False}

            async def send(message):
                sent.append(message)
            await sim(scope, receive, send)
            status = sent[0]["status"]
            out.append(status if status != 200 else orjson.loads(sent[1]["body"])["responseId"])
        return out
    for extra in ({}, {"safety_block_rate": 0.0, "empty_candidates_rate": 0.0, "stream_cut_rate": 0.0,
                       "slow_first_token_seconds": 0.0, "slow_stream_chunk_seconds": 0.0, "max_concurrency": None}):
        got = asyncio.run(run(**extra))
        assert hashlib.sha256(repr(got).encode()).hexdigest()[:16] == "0ac290392dd0d36a"
        assert got.count(503) == 8 and got.count(429) == 5


def test_new_fault_rates_are_seeded(sim):
    sim.configure(safety_block_rate=0.3, empty_candidates_rate=0.2, seed=7)

    def run():
        sim.reset()
        out = []
        for _ in range(100):
            c = post(sim).json()["candidates"]
            out.append("empty" if not c else c[0]["finishReason"])
        return out
    first = run()
    assert first == run()
    assert 15 <= first.count("SAFETY") <= 45 and 5 <= first.count("empty") <= 30
    s = sim.stats()["faults"]
    assert s["safety_block"] == first.count("SAFETY") and s["empty_candidates"] == first.count("empty")


def test_slow_first_token_unary_and_stream(sim):
    sim.configure(slow_first_token_seconds=0.4)
    t = time.monotonic()
    assert post(sim).status_code == 200
    assert time.monotonic() - t >= 0.4
    t = time.monotonic()
    with http.stream("POST", sim.base_url + STREAM, json=BODY, headers=KEY) as r:
        first = next(r.iter_raw())
        assert first.startswith(b"data: ") and time.monotonic() - t >= 0.4
    sim.configure(slow_first_token_rate=0.5, seed=2)
    sim.reset()
    for _ in range(10):
        post(sim, timeout=5)
    assert 1 <= sim.stats()["faults"]["slow_first_token"] <= 9


def test_slow_stream_chunks(sim):
    sim.configure(slow_stream_chunk_seconds=0.05)
    body = {"contents": [{"parts": [{"text": LONG}], "role": "user"}]}
    t = time.monotonic()
    r = http.post(sim.base_url + STREAM, json=body, headers=KEY)
    chunks = [c for c in r.text.split("\r\n\r\n") if c.strip()]
    assert len(chunks) >= 5 and time.monotonic() - t >= 0.05 * (len(chunks) - 1)


def test_stream_cut_closes_the_connection_mid_answer(sim):
    sim.configure(stream_cut_rate=1.0)
    got = b""
    with pytest.raises(httpx.RemoteProtocolError):
        with http.stream("POST", sim.base_url + STREAM, json=BODY, headers=KEY) as r:
            assert r.status_code == 200
            for part in r.iter_raw():
                got += part
    assert got.startswith(b"data: ") and b"finishReason" not in got
    assert post(sim).status_code == 200                 # unary requests are never cut
    s = sim.stats()
    assert s["faults"]["stream_cut"] == 1
    assert [row["finish_reason"] for row in sim.requests()] == ["STREAM_CUT", "STOP"]
    assert "StreamCut" not in sim.output()              # a fault, not a traceback in the log


def test_max_concurrency_queues_fifo_and_counts(sim):
    sim.configure(max_concurrency=2, slow_first_token_seconds=0.3)

    async def burst():
        async with httpx.AsyncClient(timeout=20) as client:
            async def one():
                t = time.monotonic()
                r = await client.post(sim.base_url + GEN, json=BODY, headers=KEY)
                return r.status_code, time.monotonic() - t
            return await asyncio.gather(*[one() for _ in range(6)])
    results = asyncio.run(burst())
    assert all(code == 200 for code, _ in results)
    waits = sorted(t for _, t in results)
    assert waits[-1] >= 0.85                           # 3 waves of 2 at 0.3 s each
    s = sim.stats()
    assert s["queued_total"] == 4 and s["max_in_flight"] == 6
    assert s["active"] == 0 and s["queued"] == 0 and s["in_flight"] == 0


def test_max_concurrency_queued_request_leaves_on_disconnect(sim):
    sim.configure(max_concurrency=1, slow_first_token_seconds=1.0)

    async def run():
        async with httpx.AsyncClient(timeout=20) as client:
            holder = asyncio.ensure_future(client.post(sim.base_url + GEN, json=BODY, headers=KEY))
            await asyncio.sleep(0.2)
            with pytest.raises(httpx.ReadTimeout):
                await client.post(sim.base_url + GEN, json=BODY, headers=KEY, timeout=0.3)
            return await holder
    assert asyncio.run(run()).status_code == 200
    time.sleep(0.2)
    s = sim.stats()
    assert s["queued_total"] == 1 and s["by_status"].get("499") == 1 and s["queued"] == 0
    t = time.monotonic()
    assert post(sim).status_code == 200 and time.monotonic() - t < 1.6   # the slot was not leaked


def test_config_validation_flags_and_env():
    args = add_arguments(argparse.ArgumentParser()).parse_args(
        ["--safety-block-rate", "0.1", "--max-concurrency", "4", "--slow-first-token-seconds", "1.5",
         "--stream-cut-rate", "0.2"])
    assert config_from_args(args) == {"safety_block_rate": 0.1, "max_concurrency": 4,
                                      "slow_first_token_seconds": 1.5, "stream_cut_rate": 0.2}
    with SimulatorProcess(env={"SIM_EMPTY_CANDIDATES_RATE": "1", "SIM_MAX_CONCURRENCY": "3"}) as s:
        cfg = s.config()
        assert cfg["empty_candidates_rate"] == 1.0 and cfg["max_concurrency"] == 3
        for bad in ({"safety_block_rate": 1.5}, {"slow_first_token_seconds": -1}, {"max_concurrency": "x"}):
            r = http.patch(s.base_url + "/_sim/config", json=bad)
            assert r.status_code == 400 and r.json()["error"]
        assert s.configure(max_concurrency=0)["max_concurrency"] is None
        s.configure(stream_cut_rate=0.5)
        assert s.reset(config=True)["config"]["stream_cut_rate"] == 0.0


# ---- as the real client (ChatGoogleGenerativeAI) sees them: README section 1 ---------------------------
def test_client_safety_block_is_an_empty_answer_not_an_exception(client_env):
    client_env.configure(safety_block_rate=1.0)
    r = asyncio.run(llm(max_retries=2).ainvoke(PROMPT))
    assert r.text == "" and r.response_metadata["finish_reason"] == "SAFETY"
    assert any(x["blocked"] for x in r.response_metadata["safety_ratings"])
    chunks = asyncio.run(_collect(llm(max_retries=2)))
    assert "".join(c.text for c in chunks) == ""
    assert [c.response_metadata.get("finish_reason") for c in chunks if c.response_metadata.get("finish_reason")] \
        == ["SAFETY"]
    assert client_env.stats()["requests_total"] == 2            # not retried by the SDK


def test_client_empty_candidates_is_an_empty_answer_without_finish_reason(client_env):
    client_env.configure(empty_candidates_rate=1.0)
    r = asyncio.run(llm(max_retries=2).ainvoke(PROMPT))
    assert r.text == "" and "finish_reason" not in r.response_metadata
    chunks = asyncio.run(_collect(llm(max_retries=2)))
    assert "".join(c.text for c in chunks) == ""
    assert not any(c.response_metadata.get("finish_reason") for c in chunks)
    assert client_env.stats()["requests_total"] == 2


def test_client_stream_cut_raises_httpx2_remote_protocol_error_after_partial_text(client_env):
    client_env.configure(stream_cut_rate=1.0)
    got: list[str] = []

    async def consume():
        async for chunk in llm(max_retries=3).astream(LONG):
            got.append(chunk.text)
    with pytest.raises(httpx2.RemoteProtocolError) as info:
        asyncio.run(consume())
    assert isinstance(info.value, httpx2.TransportError) and not isinstance(info.value, ModelError)
    full = llm().invoke(LONG).text                  # unary: never cut
    assert got and 0 < len("".join(got)) < len(full) and full.startswith("".join(got))
    assert client_env.stats()["requests_total"] == 2    # the cut stream was not retried


def test_client_slow_first_token_with_timeout(client_env):
    client_env.configure(slow_first_token_seconds=1.0)
    t = time.monotonic()
    with pytest.raises(httpx2.TimeoutException):
        asyncio.run(llm(max_retries=1, timeout=0.3).ainvoke(PROMPT))
    assert time.monotonic() - t < 0.9
    assert client_env.stats()["requests_total"] == 1
    with pytest.raises(httpx2.ReadTimeout):
        asyncio.run(llm(max_retries=2, timeout=0.3).ainvoke(PROMPT))
    assert client_env.stats()["requests_total"] == 3        # retried like a hang: max_retries attempts
    r = asyncio.run(llm(max_retries=1, timeout=3).ainvoke(PROMPT))
    assert r.text == knowledge.get("billing-plans").answer


def test_client_max_concurrency_turns_load_into_latency(client_env):
    client_env.configure(max_concurrency=1, slow_first_token_seconds=0.2)

    async def burst():
        model = llm(max_retries=1)
        t = time.monotonic()
        await asyncio.gather(*[model.ainvoke(PROMPT) for _ in range(4)])
        return time.monotonic() - t
    assert asyncio.run(burst()) >= 0.75
    s = client_env.stats()
    assert s["queued_total"] == 3 and s["by_status"] == {"200": 4}
