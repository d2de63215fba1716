"""06단계 2부: A/B 테스트의 변형과 사용자 배정 (lesson §15 'A/B 테스트').

- `Variant`: 변형 하나 = 프롬프트 버전 + 모델(None 이면 LLM_MODEL) + 몫(weight).
- `parse_variants(raw)` / `validate_variants(variants)`: AB_VARIANTS 의 검사. 변형 2개 이상, 이름은
  `^[a-z0-9_-]{1,20}$`, 몫의 합 1 (±1e-6). 틀리면 한국어 ValueError: 서비스가 시작하지 않습니다.
- `check_prompts(variants, load)`: 변형마다 프롬프트 파일이 있는지 시작할 때 확인하고 그 글을 돌려줍니다
  (`load` = 서비스의 `load_prompt` 같은 함수, 또는 prompts 폴더 경로).
- `assign(experiment, user, variants)`: 사용자를 변형 하나에 배정합니다. 해시로 정하므로
  * 끈끈함(sticky): 같은 사용자는 몇 번을 물어도, 어느 복제본이 답해도 같은 변형 (답이 요청마다 바뀌면 사용자가
    혼란스럽고, 한 사용자의 피드백이 두 변형에 섞여 비교가 흐려집니다);
  * 저장소가 없음: 누가 어느 변형인지 적어 둘 곳(DB, Redis)이 필요 없고 재시작해도 같음;
  * 실험끼리 독립: 실험 이름이 해시에 들어가므로 한 실험의 treatment 사용자가 다음 실험에서도 모두 treatment 로
    몰리지 않습니다 (앞 실험의 효과가 다음 실험에 섞이지 않음).
- `user_key(user_id, api_key)`: 배정의 기준. user_id 가 있으면 그것, 없으면 "key:" + API 키의 sha256 앞 16자리
  (한도가 쓰는 것과 같은 클라이언트 이름: 원래 키는 어디에도 남지 않음).
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable, Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

EXPERIMENT_PATTERN = r"^[a-z0-9][a-z0-9-]{0,39}$"  # AB_EXPERIMENT (빈 문자열 = 실험 없음)
VARIANT_PATTERN = r"^[a-z0-9_-]{1,20}$"  # 변형 이름: 메트릭 레이블과 X-Variant 헤더에 그대로 씀
WEIGHT_TOLERANCE = 1e-6
_VARIANT_NAME = re.compile(VARIANT_PATTERN)


class Variant(BaseModel):
    """변형 하나. 예: {"prompt_version": "v2", "model": null, "weight": 0.5}."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt_version: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="prompts/<버전>.txt")
    model: str | None = Field(default=None, description="None 이면 LLM_MODEL")
    weight: float = Field(gt=0, le=1, description="이 변형으로 보낼 사용자의 몫 (모든 변형의 합 = 1)")


_VARIANTS = TypeAdapter(dict[str, Variant])


def validate_variants(variants: Mapping[str, Variant]) -> dict[str, Variant]:
    """실험을 켤 때의 규칙: 변형 2개 이상, 이름 패턴, 몫의 합 1. 틀리면 ValueError (한국어)."""
    if len(variants) < 2:
        raise ValueError(f"AB_VARIANTS 에 변형이 2개 이상 있어야 합니다 (지금 {len(variants)}개): "
                         "비교할 상대가 없으면 실험이 아닙니다")
    bad = [name for name in variants if not _VARIANT_NAME.fullmatch(name)]
    if bad:
        raise ValueError(f"변형 이름 {bad} 가 규칙 {VARIANT_PATTERN} 에 맞지 않습니다 "
                         "(소문자, 숫자, -, _ 로 20자까지: 메트릭 레이블과 헤더에 그대로 씁니다)")
    total = math.fsum(v.weight for v in variants.values())
    if abs(total - 1.0) > WEIGHT_TOLERANCE:
        raise ValueError(f"AB_VARIANTS 의 weight 합이 1 이어야 합니다 (지금 {total:g})")
    return dict(variants)


def parse_variants(raw: str | bytes | Mapping) -> dict[str, Variant]:
    """AB_VARIANTS (JSON 글 또는 dict) -> {이름: Variant}, validate_variants 의 규칙까지 검사합니다."""
    if isinstance(raw, (str, bytes)):
        variants = _VARIANTS.validate_json(raw)
    else:
        variants = _VARIANTS.validate_python(raw)
    return validate_variants(variants)


def check_prompts(variants: Mapping[str, Variant], load: Callable[[str], str] | str | Path) -> dict[str, str]:
    """변형마다 시스템 프롬프트 글: {이름: 글}. 시작할 때 한 번 불러 파일이 없으면 서비스가 시작하지 않게 합니다.

    `load` 는 버전 -> 글 함수 (서비스의 load_prompt: 없으면 RuntimeError) 또는 prompts 폴더 경로."""
    if not callable(load):
        folder = Path(load)

        def load(version: str) -> str:
            path = folder / f"{version}.txt"
            if not path.is_file():
                raise RuntimeError(f"프롬프트 파일 {path} 가 없습니다")
            text = path.read_text(encoding="utf-8").strip()
            if not text:
                raise RuntimeError(f"프롬프트 파일 {path} 가 비어 있습니다")
            return text

    texts = {}
    for name, variant in variants.items():
        try:
            texts[name] = load(variant.prompt_version)
        except (RuntimeError, OSError, ValueError) as exc:
            raise RuntimeError(f"A/B 변형 {name!r} 의 prompt_version={variant.prompt_version!r}: {exc}") from exc
    return texts


def bucket(experiment: str, user: str) -> float:
    """[0, 1) 의 수 하나: sha256(f"{experiment}:{user}") 의 앞 8바이트를 정수로 읽어 2**64 로 나눔.

    같은 (실험, 사용자) 는 늘 같은 수, 다른 실험이면 서로 관계없는 수 (sha256 은 고르게 흩어짐)."""
    # TODO 21 (lesson §15 'A/B 테스트'): hashlib.sha256(f"{experiment}:{user}".encode()).digest() 의 앞 8바이트를
    # int.from_bytes(..., "big") 로 읽어 2**64 로 나누세요. random 을 쓰면 같은 사용자가 요청마다 다른 변형을 받습니다.
    return 0.0


def assign(experiment: str, user: str, variants: Mapping[str, Variant]) -> str:
    """사용자의 변형 이름. bucket 을 dict 순서대로 쌓은 weight 구간에 놓습니다
    (예: control 0.3, treatment 0.7 -> [0, 0.3) 은 control, [0.3, 1) 은 treatment)."""
    # TODO 21 (lesson §15 'A/B 테스트'): bucket(experiment, user) 를 variants 의 weight 를 순서대로 더한 구간에
    # 놓아 변형 이름을 고르세요 (몫을 무시하고 고르게 나누면 0.3/0.7 실험이 0.5/0.5 가 됩니다).
    return next(iter(variants))


def user_key(user_id: str | None, api_key: str) -> str:
    """배정의 기준이 되는 사용자: user_id, 없으면 "key:" + sha256(API 키) 16진수 앞 16자리
    (resilience.client_id 와 같은 값: 한도와 배정이 같은 클라이언트를 봄, 원래 키는 남지 않음)."""
    if user_id:
        return user_id
    return "key:" + hashlib.sha256(api_key.encode()).hexdigest()[:16]
