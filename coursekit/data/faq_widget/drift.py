"""입력 드리프트: 최근 질문 길이의 분포를 기준 분포와 PSI(Population Stability Index)로 비교합니다.

PSI = sum_i (실제_i - 기준_i) * ln(실제_i / 기준_i)   (i: 구간, 값은 구간의 비율)
흔히 쓰는 해석: < 0.1 변화 없음, 0.1~0.25 약간 변함, > 0.25 크게 변함(알림).
"""

import math
from collections import deque

# 질문 길이(글자 수) 구간의 경계: [0,10) [10,20) ... [160, 무한)
EDGES = [10, 20, 30, 40, 60, 80, 120, 160]
EPS = 1e-4  # 빈 구간의 비율을 0 대신 쓰는 작은 값 (ln(0) 을 피함)


def proportions(lengths) -> list[float]:
    counts = [0] * (len(EDGES) + 1)
    for n in lengths:
        counts[sum(n >= e for e in EDGES)] += 1
    total = max(sum(counts), 1)
    return [max(c / total, EPS) for c in counts]


def psi(baseline, recent) -> float:
    """두 길이 표본의 PSI (0 이면 같은 분포)."""
    return sum((a - e) * math.log(a / e) for e, a in zip(proportions(baseline), proportions(recent)))


class LengthDrift:
    """최근 `window` 개 질문의 길이를 기억하고, 기준 분포 대비 PSI 를 돌려줍니다.
    표본이 `min_count` 개보다 적으면 0 (너무 적은 표본의 PSI 는 잡음입니다)."""

    def __init__(self, baseline, window: int = 200, min_count: int = 50):
        self.baseline = list(baseline)
        self.recent = deque(maxlen=window)
        self.min_count = min(min_count, window)

    def add(self, text: str) -> float:
        self.recent.append(len(text))
        return psi(self.baseline, self.recent) if len(self.recent) >= self.min_count else 0.0
