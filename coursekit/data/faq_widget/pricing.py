"""토큰 -> 비용. 단가는 날짜가 있는 표(prices.toml)에서 읽습니다."""

import tomllib
from pathlib import Path

TABLE = tomllib.loads((Path(__file__).parent / "prices.toml").read_text(encoding="utf-8"))
PRICES_AS_OF = TABLE["as_of"]
PRICES = TABLE["models"]


def cost_usd(model: str, usage: dict) -> float:
    """usage_metadata 하나의 비용 (USD). 사고 토큰은 output_tokens 안에 이미 있으므로 한 번만 셉니다."""
    row = PRICES[model]
    return (usage["input_tokens"] * row["input_usd_per_1m"]
            + usage["output_tokens"] * row["output_usd_per_1m"]) / 1_000_000
