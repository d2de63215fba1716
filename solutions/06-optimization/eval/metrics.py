"""평가 지표: 답변 하나를 채점하고(grade), 전체를 지표로 요약하고(summarize), 임계값과 비교합니다(check).

채점 결과(outcome)는 네 가지입니다.
    correct       지식 베이스 질문에 기대 사실을 모두 담아 답함
    refused       거절함 ("답할 수 없습니다", "모르겠습니다" ...)
    hallucinated  지식 베이스 질문에 거절하지 않고 답했지만 기대 사실이 빠짐 (그럴듯한 틀린 답)
    generic       거절해야 할 질문(지식 베이스 밖)에 거절하지 않고 답함

이 파일은 LLM 도 네트워크도 쓰지 않는 순수 함수들이라 단위 테스트(tests/)로 빠르게 확인합니다.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

CORRECT, REFUSED, HALLUCINATED, GENERIC = "correct", "refused", "hallucinated", "generic"
OUTCOMES = (CORRECT, REFUSED, HALLUCINATED, GENERIC)

# 임계값 파일의 키 = min_<지표> 또는 max_<지표>. 여기 있는 지표만 임계값을 둘 수 있습니다.
METRICS = {
    "accuracy": "정확도 (기대 사실을 모두 담은 답 / 지식 베이스 질문)",
    "hallucination_rate": "환각률 (거절하지 않고 틀린 답 / 지식 베이스 질문)",
    "refusal_accuracy": "거절 정확도 (거절한 답 / 거절해야 할 질문)",
    "false_refusal_rate": "과잉 거절률 (거절한 답 / 지식 베이스 질문)",
    "relevance": "관련성 (주제어가 있는 답 / 지식 베이스 질문)",
    "cost_per_answer_usd": "답변당 비용 (USD)",
    "p95_latency_s": "p95 지연 시간 (초)",
}


@dataclass(frozen=True)
class Item:
    """평가 세트의 질문 하나 (eval/dataset.toml 의 [[items]])."""

    id: str
    question: str
    facts: tuple[str, ...] = ()      # 맞는 답에 반드시 있는 문자열
    keywords: tuple[str, ...] = ()   # 주제어 (관련성)
    refuse: bool = False             # True: 지식 베이스 밖의 질문, 거절해야 맞음


def normalize(text: str) -> str:
    """비교용: 소문자로 바꾸고 모든 공백을 없앱니다 ("30만 원" == "30만원")."""
    return "".join(text.casefold().split())


def contains(text: str, part: str) -> bool:
    return normalize(part) in normalize(text)


def is_refusal(answer: str, markers) -> bool:
    """답변에 거절 문구(markers) 중 하나라도 있는지."""
    return any(contains(answer, m) for m in markers)


def grade(item: Item, answer: str, markers) -> str:
    """답변 하나의 채점 결과: correct, refused, hallucinated, generic 중 하나."""
    if is_refusal(answer, markers):
        return REFUSED
    if item.refuse:
        return GENERIC
    return CORRECT if all(contains(answer, f) for f in item.facts) else HALLUCINATED


def is_relevant(item: Item, answer: str, outcome: str) -> bool:
    """거절하지 않은 답에 질문의 주제어가 하나라도 있으면 관련 있는 답입니다."""
    return outcome != REFUSED and any(contains(answer, k) for k in item.keywords)


def percentile(values, q: float) -> float:
    """nearest-rank 백분위수: 정렬한 값에서 ceil(q/100 x n) 번째 값 (값이 없으면 0)."""
    ordered = sorted(values)
    if not ordered:
        return 0.0
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def _rate(part: int, whole: int, empty: float) -> float:
    return round(part / whole, 4) if whole else empty


def summarize(results: list[dict]) -> dict:
    """질문별 결과(results: outcome, relevant, refuse, latency_s, cost_usd, 토큰 수)를 지표로 요약합니다."""
    kb = [r for r in results if not r["refuse"]]
    off = [r for r in results if r["refuse"]]
    counts = {o: sum(r["outcome"] == o for r in results) for o in OUTCOMES}
    total_cost = sum(r["cost_usd"] for r in results)
    metrics = {
        "items": len(results),
        "kb_items": len(kb),
        "refuse_items": len(off),
        "outcomes": counts,
        "input_tokens": sum(r["input_tokens"] for r in results),
        "output_tokens": sum(r["output_tokens"] for r in results),
        "total_cost_usd": total_cost,
        "cost_per_answer_usd": total_cost / len(results) if results else 0.0,
        "p95_latency_s": round(percentile([r["latency_s"] for r in results], 95), 4),
    }
    metrics.update({
        "accuracy": _rate(sum(r["outcome"] == CORRECT for r in kb), len(kb), 0.0),
        "hallucination_rate": _rate(sum(r["outcome"] == HALLUCINATED for r in kb), len(kb), 0.0),
        "false_refusal_rate": _rate(sum(r["outcome"] == REFUSED for r in kb), len(kb), 0.0),
        "relevance": _rate(sum(bool(r["relevant"]) for r in kb), len(kb), 0.0),
        # 거절해야 할 질문이 하나도 없으면 거절을 잰 적이 없는 것: 0 으로 두어 임계값에 걸리게 합니다.
        "refusal_accuracy": _rate(sum(r["outcome"] == REFUSED for r in off), len(off), 0.0),
    })
    return metrics


def check(metrics: dict, thresholds: dict) -> list[dict]:
    """임계값을 못 넘은 지표의 목록 (비어 있으면 통과).

    thresholds 의 키는 min_<지표> (이 값 이상이어야 함) 또는 max_<지표> (이 값 이하여야 함)."""
    failures = []
    for key, limit in thresholds.items():
        kind, name = key.split("_", 1)
        value = metrics[name]
        ok = value >= limit if kind == "min" else value <= limit
        if not ok:
            failures.append({"metric": name, "threshold": key, "limit": limit, "value": value,
                             "message": f"{METRICS[name]}: {value:g} 이(가) {'최소' if kind == 'min' else '최대'} "
                                        f"{limit:g} 을(를) {'넘지 못함' if kind == 'min' else '넘음'}"})
    return failures
