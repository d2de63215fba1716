"""서비스: 프롬프트 버전이 설정에서 오고, 시스템 지시로 전달되며, 응답에 보고됩니다."""

import pytest

from conftest import STEP_DIR

HEADERS = {"X-API-Key": "test-service-key"}


def test_health_reports_model_and_prompt_version(client, fake_llm):
    r = client.get("/health")
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "model": "gemini-3.5-flash", "prompt_version": "v2"}
    assert fake_llm.calls == []  # /health 는 LLM 을 부르지 않음


def test_chat_sends_the_prompt_file_as_system_instruction(client, fake_llm):
    r = client.post("/chat", json={"message": "요금제는 어떻게 되나요?"}, headers=HEADERS)
    assert r.status_code == 200
    assert r.json()["prompt_version"] == "v2" and r.json()["model"] == "gemini-3.5-flash"
    (messages,) = fake_llm.calls
    system, human = messages
    assert system.type == "system" and system.content == (STEP_DIR / "prompts" / "v2.txt").read_text(encoding="utf-8").strip()
    assert human.type == "human" and human.content == "요금제는 어떻게 되나요?"


def test_every_shipped_prompt_loads(service):
    for path in sorted((STEP_DIR / "prompts").glob("*.txt")):
        assert service.load_prompt(path.stem)


def test_unknown_prompt_version_stops_with_a_clear_error(service):
    with pytest.raises(RuntimeError, match="프롬프트 파일"):
        service.load_prompt("no-such-version")


@pytest.mark.parametrize("bad", ["../main", "v2/../../x", ""])
def test_prompt_version_cannot_leave_the_prompts_folder(service, bad):
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        service.Settings(prompt_version=bad)
