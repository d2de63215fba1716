"""eval/metrics.py: 채점, 요약, 임계값 비교 (순수 함수)."""

import pytest

from eval.metrics import CORRECT, GENERIC, HALLUCINATED, REFUSED, Item, check, grade, percentile, summarize

MARKERS = ["답할 수 없습니다", "모르겠습니다"]
KB = Item("billing-free-credit", "무료 크레딧은 얼마나 주나요?", facts=("30만 원", "90일"), keywords=("크레딧",))
OFF = Item("off-weather", "오늘 날씨 어때?", refuse=True)


@pytest.mark.parametrize("item, answer, outcome", [
    (KB, "신규 가입자에게 30만 원 상당의 크레딧을 90일 동안 드립니다.", CORRECT),
    (KB, "신규 가입자에게 30만원 상당의 크레딧을 90 일 동안 드립니다.", CORRECT),   # 공백은 무시
    (KB, "신규 가입자에게 5만 원 상당의 크레딧을 90일 동안 드립니다.", HALLUCINATED),  # 사실 하나가 틀림
    (KB, "제공된 정보로는 답할 수 없습니다.", REFUSED),
    (KB, "30만 원, 90일... 사실 잘 모르겠습니다.", REFUSED),  # 거절 문구를 먼저 봅니다
    (OFF, "제공된 정보로는 답할 수 없습니다.", REFUSED),
    (OFF, "오늘은 맑고 따뜻합니다.", GENERIC),
])
def test_grade(item, answer, outcome):
    assert grade(item, answer, MARKERS) == outcome


def row(outcome, refuse=False, relevant=True, latency=0.1, cost=0.001):
    return {"outcome": outcome, "refuse": refuse, "relevant": relevant, "latency_s": latency, "cost_usd": cost,
            "input_tokens": 10, "output_tokens": 5}


def test_summarize_rates_use_their_own_denominators():
    results = [row(CORRECT), row(CORRECT), row(HALLUCINATED), row(REFUSED, relevant=False),
               row(REFUSED, refuse=True, relevant=False), row(GENERIC, refuse=True, relevant=False)]
    m = summarize(results)
    assert (m["items"], m["kb_items"], m["refuse_items"]) == (6, 4, 2)
    assert m["accuracy"] == 0.5 and m["hallucination_rate"] == 0.25 and m["false_refusal_rate"] == 0.25
    assert m["refusal_accuracy"] == 0.5 and m["relevance"] == 0.75
    assert m["cost_per_answer_usd"] == pytest.approx(0.001)
    assert m["outcomes"] == {CORRECT: 2, REFUSED: 2, HALLUCINATED: 1, GENERIC: 1}


def test_no_must_refuse_questions_means_refusals_were_not_measured():
    assert summarize([row(CORRECT)])["refusal_accuracy"] == 0.0


def test_percentile_nearest_rank():
    values = [float(i) for i in range(1, 21)]  # 1..20
    assert percentile(values, 95) == 19.0
    assert percentile([0.3], 95) == 0.3
    assert percentile([], 95) == 0.0


def test_check_min_and_max_thresholds():
    metrics = {"accuracy": 0.8, "hallucination_rate": 0.1, "refusal_accuracy": 1.0}
    failures = check(metrics, {"min_accuracy": 0.9, "max_hallucination_rate": 0.05, "min_refusal_accuracy": 0.9})
    assert [f["metric"] for f in failures] == ["accuracy", "hallucination_rate"]
    assert all(f["message"] for f in failures)
    assert check(metrics, {"min_accuracy": 0.8, "max_hallucination_rate": 0.1}) == []  # 경계값은 통과
