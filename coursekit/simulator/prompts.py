"""What the simulator reads in a system instruction: a grounding rule and a brevity rule.

Deterministic and tolerant (documented in README.md, section 9):

* grounding rule: "answer only from the provided information" or "if you don't know, say so"
  or "do not make things up", in Korean or English. Under it a model that does not know a
  knowledge-base entry, or gets a question outside the knowledge base, answers REFUSAL_TEXT.
* brevity rule: "간결하게", "짧게", "한두 문장", "be concise", "briefly", "in one sentence" ...
  Under it answers keep only the sentences that carry the expected facts (fewer tokens).

Korean phrases are matched with all whitespace removed ("제공된 정보로만" == "제공된정보로만"),
English phrases case-insensitively with whitespace collapsed and ' for ’. Negations are not
understood ("간결하게 쓰지 마" still counts as a brevity rule).

    >>> from coursekit.simulator import prompts
    >>> prompts.grounding_rule("제공된 정보로만 답하고, 모르면 모른다고 말하세요.")
    True
    >>> prompts.brevity_rule("Be concise.")
    True
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import lru_cache

__all__ = ["Rules", "rules", "grounding_rule", "brevity_rule", "system_hash", "is_refusal",
           "REFUSAL_TEXT", "NOT_KNOWN_TEXT", "GROUNDING_PATTERNS", "BREVITY_PATTERNS", "REFUSAL_PATTERNS"]

# The fixed answer of a grounded model that cannot answer from what it knows.
REFUSAL_TEXT = "제공된 정보로는 답할 수 없습니다."
# What a model without a grounding rule says when it does not know an entry and does not invent.
NOT_KNOWN_TEXT = "정확한 정보를 찾지 못했습니다. 자세한 내용은 하늘클라우드 고객센터에 문의해 주세요."

_SOURCE = r"(정보|자료|문서|내용|사실|지식베이스|지식|근거|컨텍스트|맥락|faq|context)"
# (form, pattern): "compact" patterns run on the lower-cased text without any whitespace, "spaced" ones
# on the lower-cased text with whitespace collapsed to one space.
GROUNDING_PATTERNS: tuple[tuple[str, str], ...] = (
    ("compact", _SOURCE + r"(에있는내용|에나온내용|에서|에|을|를|으로|로)?"
           r"(만|로만|으로만|에서만|에근거해서만|에근거하여서만|에근거해|에근거하여|에기반해서만|에기반하여)"),
    ("compact", r"(모른다고|모르겠다고|알수없다고|답할수없다고|답변할수없다고|모른다는)"),
    ("compact", r"(지어내지|지어내면|꾸며내지|만들어내지|추측하지|날조하지|추측으로답하지)"),
    ("spaced", r"\b(answer|respond|reply)\s+(only|solely|strictly)\s+(from|using|based\s+on|with|on)\b"),
    ("spaced", r"\b(only|solely|strictly)\s+(use|using|from|on|with|based\s+on|rely\s+on)\s+(the\s+)?"
           r"(provided|given|following|above|supplied|context|facts|information|documents?|knowledge)"),
    ("spaced", r"\buse\s+only\s+(the\s+)?(provided|given|following|above|supplied|context|facts|information)"),
    ("spaced", r"\b(if|when)\s+you\s+(do\s+not|don't|dont)\s+know\b"),
    ("spaced", r"\bsay\s+(that\s+)?you\s+(do\s+not|don't|dont)\s+know\b"),
    ("spaced", r"\b(do\s+not|don't|dont|never)\s+(make\s+(things\s+)?up|invent|guess|fabricate|hallucinate|speculate)\b"),
)
BREVITY_PATTERNS: tuple[tuple[str, str], ...] = (
    ("compact", r"(간결|간단히|간단하게|짧게|짧은(답|대답|응답|문장)|요점만|핵심만)"),
    ("spaced", r"(^|[^가-힣])(한두|한|두|1~2|1-2|[12])\s?문장"),
    ("spaced", r"\b(concise(ly)?|brief(ly)?|succinct(ly)?|terse(ly)?|keep\s+it\s+short|short\s+answers?|"
           r"be\s+short|in\s+(one|two|1|2|one\s+or\s+two|1-2|a\s+few)\s+sentences?)\b"),
)
# Recognised refusals. REFUSAL_TEXT and NOT_KNOWN_TEXT match.
REFUSAL_PATTERNS: tuple[tuple[str, str], ...] = (
    ("compact", r"(답할수없습니다|답변할수없습니다|답하기어렵습니다|정보를찾지못했습니다|모르겠습니다|알수없습니다|"
           r"정보가없습니다|제공된정보에없습니다)"),
    ("spaced", r"\b(i\s+(do\s+not|don't)\s+know|i\s+cannot\s+answer|i\s+can't\s+answer|not\s+in\s+the\s+provided)\b"),
)


def _compile(patterns):
    ko = "|".join(p for lang, p in patterns if lang == "compact")
    en = "|".join(p for lang, p in patterns if lang == "spaced")
    return re.compile(ko), re.compile(en)


_GROUNDING = _compile(GROUNDING_PATTERNS)
_BREVITY = _compile(BREVITY_PATTERNS)
_REFUSAL = _compile(REFUSAL_PATTERNS)
_WS = re.compile(r"\s+")


def _forms(text: str) -> tuple[str, str]:
    low = text.casefold().replace("\u2019", "'").replace("\u2018", "'")
    return _WS.sub("", low), _WS.sub(" ", low)


def _matches(compiled, text: str) -> bool:
    compact, spaced = _forms(text)
    on_compact, on_spaced = compiled
    return bool(on_compact.search(compact) or on_spaced.search(spaced))


@dataclass(frozen=True)
class Rules:
    grounding: bool = False
    brevity: bool = False
    system_hash: str | None = None   # short hash of the system instruction text (None: no instruction)


NO_RULES = Rules()


def system_hash(text: str | None) -> str | None:
    """12 hex characters identifying a system instruction (what /_sim/requests reports)."""
    if not text:
        return None
    return hashlib.blake2b(text.encode(), digest_size=6).hexdigest()


@lru_cache(maxsize=1024)
def rules(system_text: str | None) -> Rules:
    """The rules found in a system instruction's text (cached: called once per request)."""
    if not system_text or not system_text.strip():
        return NO_RULES
    return Rules(grounding=_matches(_GROUNDING, system_text), brevity=_matches(_BREVITY, system_text),
                 system_hash=system_hash(system_text))


def grounding_rule(system_text: str | None) -> bool:
    """Whether a system instruction tells the model to answer only from what it knows / refuse."""
    return rules(system_text).grounding


def brevity_rule(system_text: str | None) -> bool:
    """Whether a system instruction asks for short answers."""
    return rules(system_text).brevity


def is_refusal(text: str) -> bool:
    """Whether an answer is a refusal ("답할 수 없습니다", "모르겠습니다", "I don't know", ...)."""
    return _matches(_REFUSAL, text)
