"""The simulator's Korean knowledge base (a fictional cloud LLM service "하늘클라우드").

Matching is character-bigram overlap (Dice coefficient) against each entry's question
variants, plus a bonus for each keyword found in the question. It is deterministic and
exposed so that later steps can measure accuracy / relevance:

    >>> from coursekit.simulator import knowledge
    >>> knowledge.lookup("요금제가 어떻게 돼요?").id
    'billing-plans'
    >>> knowledge.search("API 키 유출", k=3)   # [(entry, score), ...]
    >>> knowledge.expected_facts("billing-plans")
    ('세 가지', '100만 토큰', '99.95%')

Each entry also carries `facts` (short strings every correct answer contains) and `wrong`
(replacements that turn the answer into a confident wrong one, with none of the facts left):
the data an evaluation set needs (see coursekit.simulator.evaluation).
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

__all__ = ["Entry", "KB_PATH", "entries", "get", "lookup", "search", "score", "relevance", "THRESHOLD",
           "expected_facts", "must_refuse", "has_fact", "missing_facts", "sentences", "brief_answer",
           "wrong_answer"]

KB_PATH = Path(__file__).resolve().parent.parent / "data" / "knowledge_base.toml"
THRESHOLD = 0.34

_WORD = re.compile(r"[0-9a-z\uac00-\ud7a3\u3130-\u318f]+")


@dataclass(frozen=True)
class Entry:
    id: str
    category: str
    questions: tuple[str, ...]
    keywords: tuple[str, ...]
    answer: str
    facts: tuple[str, ...] = ()                 # strings a correct answer contains
    wrong: tuple[tuple[str, str], ...] = ()     # (part of answer, replacement) -> hallucination


@lru_cache(maxsize=1)
def _data() -> dict:
    with KB_PATH.open("rb") as f:
        return tomllib.load(f)


@lru_cache(maxsize=1)
def entries() -> tuple[Entry, ...]:
    return tuple(
        Entry(id=e["id"], category=e["category"], questions=tuple(e["questions"]),
              keywords=tuple(e.get("keywords", ())), answer=e["answer"],
              facts=tuple(e.get("facts", ())), wrong=tuple(tuple(w) for w in e.get("wrong", ())))
        for e in _data()["entries"]
    )


@lru_cache(maxsize=1)
def _by_id() -> dict[str, Entry]:
    return {e.id: e for e in entries()}


def expected_facts(entry_id: str) -> tuple[str, ...]:
    """The facts a correct answer to this entry contains (KeyError for an unknown id)."""
    return get(entry_id).facts


def must_refuse() -> tuple[str, ...]:
    """Example questions outside the knowledge base (lookup() is None): a grounded prompt refuses them."""
    return tuple(_data().get("must_refuse", {}).get("questions", ()))


def _fact_norm(text: str) -> str:
    return "".join(text.casefold().split())


def has_fact(text: str, fact: str) -> bool:
    """Whether `text` contains `fact`, ignoring case and all whitespace ("30만 원" == "30만원")."""
    return _fact_norm(fact) in _fact_norm(text)


def missing_facts(text: str, facts) -> tuple[str, ...]:
    """The facts that `text` does not contain (same comparison as has_fact)."""
    norm = _fact_norm(text)
    return tuple(f for f in facts if _fact_norm(f) not in norm)


_SENTENCE_END = re.compile(r"(?<=[.?!])\s+")


def sentences(text: str) -> list[str]:
    """Split at '.', '?' or '!' followed by whitespace."""
    return [s for s in _SENTENCE_END.split(text.strip()) if s]


@lru_cache(maxsize=256)
def _brief_indexes(entry_id: str) -> tuple[int, ...]:
    e = get(entry_id)
    parts = sentences(e.answer)
    keep = tuple(i for i, s in enumerate(parts) if not e.facts or any(has_fact(s, f) for f in e.facts))
    return keep or (0,)


def _perturb(text: str, wrong) -> str:
    for old, new in wrong:
        text = text.replace(old, new)
    return text


@lru_cache(maxsize=256)
def brief_answer(entry_id: str) -> str:
    """The answer under a brevity rule: only the sentences that carry an expected fact."""
    parts = sentences(get(entry_id).answer)
    return " ".join(parts[i] for i in _brief_indexes(entry_id))


@lru_cache(maxsize=512)
def wrong_answer(entry_id: str, brief: bool = False) -> str:
    """The confident wrong answer of a model that invents (the `wrong` replacements applied)."""
    e = get(entry_id)
    return _perturb(brief_answer(entry_id) if brief else e.answer, e.wrong)


def get(entry_id: str) -> Entry:
    try:
        return _by_id()[entry_id]
    except KeyError:
        raise KeyError(entry_id) from None


def _norm(text: str) -> str:
    return " ".join(_WORD.findall(text.lower()))


@lru_cache(maxsize=8192)
def _bigrams(text: str) -> frozenset[str]:
    grams = set()
    for word in _norm(text).split():
        if len(word) == 1:
            grams.add(word)
        grams.update(word[i:i + 2] for i in range(len(word) - 1))
    return frozenset(grams)


@lru_cache(maxsize=1)
def _index():
    idx = []
    for e in entries():
        qgrams = [_bigrams(q) for q in e.questions]
        kws = [(_norm(k).replace(" ", "")) for k in e.keywords]
        idx.append((e, qgrams, kws))
    return idx


def _dice(a: frozenset, b: frozenset) -> float:
    if not a or not b:
        return 0.0
    return 2 * len(a & b) / (len(a) + len(b))


def score(question: str, entry: Entry) -> float:
    """Similarity of a question to one entry (0..~1.5)."""
    for e, qgrams, kws in _index():
        if e.id == entry.id:
            return _score(question, qgrams, kws)
    return 0.0


def _score(question: str, qgrams, kws) -> float:
    q = _bigrams(question)
    compact = _norm(question).replace(" ", "")
    best = max((_dice(q, g) for g in qgrams), default=0.0)
    bonus = sum(0.2 for k in kws if k and k in compact)
    return best + min(bonus, 0.6)


@lru_cache(maxsize=4096)
def search(question: str, k: int = 3) -> tuple[tuple[Entry, float], ...]:
    """The k best entries with their scores, best first (ties: file order)."""
    scored = [(e, _score(question, qg, kws)) for e, qg, kws in _index()]
    scored.sort(key=lambda t: -t[1])
    return tuple(scored[:k])


def lookup(question: str, threshold: float = THRESHOLD) -> Entry | None:
    """The entry that answers `question`, or None when nothing matches well enough."""
    best = search(question, 1)
    if best and best[0][1] >= threshold:
        return best[0][0]
    return None


def relevance(answer: str, entry: Entry) -> float:
    """How much of the entry's reference answer an answer covers (bigram recall, 0..1).

    Useful to measure answer quality: 1.0 = the reference answer is fully contained."""
    ref = _bigrams(entry.answer)
    if not ref:
        return 0.0
    return len(ref & _bigrams(answer)) / len(ref)
