"""시맨틱 캐시의 위험을 지식 베이스로 재는 도구 (step 06 레슨 §11). 학습자의 서비스 코드가 아닙니다.

시맨틱 캐시는 질문을 임베딩 벡터로 바꾸고, 이미 답한 질문 중 코사인 유사도가 임계값 이상인 것이 있으면
그 답을 돌려줍니다. 말만 바꾼 질문("요금제 종류" / "가격 정책 알려줘")도 캐시에서 답하므로 정확 일치 캐시보다
적중률이 높습니다. 대가는 **거짓 적중(false hit)** 입니다: 단어는 비슷하지만 뜻이 다른 질문("요금제는 어떻게
되나요?" 다음의 "요금제를 변경하고 싶어요")에 다른 질문의 답을 내줍니다. 그 답은 오류도 거절도 아닌 **확신에 찬
틀린 답**이라서 5xx 비율, 지연 시간 같은 지표에는 전혀 드러나지 않고, 모델을 부르지 않았으니 근거 규칙도 거절도
작동하지 않습니다. 사용자는 엉뚱한 답을 정답처럼 받고, 같은 질문을 하는 모든 사용자가 TTL 동안 같은 틀린 답을
받습니다. 정확 일치 캐시(정규화한 질문 문자열이 같을 때만 적중)는 **구조상 거짓 적중이 0** 입니다: 같은 질문에만
같은 답을 주기 때문입니다 (모델·프롬프트 버전이 키에 있다면).

측정 방법 (`measure`): 실제 `GoogleGenerativeAIEmbeddings` 로 지식 베이스의 질문 변형을 임베딩합니다
(시뮬레이터의 `batchEmbedContents`, coursekit/simulator/README.md 11절).

- 캐시: 36 개 항목마다 첫 번째 질문 변형과 그 답.
- 적중률 `hit_rate`: 나머지 질문 변형 72 개(이미 캐시된 질문의 바꿔 말하기) 중 **같은 항목**의 답을 받은 비율.
- 거짓 적중률 (각각 "캐시에서 답을 받으면 안 되는 질문" 중 다른 답을 받은 비율):
  `false_hit_other_entry` 캐시에 없는 항목의 질문 108 개(그 항목만 빼고 캐시), `false_hit_out_of_kb` 지식 베이스
  밖의 질문 8 개(거절해야 함), `false_hit_near_miss` 캐시된 질문과 단어는 겹치지만 뜻이 다른 질문
  (`NEAR_MISSES`), `false_hit_rate` 이 셋을 합친 비율. `paraphrase_wrong_entry`: 바꿔 말한 질문이 자기 항목이
  아닌 **다른 항목**의 답을 받은 비율 (이것도 거짓 적중).

시뮬레이터의 임베딩은 실제 모델이 아니므로 숫자 자체가 아니라 **재는 방법과 모양**(임계값을 올리면 적중과 거짓
적중이 함께 줄고, 바꿔 말하기를 잡는 임계값에서는 비슷한 다른 질문도 잡힌다)을 가져가세요. 실제 서비스에서는
같은 측정을 실제 질문 기록과 실제 임베딩 모델로 다시 합니다.
"""

from __future__ import annotations

import math
import unicodedata
from dataclasses import dataclass

from .simulator import knowledge

__all__ = ["NEAR_MISSES", "THRESHOLDS", "SemanticCache", "embeddings_client", "exact_key", "measure"]

THRESHOLDS = (0.80, 0.85, 0.90, 0.95)
EMBEDDING_MODEL = "gemini-embedding-001"
DIMENSION = 768          # Gemini 문서의 권장 차원 중 하나 (3072 보다 전송량이 작음)

# 캐시된 질문(오른쪽 항목의 질문)과 단어는 겹치지만 묻는 것이 다른 질문: 그 항목의 답은 이 질문의 답이 아닙니다.
NEAR_MISSES: tuple[tuple[str, str], ...] = (
    ("요금제를 변경하고 싶어요", "billing-plans"),
    ("요금제를 해지하고 싶어요", "billing-plans"),
    ("API 키를 삭제하려면?", "api-key-issue"),
    ("계정을 다른 사람에게 넘길 수 있나요?", "account-signup"),
    ("비밀번호 규칙은 어떻게 되나요?", "account-password-reset"),
    ("무료 크레딧을 현금으로 바꿀 수 있나요?", "billing-free-credit"),
    ("로그를 삭제할 수 있나요?", "ops-logs"),
    ("모델을 직접 학습시킬 수 있나요?", "security-data-training"),
    ("세금계산서를 취소할 수 있나요?", "billing-invoice"),
    ("스트리밍을 끄려면 어떻게 하나요?", "api-streaming"),
    ("서울 리전 요금은 다른가요?", "ops-region"),
    ("2단계 인증을 끄고 싶어요", "account-2fa"),
)


def embeddings_client(base_url: str | None = None, api_key: str | None = None, *,
                      model: str = EMBEDDING_MODEL, dimension: int = DIMENSION):
    """The real `GoogleGenerativeAIEmbeddings` (pointed at the simulator by `base_url`, or by
    GOOGLE_GEMINI_BASE_URL / GOOGLE_API_KEY when both are None)."""
    from langchain_google_genai import GoogleGenerativeAIEmbeddings

    kw = {} if api_key is None else {"api_key": api_key}
    return GoogleGenerativeAIEmbeddings(model=model, base_url=base_url, task_type="SEMANTIC_SIMILARITY",
                                        output_dimensionality=dimension, **kw)


def exact_key(question: str) -> str:
    """The exact-match cache's normalization: NFKC, casefold, whitespace collapsed."""
    return " ".join(unicodedata.normalize("NFKC", question).casefold().split())


def _unit(v) -> tuple[float, ...]:
    # gemini-embedding-001 returns unit vectors only at 3072 dimensions: normalize before comparing
    n = math.sqrt(sum(x * x for x in v)) or 1.0
    return tuple(x / n for x in v)


def _dot(a, b) -> float:
    return sum(x * y for x, y in zip(a, b))


@dataclass
class _Item:
    question: str
    answer: str
    entry_id: str | None
    vector: tuple[float, ...]


class SemanticCache:
    """A minimal in-memory semantic cache (for measuring only: no TTL, no size bound, no model key).

        cache = SemanticCache(embeddings_client(sim.base_url, sim.api_key), threshold=0.9)
        cache.add("요금제는 어떻게 되나요?", answer, entry_id="billing-plans")
        cache.lookup("가격 정책 알려줘")       # (item, similarity) or None
    """

    def __init__(self, embeddings, threshold: float = 0.90):
        self.embeddings = embeddings
        self.threshold = threshold
        self.items: list[_Item] = []

    def add(self, question: str, answer: str, entry_id: str | None = None) -> None:
        self.add_vector(question, answer, entry_id, self.embeddings.embed_query(question))

    def add_vector(self, question, answer, entry_id, vector) -> None:
        self.items.append(_Item(question, answer, entry_id, _unit(vector)))

    def nearest(self, vector, exclude: str | None = None) -> tuple[_Item, float] | None:
        """The most similar cached item (skipping entry `exclude`) and its cosine similarity."""
        v = _unit(vector)
        best = None
        for item in self.items:
            if exclude is not None and item.entry_id == exclude:
                continue
            s = _dot(v, item.vector)
            if best is None or s > best[1]:
                best = (item, s)
        return best

    def lookup(self, question: str) -> tuple[_Item, float] | None:
        """The cached answer for `question` if one is at least `threshold` similar, else None."""
        hit = self.nearest(self.embeddings.embed_query(question))
        return hit if hit is not None and hit[1] >= self.threshold else None


def measure(embeddings=None, thresholds=THRESHOLDS) -> list[dict]:
    """Hit rate and false-hit rates of a semantic cache on the knowledge base, one row per threshold,
    after one exact-match row (threshold None). `embeddings`: a LangChain Embeddings object, by default
    `embeddings_client()` from GOOGLE_GEMINI_BASE_URL / GOOGLE_API_KEY. Rates are fractions 0..1.

    One `embed_documents` call for all questions (the client sends batches of 100)."""
    emb = embeddings if embeddings is not None else embeddings_client()
    entries = knowledge.entries()
    paraphrases = [(q, e.id) for e in entries for q in e.questions[1:]]
    others = [(q, e.id) for e in entries for q in e.questions]
    refuse = list(knowledge.must_refuse())
    near = [q for q, _ in NEAR_MISSES]
    texts = [e.questions[0] for e in entries] + [q for q, _ in paraphrases] + refuse + near
    vectors = dict(zip(texts, emb.embed_documents(texts)))   # every `others` question is among them
    cache = SemanticCache(emb)
    for e in entries:
        cache.add_vector(e.questions[0], e.answer, e.id, vectors[e.questions[0]])

    para = [(cache.nearest(vectors[q]), eid) for q, eid in paraphrases]
    other = [cache.nearest(vectors[q], exclude=eid)[1] for q, eid in others]
    outside = [cache.nearest(vectors[q])[1] for q in refuse]
    nearm = [cache.nearest(vectors[q])[1] for q in near]

    exact = {exact_key(e.questions[0]) for e in entries}
    rows = [{
        "method": "exact", "threshold": None,
        "hit_rate": _rate([exact_key(q) in exact for q, _ in paraphrases]),
        "false_hit_rate": 0.0, "false_hit_other_entry": 0.0, "false_hit_out_of_kb": 0.0,
        "false_hit_near_miss": _rate([exact_key(q) in exact for q in near]), "paraphrase_wrong_entry": 0.0,
    }]
    for th in thresholds:
        wrong = [s >= th for s in other + outside + nearm]
        rows.append({
            "method": "semantic", "threshold": th,
            "hit_rate": _rate([best[1] >= th and best[0].entry_id == eid for best, eid in para]),
            "false_hit_rate": _rate(wrong),
            "false_hit_other_entry": _rate([s >= th for s in other]),
            "false_hit_out_of_kb": _rate([s >= th for s in outside]),
            "false_hit_near_miss": _rate([s >= th for s in nearm]),
            "paraphrase_wrong_entry": _rate([best[1] >= th and best[0].entry_id != eid for best, eid in para]),
        })
    return rows


def _rate(flags) -> float:
    flags = list(flags)
    return round(sum(flags) / len(flags), 3) if flags else 0.0
