"""The judge model (LLM-as-a-judge, coursekit/simulator/README.md section 10): verdicts over the whole
knowledge base, agreement with the simulator's own outcomes, bad input, and the real client (plain text,
with_structured_output, streaming) against the simulator, with the request log and counters."""

from __future__ import annotations

import json
from typing import Literal

import httpx
import pytest
from langchain_core.messages import HumanMessage, SystemMessage
from langchain_google_genai import ChatGoogleGenerativeAI
from pydantic import BaseModel, Field

from coursekit.simulator import evaluation, knowledge, prompts
from coursekit.simulator.evaluation import judge, judge_prompt, judge_text
from coursekit.simulator.generate import answer
from coursekit.simulator.models import JUDGE_MODEL, cost_usd, judge_models, known_models, price_for
from coursekit.simulator.tokens import count_tokens

GROUNDED = "제공된 정보로만 답하고, 모르면 모른다고 답하세요."
KEY = {"x-goog-api-key": "test-key"}


# ---- pure: the verdicts over the whole knowledge base ------------------------------------------
def test_verdicts_over_the_whole_knowledge_base():
    entries = knowledge.entries()
    off = knowledge.must_refuse()
    generic = answer(off[0], "gemini-3.5-flash").text
    for e in entries:
        for q in e.questions:
            if knowledge.lookup(q) is None or knowledge.lookup(q).id != e.id:
                continue          # a question variant matched to another entry is judged against that one
            assert (judge(q, e.answer).verdict, judge(q, e.answer).score) == ("correct", 5), q
            assert judge(q, knowledge.brief_answer(e.id)).verdict == "correct"
            for wrong in (knowledge.wrong_answer(e.id), knowledge.wrong_answer(e.id, brief=True)):
                v = judge(q, wrong)
                assert (v.verdict, v.score) == ("hallucinated", 1), (q, wrong)
                assert v.missing_facts and v.entry_id == e.id
            for refusal in (prompts.REFUSAL_TEXT, prompts.NOT_KNOWN_TEXT):
                assert (judge(q, refusal).verdict, judge(q, refusal).score) == ("refused", 2)
            assert (judge(q, generic).verdict, judge(q, generic).score) == ("off_topic", 1), q
            if len(e.facts) >= 2:   # one fact only: partial (the sentence carrying it)
                s = next(s for s in knowledge.sentences(e.answer) if knowledge.has_fact(s, e.facts[0]))
                if knowledge.missing_facts(s, e.facts):
                    assert judge(q, s).verdict == "partial" and judge(q, s).score == 3, (q, s)
    for q in off:
        assert (judge(q, prompts.REFUSAL_TEXT).verdict, judge(q, prompts.REFUSAL_TEXT).score) == ("refused", 5)
        v = judge(q, answer(q, "gemini-3.5-flash").text)
        assert (v.verdict, v.score, v.entry_id) == ("generic", 2, None)


def test_verdicts_agree_with_the_simulators_outcomes_for_every_model():
    """Measured (README 10): the judge's verdict is the simulator's outcome for every model and prompt;
    e.g. gemini-2.0-flash-lite without rules: 20 correct (5), 13 hallucinated (1), 3 refused (2), 8 generic (2)."""
    score_of = {"correct": 5, "hallucinated": 1, "generic": 2}
    means = {}
    for model in known_models():
        for system in (None, GROUNDED):
            scores = []
            for item in evaluation.kb_items():
                a = answer(item.question, model, system=system)
                v = judge(item.question, a.text)
                assert v.verdict == a.outcome, (model, item.question)
                expected = (5 if item.must_refuse else 2) if a.outcome == "refused" else score_of[a.outcome]
                assert v.score == expected
                scores.append(v.score)
            means[model, system] = round(sum(scores) / len(scores), 3)
    assert means["gemini-3.5-flash", None] == round((36 * 5 + 8 * 2) / 44, 3)          # 4.455
    assert means["gemini-3.5-flash", GROUNDED] == 5.0
    assert means["gemini-3.5-flash-lite", None] == round((31 * 5 + 3 + 2 * 2 + 8 * 2) / 44, 3)   # 4.045
    assert means["gemini-3.5-flash-lite", GROUNDED] == round((31 * 5 + 5 * 2 + 8 * 5) / 44, 3)    # 4.659
    assert means["gemini-2.0-flash-lite", None] == round((20 * 5 + 13 + 3 * 2 + 8 * 2) / 44, 3)   # 3.068
    assert means["gemini-2.0-flash-lite", GROUNDED] == round((20 * 5 + 16 * 2 + 8 * 5) / 44, 3)   # 3.909


def test_judge_is_deterministic_and_its_text_is_json():
    q = "요금제가 어떻게 돼요?"
    texts = {judge_text(q, knowledge.wrong_answer("billing-plans")) for _ in range(3)}
    assert len(texts) == 1
    obj = json.loads(texts.pop())
    assert list(obj) == ["score", "verdict", "reason", "entry_id"]
    assert obj["score"] == 1 and obj["verdict"] == "hallucinated" and obj["entry_id"] == "billing-plans"
    assert "100만 토큰" in obj["reason"]          # the missing fact is named


def test_bad_input_gets_a_documented_verdict():
    assert (judge("", "답").verdict, judge("", "답").score) == ("invalid", 1)
    assert judge(None, None).verdict == "invalid"
    assert judge("   ", "답").verdict == "invalid"
    assert (judge("요금제가 어떻게 돼요?", "").verdict, judge("요금제가 어떻게 돼요?", " \n").score) == ("empty", 1)
    assert evaluation.parse_judge_prompt("그냥 아무 말") is None
    assert evaluation.parse_judge_prompt("질문: 요금제?") == ("요금제?", "")
    assert evaluation.parse_judge_prompt('{"question": "요금제?", "answer": 3}') == ("요금제?", "")
    assert evaluation.parse_judge_prompt("채점하세요.\nQuestion: a\nb\nAnswer: c\nd") == ("a\nb", "c\nd")
    text, v, q = evaluation.judge_request("그냥 아무 말", {"responseJsonSchema": "not a schema"})
    assert v.verdict == "invalid" and json.loads(text)["verdict"] == "invalid" and q == ""


def test_schema_is_honoured():
    schema = {"type": "object", "properties": {"verdict": {"type": "string", "enum": ["correct", "hallucinated"]},
                                               "score": {"type": "integer", "minimum": 2, "maximum": 4}}}
    q, e = "요금제가 어떻게 돼요?", knowledge.get("billing-plans")
    assert json.loads(judge_text(q, e.answer, schema)) == {"verdict": "correct", "score": 4}
    s = knowledge.sentences(e.answer)[0]
    assert judge(q, s).verdict == "partial"
    assert json.loads(judge_text(q, s, schema)) == {"verdict": "hallucinated", "score": 3}
    assert json.loads(judge_text(q, "", {"properties": {"score": {"type": "string"}}})) == {"score": "1"}


def test_judge_profile_is_separate_and_priced():
    assert judge_models() == [JUDGE_MODEL] and JUDGE_MODEL not in known_models()
    p = price_for(JUDGE_MODEL)
    assert (p.input_usd_per_1m, p.output_usd_per_1m) == (1.5, 9.0) and p.source
    assert cost_usd(JUDGE_MODEL, 1_000_000, 1_000_000) == 10.5


# ---- HTTP and the real client -------------------------------------------------------------------
@pytest.fixture
def client_env(sim, monkeypatch):
    monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", sim.base_url)
    monkeypatch.setenv("GOOGLE_API_KEY", "client-key")
    return sim


def judge_llm(**kw):
    return ChatGoogleGenerativeAI(model=JUDGE_MODEL, **kw)


class JudgeVerdict(BaseModel):
    score: int = Field(ge=1, le=5)
    verdict: Literal["correct", "hallucinated", "refused", "generic", "off_topic"]
    reason: str


def test_real_client_plain_text_and_request_log(client_env):
    q = "요금제가 어떻게 돼요?"
    wrong = knowledge.wrong_answer("billing-plans")
    r = judge_llm().invoke([SystemMessage("너는 엄격한 평가자다. JSON 으로만 답하라."),
                            HumanMessage("다음 답변을 지식 베이스에 비추어 채점하세요.\n" + judge_prompt(q, wrong))])
    assert r.text == judge_text(q, wrong)
    assert json.loads(r.text)["verdict"] == "hallucinated"
    assert r.usage_metadata["output_tokens"] == count_tokens(r.text)
    # an ordinary answer in the same log: the judge's row is told apart by judge_verdict
    ChatGoogleGenerativeAI(model="gemini-3.5-flash").invoke(q)
    rows = client_env.requests()
    jrow, arow = rows[-2], rows[-1]
    assert jrow["model"] == JUDGE_MODEL and jrow["question"] == q and jrow["entry_id"] == "billing-plans"
    assert (jrow["judge_verdict"], jrow["judge_score"], jrow["outcome"]) == ("hallucinated", 1, None)
    assert (arow["judge_verdict"], arow["judge_score"], arow["outcome"]) == (None, None, "correct")
    assert evaluation.summarize_requests(rows)["items"] == 1
    assert evaluation.summarize_judgements(rows)["judged"] == 1
    assert evaluation.summarize_judgements(rows)["mean_score"] == 1.0
    s = client_env.stats()
    assert s["judge"] == {"requests": 1, "verdicts": {"hallucinated": 1}, "score_sum": 1}
    assert s["outcomes"]["correct"] == 1 and sum(s["outcomes"].values()) == 1
    assert JUDGE_MODEL not in s["outcomes_by_model"]
    assert s["tokens_by_model"][JUDGE_MODEL]["output"] == count_tokens(r.text)


def test_real_client_structured_output_and_stream(client_env):
    q = knowledge.must_refuse()[0]
    v = judge_llm().with_structured_output(JudgeVerdict).invoke(judge_prompt(q, prompts.REFUSAL_TEXT))
    assert isinstance(v, JudgeVerdict) and (v.score, v.verdict) == (5, "refused")
    # a partial answer: the schema's enum has no "partial", the nearest allowed verdict is answered
    e = knowledge.get("billing-plans")
    s = knowledge.sentences(e.answer)[0]
    v = judge_llm().with_structured_output(JudgeVerdict).invoke(judge_prompt(e.questions[0], s))
    assert (v.score, v.verdict) == (3, "hallucinated")
    d = judge_llm().with_structured_output(JudgeVerdict.model_json_schema(), method="json_mode").invoke(
        judge_prompt(e.questions[0], e.answer))
    assert d == {"score": 5, "verdict": "correct", "reason": judge(e.questions[0], e.answer).reason}
    text = "".join(c.text for c in judge_llm().stream(judge_prompt(e.questions[0], "")))
    assert text == judge_text(e.questions[0], "") and json.loads(text)["verdict"] == "empty"
    assert client_env.stats()["judge"]["requests"] == 4


def test_bad_requests_to_the_judge(client_env):
    r = judge_llm().invoke("채점할 질문이 없는 요청")
    assert json.loads(r.text)["verdict"] == "invalid"
    url = client_env.base_url + f"/v1beta/models/{JUDGE_MODEL}:generateContent"
    bad = httpx.post(url, json={"contents": []}, headers=KEY)
    assert bad.status_code == 400 and bad.json()["error"]["status"] == "INVALID_ARGUMENT"
    cut = httpx.post(url, headers=KEY, json={"contents": [{"role": "user", "parts": [{"text": judge_prompt(
        "요금제가 어떻게 돼요?", "세 가지")}]}], "generationConfig": {"maxOutputTokens": 5}}).json()
    assert cut["candidates"][0]["finishReason"] == "MAX_TOKENS"
    assert client_env.requests()[-1]["judge_verdict"] == "partial"
    names = [m["name"] for m in httpx.get(client_env.base_url + "/v1beta/models", headers=KEY).json()["models"]]
    assert f"models/{JUDGE_MODEL}" in names


def test_real_client_structured_output_by_function_calling(client_env):
    """with_structured_output(method="function_calling") sends tools + toolConfig mode ANY: the judge answers
    with a functionCall whose args follow the declaration's parameters (plain and streamed)."""
    e = knowledge.get("billing-plans")
    q, wrong = e.questions[0], knowledge.wrong_answer(e.id)
    structured = judge_llm().with_structured_output(JudgeVerdict, method="function_calling")
    v = structured.invoke(judge_prompt(q, wrong))
    assert isinstance(v, JudgeVerdict) and (v.score, v.verdict, v.reason) == (1, "hallucinated", judge(q, wrong).reason)
    streamed = list(structured.stream(judge_prompt(q, e.answer)))
    assert streamed and streamed[-1].verdict == "correct" and streamed[-1].score == 5
    row = client_env.requests()[-1]
    assert (row["judge_verdict"], row["judge_score"], row["output_tokens"]) == (
        "correct", 5, count_tokens(judge_text(q, e.answer, JudgeVerdict.model_json_schema())))
