"""The simulator's Korean knowledge base (a fictional cloud LLM service "하늘클라우드").

Matching is character-bigram overlap (Dice coefficient) against each entry's question
variants, plus a bonus for each keyword found in the question. It is deterministic and
exposed so that later steps can measure accuracy / relevance:

    >>> from coursekit.simulator import knowledge
    >>> knowledge.lookup("요금제가 어떻게 돼요?").id
    'billing-plans'
    >>> knowledge.search("API 키 유출", k=3)   # [(entry, score), ...]
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

__all__ = ["Entry", "KB_PATH", "entries", "get", "lookup", "search", "score", "relevance", "THRESHOLD"]

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


@lru_cache(maxsize=1)
def entries() -> tuple[Entry, ...]:
    with KB_PATH.open("rb") as f:
        data = tomllib.load(f)
    return tuple(
        Entry(id=e["id"], category=e["category"], questions=tuple(e["questions"]),
              keywords=tuple(e.get("keywords", ())), answer=e["answer"])
        for e in data["entries"]
    )


def get(entry_id: str) -> Entry:
    for e in entries():
        if e.id == entry_id:
            return e
    raise KeyError(entry_id)


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
