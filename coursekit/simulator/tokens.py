"""Deterministic token-count approximation used by generateContent and countTokens.

Rule (documented in README.md):
  * Hangul / CJK characters: 2 tokens per 3 characters of a run (rounded up)
    -> Korean text costs about 1 token per 1.5 characters.
  * Latin letters / digits: 1 token per 4 characters of a run (rounded up).
  * Every other non-space character (punctuation, symbols): 1 token.
  * Whitespace: 0 tokens.
The same function counts prompts and answers, so countTokens == promptTokenCount.
"""

from __future__ import annotations

import re
from functools import lru_cache

__all__ = ["count_tokens", "count_request_tokens", "split_tokens"]

_CJK = r"\u1100-\u11ff\u3130-\u318f\uac00-\ud7a3\u3040-\u30ff\u4e00-\u9fff"
_RUN = re.compile(rf"[{_CJK}]+|[A-Za-z0-9]+|\S")
_CJK_RE = re.compile(rf"[{_CJK}]")


@lru_cache(maxsize=4096)
def count_tokens(text: str) -> int:
    total = 0
    for m in _RUN.finditer(text):
        run = m.group()
        n = len(run)
        if _CJK_RE.match(run):
            total += -(-2 * n // 3)
        elif run[0].isascii() and run[0].isalnum():
            total += -(-n // 4)
        else:
            total += 1
    return total


def split_tokens(text: str) -> list[str]:
    """Split text into pieces whose concatenation is `text` (for streaming chunks).

    Each piece is one run with its leading whitespace; pieces are what the SSE
    stream groups into chunks."""
    pieces: list[str] = []
    last = 0
    for m in _RUN.finditer(text):
        pieces.append(text[last:m.end()])
        last = m.end()
    if last < len(text):
        if pieces:
            pieces[-1] += text[last:]
        else:
            pieces.append(text[last:])
    return pieces


def _texts(obj) -> list[str]:
    out: list[str] = []
    if isinstance(obj, dict):
        for part in obj.get("parts") or []:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                out.append(part["text"])
    return out


def count_request_tokens(contents: list, system_instruction=None) -> int:
    """Prompt tokens of a request: all text parts of contents + systemInstruction."""
    total = 0
    for c in contents:
        for t in _texts(c):
            total += count_tokens(t)
    if system_instruction:
        for t in _texts(system_instruction):
            total += count_tokens(t)
    return max(total, 1)
