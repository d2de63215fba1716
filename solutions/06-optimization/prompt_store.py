"""암호화된 프롬프트 저장소 (레슨 §4 '남기면 안 되는 것과 프롬프트 암호화', 체크리스트의 데이터 암호화).

질문과 답은 로그에 쓰지 않습니다. 꼭 남겨야 할 때(품질 조사, 감사)는 PROMPT_ENCRYPTION_KEYS 를 설정하면
/chat 마다 LOG_DIR/prompts.jsonl 에 한 줄 {"request_id", "timestamp", "token"} 을 덧붙입니다. token 은
{"message": 질문, "answer": 답} 의 Fernet 토큰(AES-128-CBC + HMAC-SHA256, cryptography 패키지)입니다.

    PROMPT_ENCRYPTION_KEYS=새키,옛키     쉼표로 구분. 첫 키가 암호화하고, 모든 키가 복호화합니다 (MultiFernet).
    python -m prompt_store show <request_id>   그 요청의 질문과 답을 복호화해 JSON 으로 출력
    python -m prompt_store rotate              모든 토큰을 첫 키로 다시 암호화 (그 뒤에는 옛 키를 빼도 됨)

키 만들기:  python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"
설정이 없으면 아무것도 저장하지 않습니다.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

PROMPTS_FILE = "prompts.jsonl"


class StoreSettings(BaseSettings):
    """서비스와 같은 환경 변수와 .env 에서 LOG_DIR 와 PROMPT_ENCRYPTION_KEYS 만 읽습니다."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    log_dir: str = "logs"
    prompt_encryption_keys: SecretStr | None = None


def keyring(keys: SecretStr | str | None) -> MultiFernet | None:
    """쉼표로 구분한 Fernet 키들 -> MultiFernet (첫 키가 암호화). 없으면 None (저장하지 않음)."""
    if isinstance(keys, SecretStr):
        keys = keys.get_secret_value()
    parts = [k.strip() for k in (keys or "").split(",") if k.strip()]
    if not parts:
        return None
    return MultiFernet([Fernet(k) for k in parts])


def append(log_dir: str | Path, fernet: MultiFernet | None, request_id: str, message: str, answer: str) -> None:
    """/chat 한 번의 질문과 답을 암호화해 LOG_DIR/prompts.jsonl 에 한 줄 덧붙입니다 (fernet 이 None 이면 안 함)."""
    if fernet is None:
        return
    token = fernet.encrypt(json.dumps({"message": message, "answer": answer}, ensure_ascii=False).encode("utf-8"))
    line = {"request_id": request_id, "timestamp": datetime.now(timezone.utc).isoformat(), "token": token.decode()}
    path = Path(log_dir)
    path.mkdir(parents=True, exist_ok=True)
    with open(path / PROMPTS_FILE, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(line) + "\n")


def _lines(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def show(log_dir: str | Path, fernet: MultiFernet, request_id: str) -> list[dict]:
    """그 요청의 저장된 질문과 답 (복호화)."""
    out = []
    for row in _lines(Path(log_dir) / PROMPTS_FILE):
        if row.get("request_id") == request_id:
            out.append({"request_id": request_id, "timestamp": row.get("timestamp"),
                        **json.loads(fernet.decrypt(row["token"].encode()))})
    return out


def rotate(log_dir: str | Path, fernet: MultiFernet) -> int:
    """모든 토큰을 첫 키로 다시 암호화합니다 (파일을 통째로 바꿈: 서비스가 쓰는 중이면 멈춘 뒤에). 바꾼 줄 수."""
    path = Path(log_dir) / PROMPTS_FILE
    rows = _lines(path)
    for row in rows:
        row["token"] = fernet.rotate(row["token"].encode()).decode()
    if not rows:
        return 0
    with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=path.parent, delete=False) as tmp:
        tmp.writelines(json.dumps(row) + "\n" for row in rows)
    os.replace(tmp.name, path)
    return len(rows)


USAGE = "사용법: python -m prompt_store show <request_id> | python -m prompt_store rotate"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    settings = StoreSettings()
    fernet = keyring(settings.prompt_encryption_keys)
    if fernet is None:
        print("PROMPT_ENCRYPTION_KEYS 가 설정되지 않았습니다 (쉼표로 구분한 Fernet 키).", file=sys.stderr)
        return 2
    try:
        if argv[:1] == ["show"] and len(argv) == 2:
            rows = show(settings.log_dir, fernet, argv[1])
            if not rows:
                print(f"{Path(settings.log_dir) / PROMPTS_FILE} 에 request_id={argv[1]} 가 없습니다.", file=sys.stderr)
                return 1
            for row in rows:
                print(json.dumps(row, ensure_ascii=False))
            return 0
        if argv == ["rotate"]:
            print(f"{rotate(settings.log_dir, fernet)} 줄을 첫 키로 다시 암호화했습니다.")
            return 0
    except InvalidToken:
        print("복호화 실패: 이 토큰을 만든 키가 PROMPT_ENCRYPTION_KEYS 에 없습니다.", file=sys.stderr)
        return 1
    print(USAGE, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
