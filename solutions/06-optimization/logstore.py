"""로그 조회 (레슨 §5 '로그 수집과 조회'): LOG_DIR 의 JSON 줄 로그(app.jsonl 과 돌려진 app.jsonl.1 ...)를
DuckDB 로 SQL 조회합니다 (read_ndjson_objects: 줄을 쓴 그대로, read_json_auto: 열을 추론한 표). 서버도 설치도 없이 파일을 바로 읽습니다.

    python -m logstore <request_id>     그 요청의 줄을 시간순으로 (한 줄에 JSON 하나)

운영에서는 같은 줄을 수집기가 Loki, Elasticsearch, Cloud Logging 으로 보냅니다 (README 의 '로그 수집').
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import duckdb
from pydantic_settings import BaseSettings, SettingsConfigDict


class LogSettings(BaseSettings):
    """서비스와 같은 LOG_DIR (환경 변수 또는 .env)."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    log_dir: str = "logs"


def lines_for(log_dir: str | Path, request_id: str) -> list[dict]:
    """LOG_DIR/*.jsonl* 에서 request_id 가 같은 줄 (timestamp 순)."""
    pattern = str(Path(log_dir) / "app.jsonl*")
    if not list(Path(log_dir).glob("app.jsonl*")):
        return []
    # read_ndjson_objects: 한 줄 = JSON 하나를 그대로 (줄마다 필드가 달라도, 시각 형식도 쓴 그대로). 집계할 때는
    # read_json_auto 가 열(column)을 추론해 표로 만듭니다 (README 의 '로그 조회'). 값은 매개변수(?)로:
    # request_id 를 SQL 문자열에 이어 붙이면 SQL 주입이 됩니다.
    rows = duckdb.execute(
        "SELECT json FROM read_ndjson_objects(?, ignore_errors=true)"
        " WHERE json ->> 'request_id' = ? ORDER BY json ->> 'timestamp'",
        [pattern, request_id],
    ).fetchall()
    return [json.loads(r[0]) for r in rows]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("사용법: python -m logstore <request_id>", file=sys.stderr)
        return 2
    log_dir = LogSettings().log_dir
    rows = lines_for(log_dir, argv[0])
    if not rows:
        print(f"{log_dir}/app.jsonl* 에 request_id={argv[0]} 인 줄이 없습니다.", file=sys.stderr)
        return 1
    for row in rows:
        print(json.dumps(row, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
