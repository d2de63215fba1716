"""채점기 전용 Locust 시나리오 (step 06): POST /chat 을 보내고 응답마다 한 줄씩 결과 파일에 적습니다.

학습자 폴더의 locustfile.py 가 아니라 이 파일을 씁니다. 설정은 환경 변수로만 받습니다:

- GRADER_SERVICE_KEYS: 쉼표로 구분한 서비스 키 (사용자마다 차례로 하나씩; 키별 한도를 나눠 쓰려고)
- GRADER_RESULTS_FILE: 응답마다 JSON 한 줄 (status, code, retry_after, fallback, model, seconds, rid)
- GRADER_CA_FILE: HTTPS 로 보낼 때 검증할 CA 인증서 (채점기의 테스트 CA)
- GRADER_PACING: 사용자 한 명이 요청을 보내는 간격(초). 0 이면 쉬지 않음
- GRADER_CONNECTION_CLOSE: 1 이면 요청마다 새 연결 (Connection: close). nginx 를 다시 읽게 하는 동안: 옛 워커가
  keep-alive 연결을 닫는 순간 그 연결로 보낸 POST 는 사라지고 다시 보내지지 않습니다 (밸런서와 클라이언트 사이의 일)
"""

import itertools
import json
import os
import time

from locust import HttpUser, constant, constant_pacing, task

QUESTIONS = [
    "하늘클라우드 요금제는 어떻게 되나요?",
    "API 키를 잃어버렸어요. 어떻게 하나요?",
    "서비스 장애가 나면 어디서 확인하나요?",
    "로그는 얼마 동안 보관되나요?",
]
KEYS = [k for k in os.environ.get("GRADER_SERVICE_KEYS", "").split(",") if k]
RESULTS = os.environ.get("GRADER_RESULTS_FILE")
CA_FILE = os.environ.get("GRADER_CA_FILE")
PACING = float(os.environ.get("GRADER_PACING", "0") or 0)
CLOSE = os.environ.get("GRADER_CONNECTION_CLOSE") == "1"
_counter = itertools.count()
_users = itertools.count()
_out = open(RESULTS, "a", encoding="utf-8", buffering=1) if RESULTS else None  # noqa: SIM115


class ChatUser(HttpUser):
    wait_time = constant_pacing(PACING) if PACING > 0 else constant(0)

    def on_start(self):
        self.key = KEYS[next(_users) % len(KEYS)] if KEYS else ""
        if CA_FILE:
            self.client.verify = CA_FILE

    @task
    def chat(self):
        n = next(_counter)
        message = f"{QUESTIONS[n % len(QUESTIONS)]} (요청 {n})"
        started = time.monotonic()
        headers = {"X-API-Key": self.key, **({"Connection": "close"} if CLOSE else {})}
        with self.client.post("/chat", json={"message": message}, headers=headers,
                              timeout=30, catch_response=True, name="POST /chat") as resp:
            row = {"status": resp.status_code, "seconds": round(time.monotonic() - started, 4),
                   "retry_after": resp.headers.get("Retry-After"), "rid": resp.headers.get("X-Request-ID"),
                   "code": None, "fallback": None, "model": None}
            try:
                body = resp.json()
            except ValueError:
                body = None
            if isinstance(body, dict):
                err = body.get("error")
                row["code"] = err.get("code") if isinstance(err, dict) else None
                row["fallback"] = body.get("fallback")
                row["model"] = body.get("model")
            if _out is not None:
                _out.write(json.dumps(row, ensure_ascii=False) + "\n")
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code} {row['code'] or ''}".strip())
            else:
                resp.success()
