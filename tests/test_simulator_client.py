"""The real ChatGoogleGenerativeAI against the simulator: every call style, usage, faults, retries.

These tests pin the facts written at the top of coursekit/simulator/README.md.
"""

from __future__ import annotations

import asyncio
import json
import time

import httpx2
import pytest
from google.genai import errors as genai_errors
from langchain_core.exceptions import ModelError
from langchain_core.messages import HumanMessage, SystemMessage
from langchain_google_genai import ChatGoogleGenerativeAI
from langchain_google_genai.chat_models import (
    ChatGoogleGenerativeAIError,
    GoogleAPIError,
    GoogleInvalidRequestError,
    GoogleRateLimitError,
)

from coursekit.simulator import knowledge
from coursekit.simulator.models import cost_usd

PROMPT = "요금제가 어떻게 돼요?"


@pytest.fixture
def client_env(sim, monkeypatch):
    monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", sim.base_url)
    monkeypatch.setenv("GOOGLE_API_KEY", "client-key")
    return sim


def llm(model="gemini-3.5-flash", **kw):
    return ChatGoogleGenerativeAI(model=model, **kw)


def test_invoke_answers_from_kb_with_usage(client_env):
    r = llm().invoke(PROMPT)
    assert r.text == knowledge.get("billing-plans").answer
    u = r.usage_metadata
    assert u["input_tokens"] > 0 and u["output_tokens"] > 0
    assert u["total_tokens"] == u["input_tokens"] + u["output_tokens"]
    s = client_env.stats()
    assert s["requests_total"] == 1 and s["by_key"] == {"client-key": 1}
    assert s["tokens"]["output"] == u["output_tokens"]


def test_system_message_and_history(client_env):
    r = llm().invoke([SystemMessage("너는 하늘클라우드 상담원이다."), HumanMessage("API 키는 어디서 발급하나요?")])
    assert r.text == knowledge.get("api-key-issue").answer


def test_ainvoke(client_env):
    r = asyncio.run(llm().ainvoke(PROMPT))
    assert r.text == knowledge.get("billing-plans").answer


def test_one_client_works_across_event_loops(client_env):
    """The README says one ChatGoogleGenerativeAI may serve several event loops (measured: two
    asyncio.run calls in a row). Services still make it in the lifespan and aclose() it there."""
    client = llm()
    first = asyncio.run(client.ainvoke(PROMPT))
    second = asyncio.run(client.ainvoke(PROMPT))
    assert first.text == second.text == knowledge.get("billing-plans").answer
    assert client_env.stats()["requests_total"] == 2


def test_stream_and_astream_equal_invoke(client_env):
    prompt = "운영 중인 챗봇의 응답이 느려졌을 때 무엇부터 확인해야 하나요? 자세히 알려 주세요."
    full = llm().invoke(prompt)
    chunks = list(llm().stream(prompt))
    assert len([c for c in chunks if c.text]) >= 3
    assert "".join(c.text for c in chunks) == full.text
    usage = [c.usage_metadata for c in chunks if c.usage_metadata]
    assert len(usage) == 1 and usage[0]["output_tokens"] == full.usage_metadata["output_tokens"]

    async def collect():
        return [c async for c in llm().astream(prompt)]
    achunks = asyncio.run(collect())
    assert "".join(c.text for c in achunks) == full.text
    assert client_env.stats()["by_action"] == {"generateContent": 1, "streamGenerateContent": 2}


def test_batch_and_abatch(client_env):
    prompts = [PROMPT, "API 키가 유출됐어요", "오늘 날씨 어때?"]
    out = llm().batch(prompts)
    assert [o.text for o in out][:2] == [knowledge.get("billing-plans").answer, knowledge.get("api-key-leak").answer]
    aout = asyncio.run(llm().abatch(prompts))
    assert [o.text for o in aout] == [o.text for o in out]
    assert client_env.stats()["requests_total"] == 6


def test_determinism_and_seed(client_env):
    q = "쿠버네티스로 서비스를 옮기면 좋은 점이 뭔가요?"
    a, b = llm().invoke(q).text, llm().invoke(q).text
    assert a == b
    client_env.configure(seed=42)
    assert llm().invoke(q).text != a


def test_models_differ_in_quality_and_thinking(client_env):
    weak = llm("gemini-2.0-flash-lite")    # one instance: building a client costs ~0.2 s
    weak_misses = [e for e in knowledge.entries() if weak.invoke(e.questions[0]).text != e.answer]
    assert 3 <= len(weak_misses) < len(knowledge.entries())
    r = llm("gemini-3.5-pro").invoke(PROMPT)
    u = r.usage_metadata
    thoughts = client_env.stats()["tokens"]["thoughts"]
    assert thoughts > 0 and u["output_token_details"]["reasoning"] == thoughts
    # LangChain's output_tokens already include thinking tokens
    assert u["output_tokens"] == client_env.stats()["tokens_by_model"]["gemini-3.5-pro"]["output"] + thoughts
    assert cost_usd("gemini-3.5-pro", u["input_tokens"], u["output_tokens"]) > \
        cost_usd("gemini-3.5-flash", u["input_tokens"], u["output_tokens"] - thoughts)


def test_unknown_model_name_works(client_env):
    assert llm("gemini-9-ultra").invoke(PROMPT).text
    assert client_env.stats()["by_model"] == {"gemini-9-ultra": 1}


def test_count_tokens(client_env):
    n = llm().get_num_tokens("토큰을 세어 봅시다")
    assert n == llm().invoke("토큰을 세어 봅시다").usage_metadata["input_tokens"]


# ---- faults as the client sees them ---------------------------------------------------------
FAULTS = [
    ("error_429_rate", GoogleRateLimitError),
    ("error_500_rate", GoogleAPIError),
    ("error_503_rate", GoogleAPIError),
]


@pytest.mark.parametrize("rate,exc", FAULTS)
@pytest.mark.parametrize("max_retries,attempts", [(0, 1), (1, 1), (2, 2)])
def test_fault_exception_and_attempts(client_env, rate, exc, max_retries, attempts):
    client_env.configure(**{rate: 1.0})
    with pytest.raises(exc) as info:
        llm(max_retries=max_retries).invoke(PROMPT)
    assert isinstance(info.value, ModelError)
    assert client_env.stats()["requests_total"] == attempts


def test_exception_families():
    # 500/503 are NOT ChatGoogleGenerativeAIError; a handler catching only that misses them
    assert issubclass(GoogleAPIError, genai_errors.ServerError)
    assert not issubclass(GoogleAPIError, ChatGoogleGenerativeAIError)
    assert issubclass(GoogleRateLimitError, ChatGoogleGenerativeAIError)
    assert issubclass(GoogleInvalidRequestError, ChatGoogleGenerativeAIError)


def test_async_fault_exceptions(client_env):
    client_env.configure(error_503_rate=1.0)
    with pytest.raises(GoogleAPIError):
        asyncio.run(llm(max_retries=1).ainvoke(PROMPT))
    client_env.configure(error_503_rate=0.0, error_429_rate=1.0)

    async def consume():
        async for _ in llm(max_retries=1).astream(PROMPT):
            pass
    with pytest.raises(GoogleRateLimitError):
        asyncio.run(consume())


def test_hang_with_timeout_raises_httpx2_timeout(client_env):
    client_env.configure(hang_rate=1.0, hang_seconds=5)
    t = time.monotonic()
    with pytest.raises(httpx2.TimeoutException):
        llm(max_retries=1, timeout=0.5).invoke(PROMPT)
    elapsed = time.monotonic() - t
    assert 0.4 < elapsed < 2.5                      # timeout= is in seconds, per attempt
    assert client_env.stats()["requests_total"] == 1


def test_invalid_key_is_not_retried(client_env):
    client_env.configure(valid_keys=["only-this"])
    with pytest.raises(GoogleInvalidRequestError):
        llm().invoke(PROMPT)                          # default retries, but 400 is not retried
    assert client_env.stats()["requests_total"] == 1


def test_quota_seen_by_client(client_env):
    client_env.configure(quota_rpm=2)
    model = llm(max_retries=1)
    model.invoke(PROMPT)
    model.invoke(PROMPT)
    with pytest.raises(GoogleRateLimitError):
        model.invoke(PROMPT)


def test_default_retries_are_six_attempts_over_half_a_minute(client_env):
    """The SDK default (no max_retries): 6 attempts, ~33 s before a persistent 429 surfaces."""
    client_env.configure(error_429_rate=1.0)
    t = time.monotonic()
    with pytest.raises(GoogleRateLimitError):
        llm().invoke(PROMPT)
    elapsed = time.monotonic() - t
    assert client_env.stats()["requests_total"] == 6
    assert 20 < elapsed < 60


def test_malformed_200_is_not_a_model_error(client_env):
    """A 200 with a truncated body: the client raises json.JSONDecodeError (invoke/ainvoke) or
    google.genai.errors.UnknownApiResponseError (stream), both ValueError and neither a langchain
    ModelError nor an httpx2 error: only a service's catch-all handler sees them. Not retried."""
    client_env.configure(malformed_rate=1.0)
    for call in (lambda: llm(max_retries=2).invoke(PROMPT),
                 lambda: asyncio.run(llm(max_retries=2).ainvoke(PROMPT))):
        with pytest.raises(json.JSONDecodeError) as info:
            call()
        assert not isinstance(info.value, (ModelError, httpx2.HTTPError))

    async def consume():
        async for _ in llm(max_retries=2).astream(PROMPT):
            pass
    with pytest.raises(genai_errors.UnknownApiResponseError) as info:
        asyncio.run(consume())
    assert isinstance(info.value, ValueError) and not isinstance(info.value, ModelError)
    s = client_env.stats()
    assert s["faults"]["malformed"] == s["requests_total"] == 3   # not retried


# ---- prompts: a SystemMessage is the systemInstruction the simulator reads ---------------------------
def test_system_message_is_sent_as_system_instruction_and_its_rules_apply(client_env):
    from coursekit.simulator import prompts
    from coursekit.simulator.generate import invents

    grounded = "너는 하늘클라우드 상담원이다. 제공된 정보로만 답하고, 모르면 모른다고 답하세요."
    brief = "너는 하늘클라우드 상담원이다. 한두 문장으로 간결하게 답하세요."
    weak = llm("gemini-2.0-flash-lite")
    e = next(e for e in knowledge.entries() if invents("gemini-2.0-flash-lite", e.id))
    assert weak.invoke(e.questions[0]).text == knowledge.wrong_answer(e.id)           # invents without the rule
    r = weak.invoke([SystemMessage(grounded), HumanMessage(e.questions[0])])
    assert r.text == prompts.REFUSAL_TEXT                                              # refuses with it
    row = client_env.requests(1)[0]
    # the SystemMessage travelled as systemInstruction (its exact text), not as a user turn
    assert row["system_hash"] == prompts.system_hash(grounded) and row["grounding"] is True
    assert row["question"] == e.questions[0] and row["outcome"] == "refused"

    flash = llm()
    q = "쿠버네티스로 서비스를 옮기면 좋은 점이 뭔가요?"
    long, short = flash.invoke(q), flash.invoke([SystemMessage(brief), HumanMessage(q)])
    assert short.usage_metadata["output_tokens"] < long.usage_metadata["output_tokens"] / 2
    assert client_env.requests(1)[0]["brevity"] is True
    s = client_env.stats()["outcomes_by_model"]
    assert s["gemini-2.0-flash-lite"]["hallucinated"] == 1 and s["gemini-3.5-flash"]["generic"] == 2
