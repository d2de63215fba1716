"""평가 게이트(eval/gate.py): 데이터 읽기, 종료 코드, 보고서. LLM 대신 가짜를 씁니다."""

import json

import pytest

from eval import gate
from eval.metrics import REFUSED

REFUSAL = "제공된 정보로는 답할 수 없습니다."


def test_shipped_dataset_and_thresholds_load():
    items, markers = gate.load_dataset(gate.HERE / "dataset.toml")
    assert items and markers
    assert len({i.id for i in items}) == len(items)
    assert gate.load_thresholds(gate.HERE / "thresholds.toml")
    assert "gemini-3.5-flash" in gate.load_prices(gate.HERE / "prices.toml")


@pytest.mark.parametrize("text, message", [
    ("[thresholds]\n", "임계값이 하나도 없습니다"),
    ("[thresholds]\nmin_acuracy = 0.9\n", "모르는 임계값"),
    ("[thresholds]\nmin_accuracy = \"높게\"\n", "숫자여야"),
])
def test_bad_thresholds_are_errors_not_a_green_gate(tmp_path, text, message):
    path = tmp_path / "thresholds.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(gate.EvalError, match=message):
        gate.load_thresholds(path)


def test_bad_dataset_names_the_item(tmp_path):
    path = tmp_path / "dataset.toml"
    path.write_text('refusal_markers = ["모르겠습니다"]\n[[items]]\nid = "a"\nquestion = "질문"\nfacts = []\nkeywords = ["x"]\n',
                    encoding="utf-8")
    with pytest.raises(gate.EvalError, match="1번째 .*facts"):
        gate.load_dataset(path)


def perfect_answers():
    """평가 세트의 질문마다 맞는 답: 사실과 주제어를 담거나, 거절해야 할 질문이면 거절."""
    items, _ = gate.load_dataset(gate.HERE / "dataset.toml")
    return {i.question: (REFUSAL if i.refuse else " ".join(i.facts + i.keywords) + " 입니다.") for i in items}


def run(tmp_path, *args):
    return gate.main(["--out", str(tmp_path / "results"), *args])


def test_gate_passes_with_good_answers_and_writes_reports(service, fake_llm, tmp_path, capsys):
    fake_llm.answers = perfect_answers()
    assert run(tmp_path) == gate.EXIT_PASS
    report = json.loads((tmp_path / "results" / "report.json").read_text(encoding="utf-8"))
    assert report["passed"] and report["exit_code"] == 0
    assert report["model"] == "gemini-3.5-flash" and report["prompt_version"] == "v2"
    assert report["metrics"]["accuracy"] == 1.0 and report["metrics"]["refusal_accuracy"] == 1.0
    assert len(report["results"]) == len(fake_llm.answers)
    summary = (tmp_path / "results" / "summary.md").read_text(encoding="utf-8")
    assert "통과" in summary and "| 지표 |" in summary
    assert "정확도" in capsys.readouterr().out


def test_gate_fails_when_questions_that_must_be_refused_are_answered(service, fake_llm, tmp_path, capsys):
    fake_llm.answers = {q: ("오늘은 맑습니다." if a == REFUSAL else a) for q, a in perfect_answers().items()}
    assert run(tmp_path) == gate.EXIT_FAIL
    report = json.loads((tmp_path / "results" / "report.json").read_text(encoding="utf-8"))
    assert not report["passed"] and "refusal_accuracy" in {f["metric"] for f in report["failures"]}
    assert "실패" in capsys.readouterr().out


def test_gate_fails_when_the_model_does_not_know(service, fake_llm, tmp_path):
    fake_llm.answers = {}  # 모든 질문을 거절: 거절 정확도는 100% 지만 정확도 0%
    assert run(tmp_path) == gate.EXIT_FAIL
    report = json.loads((tmp_path / "results" / "report.json").read_text(encoding="utf-8"))
    assert report["metrics"]["outcomes"][REFUSED] == report["metrics"]["items"]
    assert "accuracy" in {f["metric"] for f in report["failures"]}


def test_missing_dataset_is_exit_2_and_keeps_previous_results(service, fake_llm, tmp_path, capsys):
    fake_llm.answers = perfect_answers()
    assert run(tmp_path) == gate.EXIT_PASS
    before = (tmp_path / "results" / "report.json").read_bytes()
    assert run(tmp_path, "--dataset", str(tmp_path / "none.toml")) == gate.EXIT_ERROR
    assert "평가 세트 파일이 없습니다" in capsys.readouterr().err
    assert (tmp_path / "results" / "report.json").read_bytes() == before


def test_bad_settings_are_exit_2_without_printing_secrets(tmp_path):
    import os
    import subprocess
    import sys

    from conftest import STEP_DIR

    env = {**os.environ, "GOOGLE_API_KEY": "한글-키", "SERVICE_API_KEY": "very-secret-service-key"}
    proc = subprocess.run([sys.executable, "-m", "eval", "--out", str(tmp_path / "results")], cwd=STEP_DIR, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == gate.EXIT_ERROR
    assert "GOOGLE_API_KEY" in proc.stderr and "Traceback" not in proc.stderr
    assert "very-secret-service-key" not in proc.stdout + proc.stderr
    assert not (tmp_path / "results").exists()
