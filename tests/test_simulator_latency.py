"""Latency profile: realistic mode is slower than zero, streams are spaced, tails exist.

No tight timing asserts: the machine may be busy. The distribution itself is checked
without sleeping, from the simulator's own seeded latency model.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from coursekit.simulator import SimulatorProcess, knowledge
from coursekit.simulator.app import Simulator
from coursekit.simulator.generate import answer

BODY = {"contents": [{"parts": [{"text": "요금제가 어떻게 돼요?"}], "role": "user"}]}
KEY = {"x-goog-api-key": "k"}


def _quantiles(model: str, n: int = 4000) -> dict[str, float]:
    sim = Simulator(latency="realistic", seed=5)
    prompts = [q for e in knowledge.entries() for q in e.questions] + [f"질문 {i}번: 운영 팁을 알려줘" for i in range(50)]
    xs = []
    for i in range(n):
        a = answer(prompts[i % len(prompts)], model, 0)
        ttft, per_token = sim._latency(model)
        xs.append(ttft + (a.output_tokens + a.thoughts_tokens) * per_token)
    xs.sort()
    return {q: xs[int(q * n) - 1] for q in (0.5, 0.95, 0.99)}


def test_default_model_latency_distribution_matches_the_course_targets():
    q = _quantiles("gemini-3.5-flash")
    assert 0.6 <= q[0.5] <= 1.2          # a typical answer
    assert q[0.95] <= 2.0
    assert 2.0 <= q[0.99] <= 4.0         # a real long tail
    lite, pro = _quantiles("gemini-3.5-flash-lite"), _quantiles("gemini-3.5-pro")
    assert lite[0.5] < q[0.5] < pro[0.5]


def test_zero_mode_never_sleeps():
    sim = Simulator(latency="zero")
    assert sim._latency("gemini-3.5-pro") == (0.0, 0.0)
    assert Simulator(latency="realistic", latency_scale=0)._latency("gemini-3.5-pro") == (0.0, 0.0)


@pytest.fixture(scope="module")
def realistic():
    with SimulatorProcess(latency="realistic", latency_scale=0.5) as sim:
        yield sim


def _timed(client, url, body=BODY):
    t = time.perf_counter()
    r = client.post(url, json=body, headers=KEY)
    assert r.status_code == 200
    return time.perf_counter() - t


def test_realistic_is_slower_than_zero(sim, realistic):
    with httpx.Client(timeout=30) as c:
        zero = min(_timed(c, sim.base_url + "/v1/models/gemini-3.5-flash:generateContent") for _ in range(3))
        real = min(_timed(c, realistic.base_url + "/v1/models/gemini-3.5-flash:generateContent") for _ in range(3))
    assert zero < 0.1
    assert real > 0.15 and real > 3 * zero


def test_latency_scale_can_change_at_runtime(realistic):
    with httpx.Client(timeout=30) as c:
        realistic.configure(latency_scale=0.1)
        fast = min(_timed(c, realistic.base_url + "/v1/models/gemini-3.5-flash:generateContent") for _ in range(3))
        realistic.configure(latency_scale=1.0)
        slow = min(_timed(c, realistic.base_url + "/v1/models/gemini-3.5-flash:generateContent") for _ in range(3))
        realistic.configure(latency_scale=0.5)
    assert slow > 2 * fast


def test_stream_first_chunk_arrives_before_the_end(realistic):
    body = {"contents": [{"parts": [{"text": "장애 대응 절차를 단계별로 아주 자세히 설명해 주세요. " * 3}]}]}
    with httpx.Client(timeout=30) as c:
        t = time.perf_counter()
        with c.stream("POST", realistic.base_url + "/v1/models/gemini-3.5-flash:streamGenerateContent?alt=sse",
                      json=body, headers=KEY) as r:
            arrivals = [time.perf_counter() - t for _ in r.iter_raw()]
    assert len(arrivals) >= 2
    assert arrivals[-1] - arrivals[0] > 0.05     # chunks are spaced by per-token time


def test_concurrent_requests_overlap(realistic):
    """50 concurrent requests take about as long as a slow one, not 50 times one."""
    async def run():
        async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=100)) as c:
            t = time.perf_counter()
            rs = await asyncio.gather(*[c.post(realistic.base_url + "/v1/models/gemini-3.5-flash:generateContent",
                                               json=BODY, headers=KEY) for _ in range(50)])
            return time.perf_counter() - t, rs
    elapsed, rs = asyncio.run(run())
    assert all(r.status_code == 200 for r in rs)
    assert elapsed < 5.0
