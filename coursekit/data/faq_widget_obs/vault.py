"""암호화된 프롬프트 보관함 (Fernet, 키 교체는 MultiFernet). step 05 레슨의 예제.

WIDGET_PROMPT_KEYS = "새키,옛키,..." (쉼표로 구분, 첫 키로 암호화, 모든 키로 복호화). 없으면 아무것도 저장하지 않습니다.

    python vault.py show <request_id>    # 복호화해서 보기 (키가 있는 사람만)
    python vault.py rotate               # 모든 토큰을 첫 키로 다시 암호화
"""

import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

from cryptography.fernet import Fernet, MultiFernet

PATH = Path(os.environ.get("WIDGET_LOG_DIR", "logs")) / "prompts.jsonl"


def keys() -> MultiFernet | None:
    raw = [k.strip() for k in os.environ.get("WIDGET_PROMPT_KEYS", "").split(",") if k.strip()]
    return MultiFernet([Fernet(k) for k in raw]) if raw else None


def store(request_id: str, question: str, reply: str) -> bool:
    f = keys()
    if f is None:
        return False
    token = f.encrypt(json.dumps({"q": question, "reply": reply}, ensure_ascii=False).encode()).decode()
    row = {"request_id": request_id, "timestamp": datetime.now(UTC).isoformat(), "token": token}
    with PATH.open("a", encoding="utf-8") as out:
        out.write(json.dumps(row) + "\n")
    return True


def show(request_id: str) -> list[dict]:
    f = keys()
    return [json.loads(f.decrypt(row["token"].encode())) for row in map(json.loads, PATH.read_text().splitlines())
            if row["request_id"] == request_id]


def rotate() -> int:
    f = keys()
    rows = [json.loads(line) for line in PATH.read_text().splitlines()]
    for row in rows:
        row["token"] = f.rotate(row["token"].encode()).decode()
    tmp = PATH.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    tmp.replace(PATH)                                        # 한 번에 바꿔치기: 중간에 죽어도 반쪽 파일이 없음
    return len(rows)


if __name__ == "__main__":
    if sys.argv[1:2] == ["show"]:
        print(json.dumps(show(sys.argv[2]), ensure_ascii=False, indent=2))
    elif sys.argv[1:2] == ["rotate"]:
        print(f"{rotate()}개를 첫 키로 다시 암호화했습니다")
    else:
        sys.exit(__doc__)
