# 얇은 래퍼: 처음 실행하면 저장소 루트에 .venv/ 를 만들고 설치합니다.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# the maintainers' extra (playwright): only `make test` needs it
TEST_STAMP := $(VENV)/.installed-test

export NO_MKDOCS_2_WARNING := 1

.PHONY: help lab sim test grade docs docs-build starters bench bench-sim clean tracing-backend

help:
	@echo "make lab         시뮬레이터 + JupyterLab 으로 코스 시작"
	@echo "make sim         시뮬레이터만 실행 (course sim)"
	@echo "make test        모든 테스트 실행 (유지보수자용, 테스트 도구 .[test] 도 설치)"
	@echo "make grade       내 실습(steps/) 채점: pytest grader"
	@echo "make docs        문서 사이트를 로컬에서 미리보기"
	@echo "make docs-build  문서 사이트를 site/ 로 빌드"
	@echo "make starters    solutions/ 에서 steps/ 스타터 코드를 다시 생성 (유지보수자용)"
	@echo "make bench       단계별 서비스 벤치마크 (docs/benchmark.md 를 씀; 빠르게: ARGS=--quick, 미들웨어 비용만: ARGS=--middleware)"
	@echo "make bench-sim   시뮬레이터 처리량 벤치마크"
	@echo "make tracing-backend  step 05 의 MLflow 추적 서버를 .venv-mlflow/ 에 설치 (한 번, 약 1분·830 MB)"

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade --quiet pip
	$(BIN)/python -m pip install --quiet -e .
	@touch $(STAMP)

# Reinstalled whenever the base install was (pyproject.toml changed, or a venv made by `make lab`).
$(TEST_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(TEST_STAMP)

# step 05's trace backend: MLflow in its own venv .venv-mlflow/ (its pins conflict with the course venv)
tracing-backend: $(STAMP)
	$(BIN)/python -m coursekit.tracing

lab: $(STAMP) tracing-backend
	$(BIN)/course lab

sim: $(STAMP)
	$(BIN)/course sim

test: $(TEST_STAMP) tracing-backend
	$(BIN)/python -m pytest tests --durations=15

grade: $(STAMP) tracing-backend
	$(BIN)/python -m pytest grader

docs: $(STAMP)
	$(BIN)/mkdocs serve

docs-build: $(STAMP)
	$(BIN)/mkdocs build --strict

starters: $(STAMP)
	$(BIN)/course starters --write

bench: $(STAMP)
	$(BIN)/python benchmarks/bench.py $(ARGS)

bench-sim: $(STAMP)
	$(BIN)/python benchmarks/simulator_throughput.py $(ARGS)

clean:
	rm -rf $(VENV) .venv-mlflow site .pytest_cache
