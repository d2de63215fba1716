"""06단계 2부 단위 테스트 (TODO 21, lesson §15 'A/B 테스트'): AB_VARIANTS 의 검사, 해시 배정의 몫(20000명),
끈끈함(같은 사용자는 늘 같은 변형), 실험끼리의 독립, user_id 가 없을 때의 사용자 키. 네트워크도 LLM 도 쓰지 않습니다."""

import hashlib
from collections import Counter
from pathlib import Path

import experiments
import pytest
from experiments import Variant

PROMPTS = Path(__file__).resolve().parents[1] / "prompts"
USERS = [f"user-{i}" for i in range(20000)]


def variants(**weights: float) -> dict[str, Variant]:
    return {name: Variant(prompt_version="v1" if i == 0 else "v2", weight=w)
            for i, (name, w) in enumerate(weights.items())}


def shares(experiment: str, vs: dict[str, Variant], users=USERS) -> dict[str, float]:
    counts = Counter(experiments.assign(experiment, user, vs) for user in users)
    return {name: counts[name] / len(users) for name in vs}


# --------------------------------------------------------------------------- AB_VARIANTS 의 검사
def test_parse_variants_from_json_and_dict():
    raw = ('{"control": {"prompt_version": "v1", "weight": 0.3},'
           ' "treatment": {"prompt_version": "v2", "model": "gemini-3.5-pro", "weight": 0.7}}')
    parsed = experiments.parse_variants(raw)
    assert list(parsed) == ["control", "treatment"]  # 순서 = 구간의 순서
    assert parsed["control"].model is None and parsed["treatment"].model == "gemini-3.5-pro"
    assert experiments.parse_variants({"a": {"prompt_version": "v1", "weight": 0.5},
                                       "b": {"prompt_version": "v2", "weight": 0.5}})["b"].weight == 0.5


@pytest.mark.parametrize("raw, words", [
    ({"only": {"prompt_version": "v1", "weight": 1.0}}, "2개 이상"),
    ({"a": {"prompt_version": "v1", "weight": 0.5}, "b": {"prompt_version": "v2", "weight": 0.4}}, "합이 1"),
    ({"a": {"prompt_version": "v1", "weight": 0.6}, "b": {"prompt_version": "v2", "weight": 0.6}}, "합이 1"),
    ({"Control": {"prompt_version": "v1", "weight": 0.5}, "b": {"prompt_version": "v2", "weight": 0.5}}, "규칙"),
    ({"a b": {"prompt_version": "v1", "weight": 0.5}, "b": {"prompt_version": "v2", "weight": 0.5}}, "규칙"),
])
def test_bad_variants_are_refused_in_korean(raw, words):
    with pytest.raises(ValueError, match=words):
        experiments.parse_variants(raw)


@pytest.mark.parametrize("bad", [
    {"prompt_version": "v1", "weight": 0},  # 몫 0
    {"prompt_version": "v1", "weight": -0.5},
    {"prompt_version": "../v1", "weight": 0.5},  # 경로를 넘나드는 버전
    {"prompt_version": "v1", "weight": 0.5, "typo": 1},  # 모르는 필드
])
def test_bad_variant_fields_are_refused(bad):
    with pytest.raises(ValueError):
        experiments.parse_variants({"a": bad, "b": {"prompt_version": "v2", "weight": 0.5}})


def test_weights_summing_to_one_within_tolerance():
    thirds = {n: {"prompt_version": "v1", "weight": 1 / 3} for n in ("a", "b", "c")}
    assert len(experiments.parse_variants(thirds)) == 3


def test_check_prompts_with_folder_and_with_loader():
    vs = variants(control=0.5, treatment=0.5)
    texts = experiments.check_prompts(vs, PROMPTS)
    assert texts == {"control": (PROMPTS / "v1.txt").read_text(encoding="utf-8").strip(),
                     "treatment": (PROMPTS / "v2.txt").read_text(encoding="utf-8").strip()}
    assert experiments.check_prompts(vs, lambda version: f"<{version}>") == {"control": "<v1>", "treatment": "<v2>"}


def test_check_prompts_names_the_variant_whose_file_is_missing():
    vs = {"control": Variant(prompt_version="v1", weight=0.5), "treatment": Variant(prompt_version="v9", weight=0.5)}
    with pytest.raises(RuntimeError, match="treatment.*v9"):
        experiments.check_prompts(vs, PROMPTS)

    def loader(version):
        raise RuntimeError(f"PROMPT_VERSION={version!r} 의 프롬프트 파일이 없습니다")

    with pytest.raises(RuntimeError, match="control"):
        experiments.check_prompts(vs, loader)


# --------------------------------------------------------------------------- 배정
def test_bucket_is_the_first_8_bytes_of_sha256():
    digest = hashlib.sha256(b"prompt-v2-vs-v1:alice").digest()
    assert experiments.bucket("prompt-v2-vs-v1", "alice") == int.from_bytes(digest[:8], "big") / 2**64
    assert 0 <= experiments.bucket("x", "y") < 1


@pytest.mark.parametrize("weights", [{"control": 0.3, "treatment": 0.7}, {"a": 0.5, "b": 0.5},
                                     {"a": 0.1, "b": 0.2, "c": 0.7}])
def test_split_follows_the_weights_over_20000_users(weights):
    measured = shares("exp-split", variants(**weights))
    for name, weight in weights.items():
        assert abs(measured[name] - weight) <= 0.02, (name, measured)


def test_assignment_walks_the_weights_in_dict_order():
    # 같은 사용자의 bucket 이 0.3 보다 작으면 첫 변형: 순서를 바꾸면 구간도 바뀜
    vs = variants(control=0.3, treatment=0.7)
    for user in USERS[:500]:
        expected = "control" if experiments.bucket("exp-order", user) < 0.3 else "treatment"
        assert experiments.assign("exp-order", user, vs) == expected


def test_assignment_is_sticky():
    vs = variants(control=0.3, treatment=0.7)
    first = [experiments.assign("exp-sticky", u, vs) for u in USERS[:2000]]
    again = [experiments.assign("exp-sticky", u, vs) for u in USERS[:2000]]
    rebuilt = [experiments.assign("exp-sticky", u, experiments.parse_variants(
        {"control": {"prompt_version": "v1", "weight": 0.3},
         "treatment": {"prompt_version": "v2", "weight": 0.7}})) for u in USERS[:2000]]
    assert first == again == rebuilt


def test_experiments_are_independent():
    """실험 1 의 control 사용자가 실험 2 에서도 control 로 몰리지 않음 (실험 이름이 해시에 들어감)."""
    vs = variants(a=0.5, b=0.5)
    in_a = [u for u in USERS if experiments.assign("exp-one", u, vs) == "a"]
    second = shares("exp-two", vs, in_a)
    assert abs(second["a"] - 0.5) <= 0.03, second
    same = sum(experiments.assign("exp-one", u, vs) == experiments.assign("exp-two", u, vs) for u in USERS)
    assert abs(same / len(USERS) - 0.5) <= 0.03


def test_last_variant_catches_a_sum_slightly_below_one():
    vs = {"a": Variant(prompt_version="v1", weight=0.5), "b": Variant(prompt_version="v2", weight=0.4999999)}
    assert {experiments.assign("exp-edge", u, vs) for u in USERS[:2000]} == {"a", "b"}


# --------------------------------------------------------------------------- 사용자 키
def test_user_key_prefers_the_user_id():
    assert experiments.user_key("alice", "lab-service-key") == "alice"


def test_user_key_without_user_id_is_the_hashed_api_key():
    import resilience

    key = experiments.user_key(None, "lab-service-key")
    assert key == "key:" + hashlib.sha256(b"lab-service-key").hexdigest()[:16]
    assert key == "key:" + resilience.client_id("lab-service-key")  # 한도와 같은 클라이언트 이름
    assert "lab-service-key" not in key
    assert experiments.user_key("", "other-key") != key
