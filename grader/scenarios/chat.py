"""채점기 전용 Locust 시나리오: 동시 사용자가 쉬지 않고 POST /chat 을 보냅니다.

학습자 폴더의 locustfile.py 가 아니라 이 파일을 쓰므로, 학습자가 고칠 수 있는 파일이
채점 결과를 바꿀 수 없습니다. 서비스 키는 환경 변수 GRADER_SERVICE_KEY 로 받습니다.
"""

import itertools
import os

from locust import HttpUser, constant, task

QUESTIONS = [
    "하늘클라우드 요금제는 어떻게 되나요?",
    "API 키를 잃어버렸어요. 어떻게 하나요?",
    "서비스 장애가 나면 어디서 확인하나요?",
    "Rate limit 을 넘기면 어떻게 되나요?",
    "로그는 얼마 동안 보관되나요?",
    "배포를 되돌리려면 어떻게 하나요?",
]
_counter = itertools.count()


class ChatUser(HttpUser):
    wait_time = constant(0)

    @task
    def chat(self):
        n = next(_counter)
        # 매번 조금씩 다른 질문: 캐시가 있어도 실제 호출이 일어나도록.
        message = f"{QUESTIONS[n % len(QUESTIONS)]} (요청 {n})"
        with self.client.post(
            "/chat",
            json={"message": message},
            headers={"X-API-Key": os.environ.get("GRADER_SERVICE_KEY", "")},
            timeout=30,
            catch_response=True,
            name="POST /chat",
        ) as resp:
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}")
            else:
                resp.success()
