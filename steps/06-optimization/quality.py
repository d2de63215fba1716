"""품질 신호: 거절, LLM-as-a-judge, 입력 드리프트(PSI), 피드백을 받을 응답 id. LLM 도 네트워크도 쓰지 않습니다.

    is_refusal(answer)            답에 거절 문구(eval/dataset.toml 의 refusal_markers)가 있는지 (03단계 평가와 같은 규칙)
    judge_messages(q, a)          판정 모델에 보낼 메시지: 채점 기준(시스템 지시) + "질문: ...\\n답변: ..."
    parse_judge(text)             판정 모델의 JSON 답에서 1~5 점 (읽을 수 없으면 None)
    psi(expected, actual)         두 분포의 PSI (Population Stability Index)
    InputDrift                    최근 질문 길이 분포를 기준(평가 세트의 질문)과 비교하는 PSI
    IssuedResponses               이 서비스가 낸 응답 id (최근 10 000 개), 피드백은 id 하나에 한 번

입력 드리프트의 정의 (채점기와 대시보드가 같은 값을 계산할 수 있도록 정확히 적습니다):
    길이       len(message) (파이썬 문자 수, /chat 이 검증을 통과한 메시지 그대로)
    구간       LENGTH_EDGES = (10, 15, 20, 30, 50, 100, 200) 으로 나눈 8개:
               [0,10) [10,15) [15,20) [20,30) [30,50) [50,100) [100,200) [200,∞)
    비율       구간마다 (개수 + 0.5) / (전체 개수 + 0.5 x 8)  (빈 구간도 0 이 아니게: 가산 평활 0.5)
    PSI        Σ (실제 비율 - 기준 비율) x ln(실제 비율 / 기준 비율)
    기준       eval/dataset.toml 의 모든 [[items]] 의 question
    실제       최근 DRIFT_WINDOW 개의 메시지. 메시지가 min(DRIFT_WINDOW, 50) 개 모이기 전에는 0
    읽는 법    PSI < 0.1 안정, 0.1 ~ 0.25 약간 변함, > 0.25 드리프트 (알림 LLMInputDrift)
"""

from __future__ import annotations

import json
import math
import re
import tomllib
import uuid
from bisect import bisect_right
from collections import OrderedDict, deque
from pathlib import Path

from langchain_core.messages import HumanMessage, SystemMessage

from eval.metrics import is_refusal as _has_marker

DATASET_PATH = Path(__file__).resolve().parent / "eval" / "dataset.toml"

LENGTH_EDGES = (10, 15, 20, 30, 50, 100, 200)
SMOOTHING = 0.5
MIN_SAMPLES = 50          # PSI 를 계산하기 시작하는 메시지 수 (창이 더 작으면 창 크기)
PSI_STABLE, PSI_DRIFT = 0.1, 0.25
FEEDBACK_MEMORY = 10_000  # 피드백을 받을 수 있는 최근 응답 id 수 (06단계에서 Redis 로 옮김)


def _load_dataset(path: Path = DATASET_PATH) -> dict:
    with open(path, "rb") as fh:
        return tomllib.load(fh)


_DATASET = _load_dataset()
REFUSAL_MARKERS: tuple[str, ...] = tuple(_DATASET.get("refusal_markers", ()))
BASELINE_QUESTIONS: tuple[str, ...] = tuple(item["question"] for item in _DATASET.get("items", []))


# --- 거절 -----------------------------------------------------------------------------------------------
def is_refusal(answer: str) -> bool:
    """03단계의 평가 게이트와 같은 규칙: 거절 문구 중 하나라도 있으면 거절 (대소문자, 공백 무시)."""
    return _has_marker(answer, REFUSAL_MARKERS)


# --- LLM-as-a-judge -----------------------------------------------------------------------------------
JUDGE_INSTRUCTIONS = (
    "당신은 하늘클라우드 고객센터 답변의 채점자입니다. 질문과 답변을 지식 베이스에 비추어 1~5 점으로 채점하세요. "
    "5: 필요한 사실을 모두 담은 정확한 답 (또는 지식 베이스 밖의 질문에 대한 올바른 거절), "
    "3: 사실의 일부만 있음, 2: 답할 수 있는 질문을 거절했거나 근거 없는 일반 답변, 1: 틀린 답 또는 관계없는 답. "
    'JSON 한 줄로만 답하세요: {"score": 1~5 정수, "verdict": "...", "reason": "한국어 한 문장"}'
)


def judge_prompt(question: str, answer: str) -> str:
    """판정 모델의 요청 모양 (coursekit/simulator/README.md 10절): 두 줄, 답변은 여러 줄이어도 됨."""
    return f"질문: {question}\n답변: {answer}"


def judge_messages(question: str, answer: str) -> list:
    return [SystemMessage(JUDGE_INSTRUCTIONS), HumanMessage(judge_prompt(question, answer))]


def parse_judge(text: str) -> int | None:
    """판정 모델의 답 '{"score": 4, ...}' 에서 점수 1~5. JSON 이 아니거나 점수가 범위 밖이면 None."""
    match = re.search(r"\{.*\}", text or "", re.DOTALL)  # ```json ... ``` 처럼 감싸 와도 객체만
    if not match:
        return None
    try:
        score = json.loads(match.group(0)).get("score")
    except (json.JSONDecodeError, AttributeError):
        return None
    if isinstance(score, bool) or not isinstance(score, (int, float)) or score != int(score):
        return None
    return int(score) if 1 <= score <= 5 else None


# --- 입력 드리프트 (PSI) --------------------------------------------------------------------------------
def length_bin(message: str) -> int:
    """메시지 길이의 구간 번호 0~7 (LENGTH_EDGES)."""
    return bisect_right(LENGTH_EDGES, len(message))


def proportions(counts: list[int]) -> list[float]:
    """구간별 개수 -> 평활한 비율 (개수 + 0.5) / (전체 + 0.5 x 구간 수). 합은 1."""
    total = sum(counts) + SMOOTHING * len(counts)
    return [(c + SMOOTHING) / total for c in counts]


def psi(expected: list[float], actual: list[float]) -> float:
    """PSI = Σ (actual - expected) x ln(actual / expected). 두 분포가 같으면 0, 멀어질수록 커집니다."""
    return sum((a - e) * math.log(a / e) for e, a in zip(expected, actual, strict=True))


def bin_counts(messages) -> list[int]:
    counts = [0] * (len(LENGTH_EDGES) + 1)
    for m in messages:
        counts[length_bin(m)] += 1
    return counts


class InputDrift:
    """최근 window 개 메시지의 길이 분포와 기준(평가 세트의 질문) 분포의 PSI."""

    def __init__(self, window: int, baseline=BASELINE_QUESTIONS):
        self.window = window
        self.min_samples = min(window, MIN_SAMPLES)
        self.expected = proportions(bin_counts(baseline))
        self._recent: deque[int] = deque(maxlen=window)   # 구간 번호만 둡니다 (메시지 자체는 두지 않음)
        self._counts = [0] * len(self.expected)

    def observe(self, message: str) -> float:
        """메시지 하나를 창에 넣고 현재 PSI 를 돌려줍니다 (모이기 전에는 0)."""
        if len(self._recent) == self._recent.maxlen:
            self._counts[self._recent[0]] -= 1
        b = length_bin(message)
        self._recent.append(b)
        self._counts[b] += 1
        return self.value()

    def value(self) -> float:
        if len(self._recent) < self.min_samples:
            return 0.0
        return psi(self.expected, proportions(self._counts))


# --- 피드백을 받을 응답 id -------------------------------------------------------------------------------
class IssuedResponses:
    """이 서비스가 낸 최근 limit 개 응답 id 와 피드백 여부 (프로세스 안의 메모리: 재시작하면 잊음)."""

    UNKNOWN, EXISTS, OK = "unknown", "exists", "ok"

    def __init__(self, limit: int = FEEDBACK_MEMORY):
        self.limit = limit
        self._ids: OrderedDict[str, bool] = OrderedDict()   # id -> 피드백을 받았는지

    def issue(self) -> str:
        response_id = uuid.uuid4().hex
        self._ids[response_id] = False
        while len(self._ids) > self.limit:
            self._ids.popitem(last=False)  # 가장 오래된 id 부터 잊습니다
        return response_id

    def claim(self, response_id: str) -> str:
        """피드백 하나를 id 에 기록: 모르는 id 면 UNKNOWN, 이미 받았으면 EXISTS, 처음이면 OK."""
        if response_id not in self._ids:
            return self.UNKNOWN
        if self._ids[response_id]:
            return self.EXISTS
        self._ids[response_id] = True
        return self.OK

    def __len__(self) -> int:
        return len(self._ids)
