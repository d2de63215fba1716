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
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import knowledge
from .generate import CORRECT, GENERIC, HALLUCINATED, OUTCOMES, REFUSED
from .prompts import is_refusal

__all__ = ["Item", "kb_items", "grade", "summarize", "summarize_requests", "CORRECT", "REFUSED",
           "HALLUCINATED", "GENERIC", "OUTCOMES"]


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
    request with an entry_id counts as a knowledge-base item, one without as a must-refuse item."""
    return summarize([(Item(r["question"], r["entry_id"]), r["outcome"]) for r in requests])
