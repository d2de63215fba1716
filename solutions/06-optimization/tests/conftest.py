"""단위 테스트 공통 준비: LLM 도 네트워크도 쓰지 않습니다 (CI 의 test 잡에서 몇 초 안에 끝남).

서비스(main.py)는 불러올 때 설정을 읽으므로, 불러오기 전에 테스트용 설정을 환경 변수로 고정합니다
(이 폴더의 .env 보다 환경 변수가 우선합니다). LLM 주소는 닫힌 포트라서 실수로 불러도 밖으로 나가지 않습니다.
"""

import os
import sys
from pathlib import Path

import pytest

STEP_DIR = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(STEP_DIR))
os.environ.update({
    "GOOGLE_API_KEY": "test-gemini-key",
    "GOOGLE_GEMINI_BASE_URL": "http://127.0.0.1:9",
    "SERVICE_API_KEY": "test-service-key",
    "LLM_MODEL": "gemini-3.5-flash",
    "PROMPT_VERSION": "v2",
    # 판정은 테스트가 켤 때만 (판정 클라이언트의 주소도 닫힌 포트)
    "JUDGE_SAMPLE_RATE": "0",
    # BEGIN SOLUTION
    # 06단계: 05단계의 테스트(시도 횟수 = LLM_MAX_ATTEMPTS, 실패는 502/503/504)는 Fallback 과 회로 차단기 없이.
    # 06단계의 테스트(test_resilience.py)는 필요한 설정을 직접 바꿉니다.
    "FALLBACK_MODEL": "",
    "CIRCUIT_FAIL_MAX": "1000000",
    # 06단계 2부: 같은 질문을 여러 번 보내는 테스트들은 캐시 없이 (test_caching.py 가 캐시를 직접 켬).
    "CACHE_TTL_SECONDS": "0",
    # STARTER
    # # TODO 4 (lesson §3): Fallback 과 회로 차단기를 만들면 05단계 테스트는 그것 없이 (FALLBACK_MODEL="").
    # END SOLUTION
})


class FakeLLM:
    """ChatGoogleGenerativeAI 대신 쓰는 가짜: 받은 메시지를 기록하고 정해 둔 답을 돌려줍니다."""

    def __init__(self, answers: dict[str, str] | None = None, default: str = "제공된 정보로는 답할 수 없습니다."):
        self.answers = answers or {}
        self.default = default
        self.calls: list[list] = []

    async def ainvoke(self, messages):
        from langchain_core.messages import AIMessage

        self.calls.append(messages)
        question = messages[-1].content if isinstance(messages, list) else messages
        text = self.answers.get(question, self.default)
        n_in, n_out = len(str(messages)) // 4, len(text) // 2
        return AIMessage(content=text, usage_metadata={"input_tokens": n_in, "output_tokens": n_out,
                                                       "total_tokens": n_in + n_out})


@pytest.fixture
def fake_llm():
    return FakeLLM()


@pytest.fixture
def service(fake_llm):
    """서비스 모듈. 요청은 가짜 LLM 으로 갑니다 (FastAPI 의 dependency_overrides)."""
    import main

    main.app.dependency_overrides[main.get_llm] = lambda: fake_llm
    yield main
    main.app.dependency_overrides.clear()


@pytest.fixture
def client(service):
    from fastapi.testclient import TestClient

    with TestClient(service.app) as c:
        yield c
