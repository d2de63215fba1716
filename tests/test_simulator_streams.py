"""The simulator's stream counters (`/_sim/stats` -> "streams": started, completed, abandoned), with the REAL client.

`abandoned` proves that a caller (the step 06 service's `/chat/stream`) closed its upstream stream when its own
client left: the simulator stops generating at once and counts the stream as abandoned, not completed.
Pins the "streams" row of coursekit/simulator/README.md (stats section).
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from langchain_google_genai import ChatGoogleGenerativeAI

LONG = "운영 중인 챗봇의 응답이 느려졌을 때 무엇부터 확인해야 하나요? 자세히 알려 주세요."
STREAM = "/v1/models/gemini-3.5-flash:streamGenerateContent?alt=sse"
BODY = {"contents": [{"parts": [{"text": LONG}], "role": "user"}]}
KEY = {"x-goog-api-key": "test-key"}


@pytest.fixture
def client_env(sim, monkeypatch):
    monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", sim.base_url)
    monkeypatch.setenv("GOOGLE_API_KEY", "sim-any-key")
    return sim


def llm(**kw):
    return ChatGoogleGenerativeAI(model="gemini-3.5-flash", max_retries=1, **kw)


def _streams_after(sim, want: dict, timeout: float = 2.0) -> dict:
    """The simulator's stream counters once they reach `want` (or after `timeout`)."""
    from coursekit.procs import wait_until

    wait_until(lambda: all(sim.stats()["streams"][k] == v for k, v in want.items()), timeout, interval=0.02)
    return sim.stats()["streams"]


def test_full_stream_is_completed(client_env):
    assert client_env.stats()["streams"] == {"started": 0, "completed": 0, "abandoned": 0}

    async def consume():
        return [c.text async for c in llm().astream(LONG)]
    chunks = asyncio.run(consume())
    assert len(chunks) >= 3
    assert _streams_after(client_env, {"completed": 1}) == {"started": 1, "completed": 1, "abandoned": 0}


def test_client_closing_after_one_chunk_is_abandoned_and_generation_stops(client_env):
    client_env.configure(slow_stream_chunk_seconds=0.3)

    async def one_chunk():
        gen = llm().astream(LONG)
        first = await gen.__anext__()
        await gen.aclose()
        return first.text
    t = time.monotonic()
    assert asyncio.run(one_chunk())
    s = _streams_after(client_env, {"abandoned": 1})
    assert s == {"started": 1, "completed": 0, "abandoned": 1}, s
    assert time.monotonic() - t < 2.0
    time.sleep(0.5)      # longer than one chunk: nothing more was generated, never completed later
    assert client_env.stats()["streams"] == {"started": 1, "completed": 0, "abandoned": 1}
    assert client_env.stats()["in_flight"] == 0


def test_disconnect_during_first_token_wait_is_abandoned(sim):
    sim.configure(slow_first_token_seconds=1.0)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(sim.base_url + STREAM, json=BODY, headers=KEY, timeout=0.3)
    s = _streams_after(sim, {"abandoned": 1})
    assert s == {"started": 1, "completed": 0, "abandoned": 1}, s


def test_stream_cut_is_not_abandoned_and_reset_clears(sim):
    sim.configure(stream_cut_rate=1.0)
    with pytest.raises(httpx.RemoteProtocolError):
        with httpx.stream("POST", sim.base_url + STREAM, json=BODY, headers=KEY, timeout=10) as r:
            for _ in r.iter_raw():
                pass
    time.sleep(0.2)
    s = sim.stats()
    assert s["faults"]["stream_cut"] == 1
    assert s["streams"] == {"started": 1, "completed": 0, "abandoned": 0}
    sim.reset()
    assert sim.stats()["streams"] == {"started": 0, "completed": 0, "abandoned": 0}
