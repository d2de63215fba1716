"""Model profiles and prices (one table: coursekit/data/models.toml).

    >>> from coursekit.simulator.models import price_for, cost_usd
    >>> cost_usd("gemini-3.5-flash", input_tokens=1000, output_tokens=500)
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

__all__ = ["ModelProfile", "Price", "load_table", "profile", "known_models", "judge_models", "price_for",
           "cost_usd", "MODELS_PATH", "DEFAULT_MODEL", "JUDGE_MODEL"]

MODELS_PATH = Path(__file__).resolve().parent.parent / "data" / "models.toml"
DEFAULT_MODEL = "gemini-3.5-flash"
JUDGE_MODEL = "gemini-3.5-flash-judge"   # the judge profile ([judge_models] in models.toml, README 10)


@dataclass(frozen=True)
class Price:
    input_usd_per_1m: float
    output_usd_per_1m: float
    source: str = ""


@dataclass(frozen=True)
class ModelProfile:
    name: str
    display_name: str
    description: str
    input_usd_per_1m: float
    output_usd_per_1m: float
    price_source: str
    ttft_seconds: float
    per_token_seconds: float
    jitter_sigma: float
    tail_prob: float
    tail_min: float
    tail_max: float
    kb_recall: float
    thinking: bool
    hallucination_rate: float = 0.0  # P(invents a wrong answer | does not know the entry, no grounding rule)
    thinking_ratio: float = 0.0
    answer_style: str = "standard"
    known: bool = True  # False when an unknown name is served with the default profile
    judge: bool = False  # a judge model: answers with a verdict on (question, answer) (evaluation.judge)

    @property
    def price(self) -> Price:
        return Price(self.input_usd_per_1m, self.output_usd_per_1m, self.price_source)


@lru_cache(maxsize=1)
def load_table() -> dict:
    with MODELS_PATH.open("rb") as f:
        return tomllib.load(f)


@lru_cache(maxsize=1)
def _profiles() -> dict[str, ModelProfile]:
    table = load_table()
    out = {}
    for name, row in table["models"].items():
        out[name] = ModelProfile(name=name, **row)
    for name, row in table.get("judge_models", {}).items():
        out[name] = ModelProfile(name=name, judge=True, **row)
    return out


def known_models() -> list[str]:
    """The answering models (the [models] table; judge models are listed by judge_models())."""
    return [name for name, p in _profiles().items() if not p.judge]


def judge_models() -> list[str]:
    """The judge models (the [judge_models] table): they answer a verdict, see evaluation.judge."""
    return [name for name, p in _profiles().items() if p.judge]


def _normalize(model: str) -> str:
    model = (model or "").strip()
    return model.removeprefix("models/")


@lru_cache(maxsize=256)
def profile(model: str) -> ModelProfile:
    """Profile of `model`; unknown names get the default profile (known=False)."""
    name = _normalize(model)
    profiles = _profiles()
    if name in profiles:
        return profiles[name]
    base = profiles[load_table().get("default_profile", DEFAULT_MODEL)]
    from dataclasses import replace
    return replace(base, name=name or base.name, display_name=f"{name} (기본 프로필)", known=False)


def price_for(model: str) -> Price:
    """USD per 1M input/output tokens (unknown models: the default profile's price)."""
    return profile(model).price


def cost_usd(model: str, input_tokens: int, output_tokens: int, thoughts_tokens: int = 0) -> float:
    """API cost in USD. Thinking tokens are billed at the output price (as Google does).

    Note: LangChain's `usage_metadata["output_tokens"]` already includes thinking tokens
    (see README.md); pass thoughts_tokens only when output_tokens excludes them
    (e.g. Google's raw `candidatesTokenCount`)."""
    p = price_for(model)
    return (input_tokens * p.input_usd_per_1m + (output_tokens + thoughts_tokens) * p.output_usd_per_1m) / 1_000_000
