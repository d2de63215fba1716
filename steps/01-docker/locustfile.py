"""컨테이너로 띄운 서비스에 손으로 부하를 걸어 보는 Locust 시나리오.

컨테이너를 띄운 뒤 (README.md '실행' 참고), 저장소의 가상환경에서 이 폴더로 와서:

    # 화면 없이 사용자 10명, 20초 동안. 끝나면 p50/p95/p99 표가 나옵니다.
    locust -f locustfile.py --host http://127.0.0.1:8000 --headless -u 10 -r 10 -t 20s

    # 웹 화면으로 (http://127.0.0.1:8089)
    locust -f locustfile.py --host http://127.0.0.1:8000

이 단계의 앱은 `async def` 안에서 블로킹 호출(llm.invoke)을 합니다. 사용자를 늘려도 초당 요청 수가
늘지 않는 것을 직접 보고, 단계 02 에서 고칩니다. 채점기는 이 파일을 쓰지 않습니다.
"""

import random

from locust import HttpUser, between, task

QUESTIONS = [
    "하늘클라우드 요금제는 어떻게 되나요?",
    "API 키를 잃어버렸어요. 어떻게 하나요?",
    "서비스 장애가 나면 어디서 확인하나요?",
    "로그는 얼마 동안 보관되나요?",
]


class ChatUser(HttpUser):
    wait_time = between(0, 0.5)

    @task(10)
    def chat(self):
        # 빠른 시작 앱은 메시지를 쿼리 문자열(?message=...)로 받습니다.
        self.client.post("/chat", params={"message": random.choice(QUESTIONS)}, name="/chat")

    @task(1)
    def health(self):
        self.client.get("/health")
