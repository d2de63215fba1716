"""The simulator learns prompts: system-instruction rules (grounding, brevity), hallucination by profile,
expected facts and must-refuse questions as data, outcomes in /_sim/stats and /_sim/requests.

Numbers stated in coursekit/simulator/README.md, section 9, are pinned here."""

from __future__ import annotations

import hashlib
import json

import httpx
import pytest

from coursekit.simulator import evaluation, knowledge, prompts
from coursekit.simulator.generate import (
    CORRECT,
    GENERIC,
    HALLUCINATED,
    REFUSED,
    answer,
    brevity_rule,
    grounding_rule,
    invents,
    knows,
)
from coursekit.simulator.models import cost_usd, known_models, profile

GROUNDED = "너는 하늘클라우드 상담원이다. 제공된 정보로만 답하고, 모르면 모른다고 답하세요."
BRIEF = "너는 하늘클라우드 상담원이다. 한두 문장으로 간결하게 답하세요."
BOTH = GROUNDED + " 한두 문장으로 간결하게 답하세요."
PERSONA = "너는 하늘클라우드 상담원이다."
WEAK, LITE, DEFAULT = "gemini-2.0-flash-lite", "gemini-3.5-flash-lite", "gemini-3.5-flash"
KEY = {"x-goog-api-key": "test-key"}
http = httpx.Client(timeout=10)


def kb_outcomes(model, system=None, seed=0):
    return [answer(e.questions[0], model, seed=seed, system=system).outcome for e in knowledge.entries()]


# ---- compatibility: the default model without a system instruction is what it was ------------------
# Recorded from the simulator BEFORE prompts were read (commit 26fbffc): steps 01-02 rely on these.
GOLDEN = {
    "요금제가 어떻게 돼요?":
        "하늘클라우드 요금제는 무료(Free), 스탠다드(Standard), 엔터프라이즈(Enterprise) 세 가지입니다. "
        "무료는 월 100만 토큰까지, 스탠다드는 사용한 토큰만큼 종량제로 과금되고, 엔터프라이즈는 전용 용량과 SLA 99.95% 를 제공합니다.",
    "오늘 날씨 어때?": "네, 안내해 드리겠습니다. 비용과 응답 시간 사이에는 보통 절충이 필요하므로 두 지표를 함께 측정해 보세요. "
                  "오류가 발생하면 재시도와 타임아웃을 함께 설정해 서비스 전체가 멈추지 않도록 하세요. "
                  "관련 설정과 로그를 함께 살펴보면 원인을 더 빨리 찾을 수 있습니다. 더 궁금한 점이 있으면 말씀해 주세요.",
    "쿠버네티스로 서비스를 옮기면 좋은 점이 뭔가요?":
        "네, 안내해 드리겠습니다. 처음에는 단순한 방법으로 시작하고, 측정한 결과를 보고 점진적으로 개선하는 것이 좋습니다. "
        "운영 환경에서는 변경 사항을 먼저 일부에만 적용해 보고 지표를 비교하는 방법을 권장합니다. "
        "오류가 발생하면 재시도와 타임아웃을 함께 설정해 서비스 전체가 멈추지 않도록 하세요. "
        "자동화된 테스트를 갖춰 두면 같은 문제가 다시 생기는 것을 막을 수 있습니다. 추가로 필요한 내용이 있으면 알려 주세요.",
    "안녕하세요": "확인해 보았습니다. 자동화된 테스트를 갖춰 두면 같은 문제가 다시 생기는 것을 막을 수 있습니다. "
             "사용자 입장에서 어떤 결과가 가장 중요한지 먼저 정하면 선택이 쉬워집니다. 추가로 필요한 내용이 있으면 알려 주세요.",
}
GOLDEN_PROMPTS = ["요금제가 어떻게 돼요?", "하늘클라우드 요금제는 어떻게 되나요?", "API 키가 유출됐어요 어떡하죠", "오늘 날씨 어때?",
                  "파이썬 데코레이터를 설명해 주세요", "쿠버네티스로 서비스를 옮기면 좋은 점이 뭔가요?", "안녕하세요",
                  "운영 중인 챗봇의 응답이 느려졌을 때 무엇부터 확인해야 하나요? 자세히 알려 주세요."]
# sha256 over "question\x1fanswer\n" for GOLDEN_PROMPTS + every question of the knowledge base (seed 0)
GOLDEN_SHA256 = "e634109e8c44238c695b70d071dc5dc6ec7de68d370c6725c6b497d2ab8b102e"


@pytest.mark.parametrize("system", [None, PERSONA, "You are a helpful assistant."])
def test_default_model_unchanged_without_rules(system):
    for q, text in GOLDEN.items():
        assert answer(q, DEFAULT, system=system).text == text, q
    h = hashlib.sha256()
    for q in GOLDEN_PROMPTS + [q for e in knowledge.entries() for q in e.questions]:
        h.update((q + "\x1f" + answer(q, DEFAULT, seed=0, system=system).text + "\n").encode())
    assert h.hexdigest() == GOLDEN_SHA256


# ---- the knowledge base as evaluation data ------------------------------------------------------
def test_every_entry_has_facts_that_its_wrong_answer_lacks():
    for e in knowledge.entries():
        assert e.facts and knowledge.expected_facts(e.id) == e.facts
        assert not knowledge.missing_facts(e.answer, e.facts), e.id
        assert not knowledge.missing_facts(knowledge.brief_answer(e.id), e.facts), e.id
        for old, _new in e.wrong:
            assert old in e.answer, (e.id, old)
        for brief in (False, True):
            wrong = knowledge.wrong_answer(e.id, brief)
            assert knowledge.missing_facts(wrong, e.facts) == e.facts, (e.id, brief, wrong)
            assert not prompts.is_refusal(wrong)
        assert not prompts.is_refusal(e.answer)
    with pytest.raises(KeyError):
        knowledge.expected_facts("no-such-entry")


def test_fact_match_ignores_case_and_spaces():
    assert knowledge.has_fact("신규 가입자에게 30만원을 드립니다", "30만 원")
    assert knowledge.has_fact("TLS 1.2 이상", "tls 1.2")
    assert not knowledge.has_fact("50만 원", "30만 원")


def test_must_refuse_questions_are_outside_the_knowledge_base():
    qs = knowledge.must_refuse()
    assert len(qs) >= 5
    for q in qs:
        assert knowledge.lookup(q) is None, q


# ---- rule detectors ---------------------------------------------------------------------------
@pytest.mark.parametrize("text", [
    "제공된 정보로만 답하세요.", "주어진 문서에 있는 내용만 사용해 답하세요", "지식 베이스에 있는 내용만으로 답해",
    "모르면 모른다고 답하세요", "모르는 내용은 지어내지 마세요", "확실하지 않으면 추측하지 마세요.",
    "Answer only from the provided information.", "Only use the provided context.",
    "If you don't know, say you don't know.", "Don\u2019t make up answers.", "Never guess.",
])
def test_grounding_rule_detected(text):
    assert grounding_rule(text) and prompts.rules(text).grounding


@pytest.mark.parametrize("text", [None, "", PERSONA, "You are a helpful assistant.", "친절하게 답하세요.",
                                  "개인정보를 묻지 마세요.", "Answer in Korean.", BRIEF])
def test_no_grounding_rule(text):
    assert not grounding_rule(text)


@pytest.mark.parametrize("text,expected", [
    ("간결하게 답하세요", True), ("한두 문장으로 답해", True), ("짧게 답해 주세요", True), ("핵심만 말해", True),
    ("Be concise.", True), ("Answer briefly.", True), ("Answer in one or two sentences.", True),
    ("완전한 문장으로 답하세요", False), (PERSONA, False), (GROUNDED, False), (None, False),
])
def test_brevity_rule(text, expected):
    assert brevity_rule(text) is expected


def test_refusal_texts_are_recognised():
    assert prompts.is_refusal(prompts.REFUSAL_TEXT) and prompts.is_refusal(prompts.NOT_KNOWN_TEXT)
    assert prompts.is_refusal("모르겠습니다.") and prompts.is_refusal("I don't know.")
    for q in GOLDEN_PROMPTS:
        assert not prompts.is_refusal(answer(q, DEFAULT).text)


# ---- grounding, hallucination, brevity --------------------------------------------------------------
@pytest.mark.parametrize("model,known,invented", [(WEAK, 20, 13), (LITE, 31, 3), (DEFAULT, 36, 0),
                                                  ("gemini-3.5-pro", 36, 0)])
def test_exact_recall_and_hallucination_counts(model, known, invented):
    """round(kb_recall x 36) entries known; round(hallucination_rate x unknown) of the others invented."""
    p = profile(model)
    ids = [e.id for e in knowledge.entries()]
    assert sum(knows(model, i) for i in ids) == known == int(p.kb_recall * len(ids) + 0.5)
    unknown = [i for i in ids if not knows(model, i)]
    assert sum(invents(model, i) for i in unknown) == invented == int(p.hallucination_rate * len(unknown) + 0.5)
    out = kb_outcomes(model)
    assert (out.count(CORRECT), out.count(HALLUCINATED), out.count(REFUSED)) == (known, invented,
                                                                                   len(ids) - known - invented)


def test_hallucination_rate_band_over_the_knowledge_base():
    n = len(knowledge.entries())
    assert 0.30 <= kb_outcomes(WEAK).count(HALLUCINATED) / n <= 0.42       # 13/36 = 0.36
    assert 0.05 <= kb_outcomes(LITE).count(HALLUCINATED) / n <= 0.12       # 3/36 = 0.08
    for m in (DEFAULT, "gemini-3.5-pro", "gemini-3.5-flash-thinking"):
        assert kb_outcomes(m).count(HALLUCINATED) == 0


@pytest.mark.parametrize("model", [WEAK, LITE])
def test_grounding_makes_weak_models_refuse_instead_of_hallucinate(model):
    free, grounded = kb_outcomes(model), kb_outcomes(model, GROUNDED)
    assert free.count(HALLUCINATED) > 0 and grounded.count(HALLUCINATED) == 0
    assert grounded.count(CORRECT) == free.count(CORRECT)            # grounding does not make a model smarter
    assert grounded.count(REFUSED) == free.count(REFUSED) + free.count(HALLUCINATED)
    e = next(e for e in knowledge.entries() if invents(model, e.id) and not knows(model, e.id))
    wrong = answer(e.questions[0], model)
    assert wrong.text == knowledge.wrong_answer(e.id) and wrong.matched_id == e.id and wrong.entry_id is None
    assert answer(e.questions[0], model, system=GROUNDED).text == prompts.REFUSAL_TEXT


@pytest.mark.parametrize("model", known_models())
def test_grounding_refuses_questions_outside_the_knowledge_base(model):
    for q in knowledge.must_refuse():
        assert answer(q, model).outcome == GENERIC
        grounded = answer(q, model, system=GROUNDED)
        assert grounded.outcome == REFUSED and grounded.text == prompts.REFUSAL_TEXT


def test_grounding_keeps_known_answers_of_the_default_model():
    for e in knowledge.entries():
        assert answer(e.questions[0], DEFAULT, system=GROUNDED).text == e.answer


def test_brevity_lowers_output_tokens_and_cost_and_keeps_facts():
    questions = [e.questions[0] for e in knowledge.entries()] + list(knowledge.must_refuse())
    # measured (README 9): default 3109 -> 2176 tokens (0.70), pro 0.50, flash-lite 0.78, 2.0-flash-lite 0.80
    for model in known_models():
        full = [answer(q, model) for q in questions]
        brief = [answer(q, model, system=BRIEF) for q in questions]
        t_full, t_brief = sum(a.output_tokens for a in full), sum(a.output_tokens for a in brief)
        assert t_brief <= 0.85 * t_full, (model, t_brief, t_full)
        assert cost_usd(model, 0, t_brief) < cost_usd(model, 0, t_full)
        assert [a.outcome for a in brief] == [a.outcome for a in full]   # same correctness, shorter
    kb_full = sum(answer(e.questions[0], DEFAULT).output_tokens for e in knowledge.entries())
    kb_brief = sum(answer(e.questions[0], DEFAULT, system=BRIEF).output_tokens for e in knowledge.entries())
    assert 0.7 <= kb_brief / kb_full <= 0.9                             # measured: 1889 / 2344 = 0.81


def test_answers_deterministic_per_prompt_system_model_seed():
    for system in (None, GROUNDED, BRIEF, BOTH):
        for q in ("쿠버네티스로 서비스를 옮기면 좋은 점이 뭔가요?", knowledge.entries()[5].questions[0]):
            for model in (DEFAULT, WEAK):
                assert answer(q, model, seed=3, system=system) == answer(q, model, seed=3, system=system)
    q = "쿠버네티스로 서비스를 옮기면 좋은 점이 뭔가요?"
    assert answer(q, DEFAULT, seed=0, system=BRIEF).text != answer(q, DEFAULT, seed=1, system=BRIEF).text
    assert answer(q, DEFAULT, system=BRIEF).text != answer(q, DEFAULT).text


@pytest.mark.parametrize("system", [None, GROUNDED, BRIEF, BOTH])
@pytest.mark.parametrize("model", known_models())
def test_grading_the_text_gives_the_simulators_outcome(model, system):
    for item in evaluation.kb_items() + evaluation.kb_items(question_index=1, refusals=False):
        a = answer(item.question, model, system=system)
        assert evaluation.grade(a.text, item.facts) == a.outcome, (item, a)


def test_summarize_metrics():
    items = evaluation.kb_items()
    s = evaluation.summarize([(i, answer(i.question, WEAK).outcome) for i in items])
    assert (s["kb_items"], s["must_refuse_items"]) == (36, len(knowledge.must_refuse()))
    assert s["accuracy"] == round(20 / 36, 4) and s["hallucination_rate"] == round(13 / 36, 4)
    assert s["refusal_accuracy"] == 0.0
    g = evaluation.summarize([(i, answer(i.question, WEAK, system=GROUNDED).outcome) for i in items])
    assert g["accuracy"] == s["accuracy"] and g["hallucination_rate"] == 0.0 and g["refusal_accuracy"] == 1.0
    assert g["false_refusal_rate"] == round(16 / 36, 4)


# ---- over HTTP: systemInstruction read, outcomes counted and logged ------------------------------
def generate(sim, model, question, system=None, action="generateContent", **extra):
    body = {"contents": [{"role": "user", "parts": [{"text": question}]}], **extra}
    if system is not None:
        body["systemInstruction"] = {"parts": [{"text": system}]}
    qs = "?alt=sse" if action == "streamGenerateContent" else ""
    r = http.post(f"{sim.base_url}/v1beta/models/{model}:{action}{qs}", json=body, headers=KEY)
    assert r.status_code == 200, r.text
    if action == "streamGenerateContent":
        chunks = [json.loads(e.removeprefix("data: ")) for e in r.text.split("\r\n\r\n") if e]
        return "".join(c["candidates"][0]["content"]["parts"][0]["text"] for c in chunks)
    return r.json()["candidates"][0]["content"]["parts"][0]["text"]


def test_system_instruction_over_http_counts_and_logs_outcomes(sim):
    e = next(e for e in knowledge.entries() if invents(WEAK, e.id))
    assert generate(sim, WEAK, e.questions[0]) == knowledge.wrong_answer(e.id)
    assert generate(sim, WEAK, e.questions[0], GROUNDED) == prompts.REFUSAL_TEXT
    assert generate(sim, WEAK, e.questions[0], GROUNDED, action="streamGenerateContent") == prompts.REFUSAL_TEXT
    assert generate(sim, DEFAULT, "오늘 날씨 어때?") == GOLDEN["오늘 날씨 어때?"]
    assert generate(sim, DEFAULT, "요금제가 어떻게 돼요?", BRIEF) == knowledge.brief_answer("billing-plans")
    s = sim.stats()
    assert s["outcomes"] == {CORRECT: 1, REFUSED: 2, HALLUCINATED: 1, GENERIC: 1}
    assert s["outcomes_by_model"] == {WEAK: {CORRECT: 0, REFUSED: 2, HALLUCINATED: 1, GENERIC: 0},
                                      DEFAULT: {CORRECT: 1, REFUSED: 0, HALLUCINATED: 0, GENERIC: 1}}
    assert s["by_system"] == {"none": 2, prompts.system_hash(GROUNDED): 2, prompts.system_hash(BRIEF): 1}
    rows = sim.requests()
    assert [r["outcome"] for r in rows] == [HALLUCINATED, REFUSED, REFUSED, GENERIC, CORRECT]
    assert [r["seq"] for r in rows] == [1, 2, 3, 4, 5]
    last = rows[-1]
    assert last["model"] == DEFAULT and last["entry_id"] == "billing-plans" and last["brevity"] is True
    assert last["grounding"] is False and last["system_hash"] == prompts.system_hash(BRIEF)
    assert last["question"] == "요금제가 어떻게 돼요?" and last["finish_reason"] == "STOP"
    assert rows[2]["action"] == "streamGenerateContent" and rows[0]["system_hash"] is None
    assert sum(r["output_tokens"] for r in rows) == s["tokens"]["output"]
    assert sim.requests(2) == rows[-2:] and sim.requests(0) == []
    bad = http.get(sim.base_url + "/_sim/requests?limit=-1")
    assert bad.status_code == 400 and "limit" in bad.json()["error"]
    sim.reset()
    assert sim.requests() == [] and sim.stats()["outcomes"][CORRECT] == 0


def test_truncated_answer_is_graded_by_its_text(sim):
    generate(sim, DEFAULT, "요금제가 어떻게 돼요?", generationConfig={"maxOutputTokens": 8})
    row = sim.requests(1)[0]
    assert row["finish_reason"] == "MAX_TOKENS" and row["outcome"] == HALLUCINATED


def test_an_evaluation_recomputed_from_the_simulator_log(sim):
    """What an eval gate computes from the answers equals what a grader computes from /_sim/requests."""
    for model, system in ((WEAK, None), (WEAK, BOTH), (DEFAULT, None), (DEFAULT, GROUNDED)):
        sim.reset()
        items = evaluation.kb_items()
        graded = [(i, evaluation.grade(generate(sim, model, i.question, system), i.facts)) for i in items]
        assert evaluation.summarize(graded) == evaluation.summarize_requests(sim.requests())
