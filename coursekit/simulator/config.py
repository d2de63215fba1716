"""Simulator settings: defaults < environment (SIM_*) < CLI flags < runtime PATCH."""

from __future__ import annotations

import os
from typing import Any

__all__ = ["DEFAULTS", "ENV_PREFIX", "ConfigError", "validate", "from_env", "check_ascii_key"]

ENV_PREFIX = "SIM_"

DEFAULTS: dict[str, Any] = {
    "latency": "zero",          # "zero" | "realistic"
    "latency_scale": 1.0,
    "seed": 0,
    "error_429_rate": 0.0,
    "error_500_rate": 0.0,
    "error_503_rate": 0.0,
    "hang_rate": 0.0,
    "malformed_rate": 0.0,      # HTTP 200 with a body that is not a GenerateContentResponse
    "hang_seconds": 30.0,
    "quota_rpm": None,          # int per API key, or None
    "valid_keys": None,         # list of keys, or None = any non-empty key
    "fault_models": None,       # list of model names, or None = all models
    # step 06: what production upstreams also do (all off by default; seeded draws happen
    # only when a rate is > 0, so existing seeds keep their fault order)
    "safety_block_rate": 0.0,   # HTTP 200, candidate finishReason SAFETY, no text
    "empty_candidates_rate": 0.0,   # HTTP 200 with "candidates": []
    "slow_first_token_seconds": 0.0,    # extra wait before the first byte (unary and stream)
    "slow_first_token_rate": 1.0,       # share of requests that get that wait (when seconds > 0)
    "slow_stream_chunk_seconds": 0.0,   # extra wait before every stream chunk after the first
    "stream_cut_rate": 0.0,     # a stream whose connection closes mid-answer
    "max_concurrency": None,    # int: requests generated at once per model; the rest wait (FIFO)
}


class ConfigError(ValueError):
    pass


def check_ascii_key(value: str, name: str) -> None:
    """API keys travel in HTTP headers (latin-1): a Korean placeholder breaks every request later
    with UnicodeEncodeError, so refuse it up front with a Korean message."""
    if not value.isascii() or not value.isprintable():
        bad = "".join(sorted({c for c in value if not (c.isascii() and c.isprintable())}))
        raise ConfigError(
            f"{name}: API 키 {value!r} 에 ASCII 가 아닌 문자({bad!r})가 있습니다. 키는 HTTP 헤더로 "
            f"전달되므로 영문·숫자·기호만 쓸 수 있습니다 (예: sim-any-key)")


def _as_list(value: Any) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        items = [v.strip() for v in value.split(",") if v.strip()]
        return items or None
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ConfigError("문자열 목록(또는 쉼표로 구분한 문자열)이어야 합니다")


def _rate(value: Any) -> float:
    if isinstance(value, bool):
        raise ConfigError("0 과 1 사이의 숫자여야 합니다")
    v = float(value)
    if not 0.0 <= v <= 1.0:
        raise ConfigError("0 과 1 사이의 숫자여야 합니다")
    return v


def _coerce(key: str, value: Any) -> Any:
    try:
        if key == "latency":
            if value not in ("zero", "realistic"):
                raise ConfigError("'zero' 또는 'realistic' 이어야 합니다")
            return value
        if key in ("latency_scale", "hang_seconds", "slow_first_token_seconds", "slow_stream_chunk_seconds"):
            if isinstance(value, bool):
                raise ConfigError("0 이상의 숫자여야 합니다")
            v = float(value)
            if v < 0:
                raise ConfigError("0 이상의 숫자여야 합니다")
            return v
        if key == "seed":
            if isinstance(value, bool):
                raise ConfigError("정수여야 합니다")
            return int(value)
        if key.endswith("_rate"):
            return _rate(value)
        if key in ("quota_rpm", "max_concurrency"):
            if value is None or value == "" or (isinstance(value, str) and value.lower() in ("none", "null", "0")):
                return None
            if isinstance(value, bool):
                raise ConfigError("양의 정수 또는 null 이어야 합니다")
            v = int(value)
            if v <= 0:
                return None
            return v
        if key == "valid_keys":
            keys = _as_list(value)
            for k in keys or ():
                check_ascii_key(k, "valid_keys")
            return keys
        if key == "fault_models":
            return _as_list(value)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise ConfigError(f"{key}: {exc}") from None
        raise ConfigError(f"{key}: 값 {value!r} 을(를) 해석할 수 없습니다") from None
    raise ConfigError(f"알 수 없는 설정 키: {key} (가능한 키: {', '.join(DEFAULTS)})")


def validate(changes: dict[str, Any]) -> dict[str, Any]:
    """Validate and coerce a partial config; raises ConfigError (Korean message)."""
    if not isinstance(changes, dict):
        raise ConfigError("설정은 JSON 객체여야 합니다")
    out = {}
    for key, value in changes.items():
        if key not in DEFAULTS:
            raise ConfigError(f"알 수 없는 설정 키: {key} (가능한 키: {', '.join(DEFAULTS)})")
        out[key] = _coerce(key, value)
    if out.get("error_429_rate", 0) + out.get("error_500_rate", 0) + out.get("error_503_rate", 0) > 1.0:
        raise ConfigError("error_429_rate + error_500_rate + error_503_rate 는 1 이하여야 합니다")
    return out


def from_env(environ: dict[str, str] | None = None) -> dict[str, Any]:
    """Config values found in SIM_* environment variables (e.g. SIM_ERROR_429_RATE=0.1)."""
    env = os.environ if environ is None else environ
    found = {}
    for key in DEFAULTS:
        name = ENV_PREFIX + key.upper()
        if name in env:
            found[key] = env[name]
    return validate(found)
