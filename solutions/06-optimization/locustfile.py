"""손으로 부하를 걸어 보는 Locust 시나리오: 사용자가 쉬지 않고 POST /chat 에 질문합니다.

서비스와 시뮬레이터를 띄운 뒤 (README.md 참고), 같은 폴더에서:

    # 화면 없이 (headless) 사용자 50명, 초당 50명씩 늘려 30초 동안. 끝나면 p50/p95/p99 표가 나옵니다.
    SERVICE_API_KEY=lab-service-key locust -f locustfile.py --host http://127.0.0.1:8000 \
        --headless -u 50 -r 50 -t 30s

    # 웹 화면으로 (http://127.0.0.1:8089 에서 사용자 수를 바꿔 가며 그래프 보기)
    SERVICE_API_KEY=lab-service-key locust -f locustfile.py --host http://127.0.0.1:8000

채점기는 이 파일이 아니라 grader/scenarios/chat.py 를 씁니다. 마음껏 고쳐 보세요.
"""

import os
import random

from locust import HttpUser, between, task

# 시뮬레이터의 지식 베이스에 있는 주제로 물어봅니다.
QUESTIONS = [
    "하늘클라우드 요금제는 어떻게 되나요?",
    "API 키를 잃어버렸어요. 어떻게 하나요?",
    "서비스 장애가 나면 어디서 확인하나요?",
    "Rate limit 을 넘기면 어떻게 되나요?",
    "로그는 얼마 동안 보관되나요?",
    "배포를 되돌리려면 어떻게 하나요?",
]


class ChatUser(HttpUser):
    # 사용자마다 요청 사이에 0~0.5초 쉽니다. 최대 부하를 보려면 constant(0) 으로 바꾸세요.
    wait_time = between(0, 0.5)

    def on_start(self):
        # 서비스와 같은 SERVICE_API_KEY 를 환경 변수로 넘기세요 (.env 는 Locust 가 읽지 않습니다).
        self.headers = {"X-API-Key": os.environ.get("SERVICE_API_KEY", "")}

    @task(5)  # 질문 5번에 헬스 체크 1번 꼴
    def chat(self):
        with self.client.post(
            "/chat",
            json={"message": random.choice(QUESTIONS)},
            headers=self.headers,
            timeout=30,
            name="POST /chat",
            catch_response=True,
        ) as resp:
            # 200 이 아니면 실패로 셉니다 (401 이면 SERVICE_API_KEY 를 확인하세요).
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}: {resp.text[:100]}")

    @task(1)
    def health(self):
        self.client.get("/health", name="GET /health")
