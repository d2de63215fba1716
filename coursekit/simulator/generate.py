"""Deterministic Korean answers: same prompt + system instruction + model + seed -> same text.

Questions that match the knowledge base get the entry's answer (unless the model's
kb_recall makes it "not know" that entry, which is deterministic per model and entry).
Anything else gets a plausible templated Korean answer whose length grows with the
prompt, chosen by a RNG seeded from (prompt, model, seed).

The system instruction matters only through two rules (coursekit.simulator.prompts):
  * grounding rule: an unknown entry or an off-knowledge-base question -> REFUSAL_TEXT;
  * brevity rule: only the sentences carrying expected facts (generic answers: two sentences).
Without a grounding rule, a model that does not know an entry invents (a confident wrong
answer, knowledge.wrong_answer) for round(hallucination_rate x unknown entries) of the entries it
does not know (a fixed choice per model, see invents()), otherwise it says NOT_KNOWN_TEXT. Every answer has an outcome: correct / refused / hallucinated /
generic (OUTCOMES), which is also what evaluation.grade() finds in its text.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from functools import lru_cache

from . import knowledge
from .models import ModelProfile, profile
from .prompts import NOT_KNOWN_TEXT, REFUSAL_TEXT, brevity_rule, grounding_rule, rules
from .tokens import count_tokens

__all__ = ["Answer", "answer", "knows", "invents", "stable_fraction", "grounding_rule", "brevity_rule",
           "OUTCOMES", "CORRECT", "REFUSED", "HALLUCINATED", "GENERIC", "REFUSAL_TEXT", "NOT_KNOWN_TEXT"]

CORRECT, REFUSED, HALLUCINATED, GENERIC = "correct", "refused", "hallucinated", "generic"
OUTCOMES = (CORRECT, REFUSED, HALLUCINATED, GENERIC)


@dataclass(frozen=True)
class Answer:
    text: str
    entry_id: str | None       # knowledge-base entry answered correctly, if any
    output_tokens: int
    thoughts_tokens: int
    matched_id: str | None = None   # entry the question matched (even if the model did not know it)
    outcome: str = GENERIC          # correct | refused | hallucinated | generic


def stable_fraction(*parts: object) -> float:
    """A deterministic number in [0, 1) from its arguments (not Python's salted hash)."""
    h = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2**64


def _first(fraction: float, ids, salt: str, name: str) -> frozenset[str]:
    """The round(fraction * len(ids)) ids that come first when ordered by stable_fraction(salt, name, id):
    a fixed, pseudo-random choice whose size is exact (rates over the knowledge base are not noisy)."""
    ids = list(ids)
    n = int(fraction * len(ids) + 0.5)
    ranked = sorted(ids, key=lambda i: stable_fraction(salt, name, i))
    return frozenset(ranked[:n])


@lru_cache(maxsize=64)
def _known(p: ModelProfile) -> frozenset[str]:
    return _first(p.kb_recall, (e.id for e in knowledge.entries()), "kb", p.name)


@lru_cache(maxsize=64)
def _invented(p: ModelProfile) -> frozenset[str]:
    known = _known(p)
    unknown = [e.id for e in knowledge.entries() if e.id not in known]
    return _first(p.hallucination_rate, unknown, "invent", p.name)


def knows(model: str | ModelProfile, entry_id: str) -> bool:
    """Whether a model answers this knowledge-base entry correctly (deterministic per model and entry:
    exactly round(kb_recall x number of entries) entries are known)."""
    p = profile(model) if isinstance(model, str) else model
    if p.kb_recall >= 1.0:
        return True
    return entry_id in _known(p)


def invents(model: str | ModelProfile, entry_id: str) -> bool:
    """Whether a model that does not know this entry invents a wrong answer when no grounding rule
    stops it (deterministic; exactly round(hallucination_rate x unknown entries) of them)."""
    p = profile(model) if isinstance(model, str) else model
    return entry_id in _invented(p)


_OPENERS = [
    "좋은 질문입니다.", "문의해 주셔서 감사합니다.", "말씀하신 내용을 정리해 드리겠습니다.",
    "네, 안내해 드리겠습니다.", "확인해 보았습니다.",
]
_BODY = [
    "'{topic}'에 대해서는 먼저 현재 상황과 목표를 분명히 하는 것이 중요합니다.",
    "일반적으로 '{topic}' 문제는 작은 단위로 나누어 하나씩 확인하면 해결이 쉬워집니다.",
    "관련 설정과 로그를 함께 살펴보면 원인을 더 빨리 찾을 수 있습니다.",
    "운영 환경에서는 변경 사항을 먼저 일부에만 적용해 보고 지표를 비교하는 방법을 권장합니다.",
    "비용과 응답 시간 사이에는 보통 절충이 필요하므로 두 지표를 함께 측정해 보세요.",
    "자동화된 테스트를 갖춰 두면 같은 문제가 다시 생기는 것을 막을 수 있습니다.",
    "문서와 예제를 참고하되, 실제 데이터로 한 번 더 검증하는 것이 안전합니다.",
    "오류가 발생하면 재시도와 타임아웃을 함께 설정해 서비스 전체가 멈추지 않도록 하세요.",
    "사용자 입장에서 어떤 결과가 가장 중요한지 먼저 정하면 선택이 쉬워집니다.",
    "필요하다면 단계별로 진행 상황을 기록해 두고 팀과 공유하세요.",
    "처음에는 단순한 방법으로 시작하고, 측정한 결과를 보고 점진적으로 개선하는 것이 좋습니다.",
    "보안과 개인정보 보호도 함께 고려해야 한다는 점을 잊지 마세요.",
]
_CLOSERS = [
    "더 궁금한 점이 있으면 말씀해 주세요.", "도움이 되었기를 바랍니다.",
    "추가로 필요한 내용이 있으면 알려 주세요.",
]
_NOT_KNOWN = NOT_KNOWN_TEXT


def _topic(prompt: str) -> str:
    words = [w for w in prompt.replace("?", " ").replace(".", " ").split() if w]
    topic = " ".join(words[:4]) if words else "질문"
    return topic[:30]


@lru_cache(maxsize=8192)
def _compose(prompt: str, model: str, seed: int, grounded: bool = False,
             brief: bool = False) -> tuple[str, str | None, str | None, str]:
    """(text, entry answered correctly, entry matched, outcome)."""
    p = profile(model)
    rng = random.Random(f"{seed}\x1f{p.name}\x1f{prompt}")
    entry = knowledge.lookup(prompt)
    if entry is not None and knows(p, entry.id):
        if brief:
            return knowledge.brief_answer(entry.id), entry.id, entry.id, CORRECT
        if p.answer_style == "detailed":
            extra = rng.choice(["운영 중 문제가 생기면 콘솔의 모니터링 지표부터 확인해 보세요.",
                                "자세한 절차는 하늘클라우드 문서의 해당 항목에 단계별로 정리되어 있습니다."])
            return f"{entry.answer} {extra}", entry.id, entry.id, CORRECT
        return entry.answer, entry.id, entry.id, CORRECT
    if entry is not None:  # the model "does not know" this entry
        if grounded:
            return REFUSAL_TEXT, None, entry.id, REFUSED
        if invents(p, entry.id):
            return knowledge.wrong_answer(entry.id, brief), None, entry.id, HALLUCINATED
        if brief:
            return _NOT_KNOWN, None, entry.id, REFUSED
        return f"{rng.choice(_OPENERS)} {_NOT_KNOWN}", None, entry.id, REFUSED
    if grounded:  # outside the knowledge base
        return REFUSAL_TEXT, None, None, REFUSED
    topic = _topic(prompt)
    n_body = 2 + min(len(prompt) // 25, 6) + rng.randint(0, 2)
    if p.answer_style == "brief":
        n_body = max(1, n_body - 2)
    elif p.answer_style == "detailed":
        n_body += 2
    if brief:
        n_body = 1
    body = rng.sample(_BODY, k=min(n_body, len(_BODY)))
    sentences = [rng.choice(_OPENERS)] + [s.format(topic=topic) for s in body]
    if not brief:
        sentences.append(rng.choice(_CLOSERS))
    return " ".join(sentences), None, None, GENERIC


def answer(prompt: str, model: str, seed: int = 0, max_output_tokens: int | None = None,
           thinking_budget: int | None = None, system: str | None = None) -> Answer:
    """The model's answer to `prompt` (the last user turn) under the system instruction `system`."""
    r = rules(system)
    return answer_with_rules(prompt, model, seed, thinking_budget, r.grounding, r.brevity)


@lru_cache(maxsize=8192)
def answer_with_rules(prompt: str, model: str, seed: int = 0, thinking_budget: int | None = None,
                      grounding: bool = False, brevity: bool = False) -> Answer:
    """answer() once the system instruction's rules are known (cached: the simulator's hot path)."""
    p = profile(model)
    text, entry_id, matched_id, outcome = _compose(prompt, p.name, seed, grounding, brevity)
    out = count_tokens(text)
    thoughts = 0
    if p.thinking and thinking_budget != 0:
        thoughts = int(out * p.thinking_ratio) + 16 + int(stable_fraction("think", seed, prompt) * 64)
        if thinking_budget is not None and thinking_budget > 0:
            thoughts = min(thoughts, thinking_budget)
    return Answer(text=text, entry_id=entry_id, output_tokens=out, thoughts_tokens=thoughts,
                  matched_id=matched_id, outcome=outcome)
