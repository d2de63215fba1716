"""Grading answers against the knowledge base: the building blocks of an evaluation set.

An evaluation item is a question with the facts its answer must contain (a knowledge-base
question) or with none (a question that must be refused). An answer's outcome is read from
its text alone, so it works for any LLM, and for the simulator it equals the outcome the
simulator itself logs in GET /_sim/requests:

    correct       every expected fact is in the answer (has_fact: case and whitespace ignored)
    refused       the answer is a refusal (prompts.is_refusal), facts or not
    hallucinated  a knowledge-base question answered without (all) its facts and not refused
    generic       a question with no expected facts (off the knowledge base) answered anyway

    >>> from coursekit.simulator import evaluation
    >>> items = evaluation.kb_items()            # one item per entry + the must-refuse examples
    >>> evaluation.grade("제공된 정보로는 답할 수 없습니다.", ("30만 원",))
    'refused'
    >>> evaluation.summarize([(item, outcome), ...])   # accuracy, hallucination_rate, ...

LLM-as-a-judge (README section 10): the judge model "gemini-3.5-flash-judge" answers the JSON of
judge(question, answer) for a prompt "질문: ...\n답변: ..." (judge_prompt), so a grader recomputes it:

    >>> evaluation.judge("요금제가 어떻게 돼요?", "제공된 정보로는 답할 수 없습니다.").score
    2
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import orjson

from . import knowledge
from .generate import CORRECT, GENERIC, HALLUCINATED, OUTCOMES, REFUSED
from .prompts import is_refusal

__all__ = ["Item", "kb_items", "grade", "summarize", "summarize_requests", "CORRECT", "REFUSED",
           "HALLUCINATED", "GENERIC", "OUTCOMES", "Verdict", "judge", "judge_text", "judge_prompt",
           "parse_judge_prompt", "judge_request", "summarize_judgements", "JUDGE_VERDICTS"]


@dataclass(frozen=True)
class Item:
    question: str
    entry_id: str | None = None               # None: the question must be refused
    facts: tuple[str, ...] = field(default=())

    @property
    def must_refuse(self) -> bool:
        return self.entry_id is None


def kb_items(question_index: int = 0, refusals: bool = True) -> list[Item]:
    """One item per knowledge-base entry (its question number `question_index`, wrapping around)
    plus, with refusals=True, one item per knowledge.must_refuse() question."""
    items = [Item(e.questions[question_index % len(e.questions)], e.id, e.facts) for e in knowledge.entries()]
    if refusals:
        items += [Item(q) for q in knowledge.must_refuse()]
    return items


def grade(text: str, facts=()) -> str:
    """The outcome of one answer given the facts it should contain (empty: must be refused)."""
    if is_refusal(text):
        return REFUSED
    if not facts:
        return GENERIC
    return CORRECT if not knowledge.missing_facts(text, facts) else HALLUCINATED


def summarize(graded) -> dict:
    """Metrics of [(Item, outcome), ...]:

    accuracy            correct / knowledge-base items
    hallucination_rate  hallucinated / knowledge-base items
    false_refusal_rate  refused / knowledge-base items
    refusal_accuracy    refused / must-refuse items (1.0 when there are none)
    """
    kb = [o for item, o in graded if not item.must_refuse]
    off = [o for item, o in graded if item.must_refuse]

    def rate(outcomes, what, empty=0.0):
        return round(sum(o == what for o in outcomes) / len(outcomes), 4) if outcomes else empty

    counts = {o: 0 for o in OUTCOMES}
    for _, o in graded:
        counts[o] += 1
    return {"items": len(graded), "kb_items": len(kb), "must_refuse_items": len(off), "outcomes": counts,
            "accuracy": rate(kb, CORRECT), "hallucination_rate": rate(kb, HALLUCINATED),
            "false_refusal_rate": rate(kb, REFUSED), "refusal_accuracy": rate(off, REFUSED, 1.0)}


def summarize_requests(requests) -> dict:
    """summarize() recomputed from the simulator's own log (GET /_sim/requests rows): a logged
    request with an entry_id counts as a knowledge-base item, one without as a must-refuse item.
    Judge calls (rows with a judge_verdict) are not answers and are skipped."""
    return summarize([(Item(r["question"], r["entry_id"]), r["outcome"]) for r in requests
                      if r.get("judge_verdict") is None])


# ---- LLM-as-a-judge (README 10) ------------------------------------------------------------------
# The judge model (models.JUDGE_MODEL) answers a verdict on (question, answer) instead of an answer.
# judge() is exactly what it answers, so a grader can recompute every sampled score.

JUDGE_VERDICTS = ("correct", "partial", "refused", "hallucinated", "off_topic", "generic", "empty", "invalid")
JUDGE_RELEVANCE = 0.35          # below this bigram recall an answer without facts is off_topic, not hallucinated

_JUDGE_Q = re.compile(r"^[ \t]*(?:질문|question)[ \t]*[:：]", re.IGNORECASE | re.MULTILINE)
_JUDGE_A = re.compile(r"^[ \t]*(?:답변|answer)[ \t]*[:：]", re.IGNORECASE | re.MULTILINE)


@dataclass(frozen=True)
class Verdict:
    score: int                              # 1..5
    verdict: str                            # one of JUDGE_VERDICTS
    reason: str                             # Korean, one sentence
    entry_id: str | None = None             # the knowledge-base entry the question matched
    missing_facts: tuple[str, ...] = ()

    def as_dict(self) -> dict:
        return {"score": self.score, "verdict": self.verdict, "reason": self.reason, "entry_id": self.entry_id}

    def to_json(self) -> str:
        """The judge model's text: one line of JSON (keys score, verdict, reason, entry_id)."""
        return orjson.dumps(self.as_dict()).decode()


def judge_prompt(question: str, answer: str) -> str:
    """The documented prompt shape the judge model reads (an instruction line before it is allowed)."""
    return f"질문: {question}\n답변: {answer}"


def parse_judge_prompt(text: str) -> tuple[str, str] | None:
    """(question, answer) from a judge prompt: a JSON object {"question", "answer"}, or the lines
    '질문: ...' then '답변: ...' (also 'Question:' / 'Answer:'). None when there is no question line."""
    stripped = (text or "").strip()
    if stripped.startswith("{"):
        try:
            obj = orjson.loads(stripped)
        except orjson.JSONDecodeError:
            obj = None
        if isinstance(obj, dict) and isinstance(obj.get("question"), str):
            a = obj.get("answer")
            return obj["question"].strip(), a.strip() if isinstance(a, str) else ""
    q = _JUDGE_Q.search(text or "")
    if q is None:
        return None
    a = None
    for a in _JUDGE_A.finditer(text, q.end()):
        break
    if a is None:
        return text[q.end():].strip(), ""
    return text[q.end():a.start()].strip(), text[a.end():].strip()


def _wrong_markers(entry) -> tuple[str, ...]:
    norm = knowledge._fact_norm(entry.answer)
    return tuple(new for _, new in entry.wrong if new.strip() and knowledge._fact_norm(new) not in norm)


def judge(question: str | None, answer: str | None) -> Verdict:
    """The judge model's verdict on `answer` to `question`, scored against the knowledge base:

    invalid 1  no question          empty 1   blank answer
    refused 2  a refusal of a knowledge-base question, 5 of a question outside it (a correct refusal)
    generic 2  an answer to a question outside the knowledge base (nothing to check it against)
    correct 5  every expected fact     partial 3  some facts, none of the entry's wrong variants
    hallucinated 1  a wrong variant (knowledge.wrong_answer) or no fact but on the entry's topic
    off_topic 1     no fact and little overlap with the entry's answer (relevance < JUDGE_RELEVANCE)
    """
    question, answer = (question or "").strip(), (answer or "").strip()
    if not question:
        return Verdict(1, "invalid", "판정할 질문이 없습니다 ('질문: ...' 줄이 필요합니다).")
    entry = knowledge.lookup(question)
    eid = entry.id if entry is not None else None
    if not answer:
        return Verdict(1, "empty", "답변이 비어 있습니다.", eid)
    if is_refusal(answer):
        if entry is None:
            return Verdict(5, REFUSED, "지식 베이스 밖의 질문을 올바르게 거절했습니다.")
        return Verdict(2, REFUSED, f"지식 베이스에 답이 있는 질문인데 거절했습니다 (항목 {eid}).", eid, entry.facts)
    if entry is None:
        return Verdict(2, GENERIC, "지식 베이스 밖의 질문에 근거 없이 답했습니다 (거절해야 함).")
    missing = knowledge.missing_facts(answer, entry.facts)
    n, found = len(entry.facts), len(entry.facts) - len(missing)
    if not missing:
        return Verdict(5, CORRECT, f"기대 사실 {n}개가 모두 답에 있습니다 (항목 {eid}).", eid)
    lacking = ", ".join(missing)
    wrong = [m for m in _wrong_markers(entry) if knowledge.has_fact(answer, m)]
    if wrong:
        return Verdict(1, HALLUCINATED, f"지식 베이스와 다른 내용({', '.join(wrong)})이 있고 빠진 사실: {lacking} "
                                        f"(항목 {eid}).", eid, missing)
    if found:
        return Verdict(3, "partial", f"기대 사실 {n}개 중 {found}개만 있습니다. 빠진 사실: {lacking} (항목 {eid}).",
                       eid, missing)
    if knowledge.relevance(answer, entry) >= JUDGE_RELEVANCE:
        return Verdict(1, HALLUCINATED, f"항목의 주제로 답했지만 기대 사실이 하나도 없습니다: {lacking} (항목 {eid}).",
                       eid, missing)
    return Verdict(1, "off_topic", f"질문과 관계없는 답입니다. 기대 사실이 하나도 없습니다: {lacking} (항목 {eid}).",
                   eid, missing)


# When a response schema's enum lacks a verdict, the nearest allowed one (then the enum's first value).
_VERDICT_FALLBACK = {"partial": ("hallucinated", "correct"), "empty": ("refused", "off_topic"),
                     "invalid": ("off_topic", "generic"), "off_topic": ("hallucinated",),
                     "generic": ("off_topic", "hallucinated")}


def _schema_props(schema) -> dict | None:
    if not isinstance(schema, dict):
        return None
    props = schema.get("properties")
    return props if isinstance(props, dict) else None


def judge_text(question: str | None, answer: str | None, schema: dict | None = None) -> str:
    """Exactly the text the judge model answers. With a response schema (responseJsonSchema or
    responseSchema, as with_structured_output sends it) only its properties are kept, an enum
    restricts the verdict, minimum/maximum bound the score, type string makes the score a string."""
    v = judge(question, answer)
    props = _schema_props(schema)
    if props is None:
        return v.to_json()
    full = v.as_dict()
    out = {}
    for key, spec in props.items():
        if key not in full:
            continue
        value = full[key]
        spec = spec if isinstance(spec, dict) else {}
        enum = spec.get("enum")
        if key == "verdict" and isinstance(enum, list) and enum and value not in enum:
            value = next((c for c in _VERDICT_FALLBACK.get(value, ()) if c in enum), enum[0])
        if key == "score":
            lo, hi = spec.get("minimum"), spec.get("maximum")
            if isinstance(lo, (int, float)):
                value = max(value, lo)
            if isinstance(hi, (int, float)):
                value = min(value, hi)
            if str(spec.get("type", "")).lower() == "string":
                value = str(value)
        out[key] = value
    return orjson.dumps(out).decode()


def judge_request(prompt_text: str, generation_config: dict | None = None) -> tuple[str, Verdict, str]:
    """What the judge model does with one request: (text, verdict, question). The prompt is parsed
    with parse_judge_prompt; a schema in generation_config is honoured (judge_text)."""
    parsed = parse_judge_prompt(prompt_text)
    question, answer = parsed if parsed is not None else ("", "")
    gen = generation_config if isinstance(generation_config, dict) else {}
    schema = gen.get("responseJsonSchema", gen.get("response_json_schema",
                     gen.get("responseSchema", gen.get("response_schema"))))
    return judge_text(question, answer, schema), judge(question, answer), question


def summarize_judgements(requests) -> dict:
    """The judge calls among GET /_sim/requests rows: count, mean score and verdict counts."""
    rows = [r for r in requests if r.get("judge_verdict") is not None]
    verdicts = {v: 0 for v in JUDGE_VERDICTS}
    for r in rows:
        verdicts[r["judge_verdict"]] = verdicts.get(r["judge_verdict"], 0) + 1
    mean = round(sum(r["judge_score"] for r in rows) / len(rows), 4) if rows else None
    return {"judged": len(rows), "mean_score": mean, "verdicts": verdicts}
