"""LLM 채팅 API: FastAPI 서비스가 Gemini(또는 코스 시뮬레이터)를 감쌉니다.

실행:  uvicorn main:app --host 127.0.0.1 --port 8000
설정:  환경 변수 또는 .env 파일 (.env.example 을 복사해서 쓰세요)
문서:  http://127.0.0.1:8000/docs
"""

# TODO 0: 아래 과제를 풀면서 필요한 것을 import 하세요
#   (secrets, contextlib.asynccontextmanager, pydantic, pydantic_settings, ...).
from fastapi import FastAPI
from langchain_google_genai import ChatGoogleGenerativeAI

# TODO 5 (lesson §6 '서비스 API 키'): pydantic-settings 의 BaseSettings 로 설정 클래스를 만드세요.
#   GOOGLE_API_KEY, GOOGLE_GEMINI_BASE_URL, SERVICE_API_KEY, LLM_MODEL(기본 gemini-3.5-flash),
#   LLM_TIMEOUT_SECONDS(기본 10), LLM_MAX_ATTEMPTS(기본 2), MAX_MESSAGE_CHARS(기본 4000)
#   를 환경 변수와 .env 에서 읽고, 비밀 값은 SecretStr 로 두세요. 채점기는 기본값이 아닌 값으로
#   채점합니다: 모델 이름과 글자 수 상한을 코드에 직접 쓰지 말고 설정에서 읽으세요.


# TODO 1 (lesson §2 '요청/응답 모델'): pydantic 모델을 만드세요.
#   - ChatRequest: JSON 본문 {"message": "..."}; 1~MAX_MESSAGE_CHARS(설정값) 글자, 공백만 있으면 안 됨,
#     모르는 필드는 거절 (ConfigDict(extra="forbid"))
#   - ChatResponse: {"response": str, "model": str,
#     "usage": {"input_tokens": int, "output_tokens": int, "total_tokens": int}}
#   - ErrorResponse: {"error": {"code": str, "message": str}}, HealthResponse: {"status", "model"}
#   - 본문 크기 상한: 요청 본문이 64 KiB 를 넘으면 JSON 을 파싱하기 전에 413 으로 거절하세요
#     (FastAPI 의 내장 본문 크기 제한. Content-Length 헤더가 없는 chunked 본문도 막혀야 합니다).
#     413 응답도 {"error": {"code": "payload_too_large", "message": "..."}} 모양이어야 합니다.


# TODO 4 (lesson §5 '업스트림 오류 다루기'): 오류를 {"error": {"code", "message"}} JSON 으로
#   바꾸는 도구를 만드세요 (예외 클래스, 응답 함수, 예외 핸들러).


# TODO 3 (lesson §4 '타임아웃과 재시도 한도'): lifespan 에서 ChatGoogleGenerativeAI 를 한 번만
#   만들고, 설정(Settings)에서 읽은 값을 모두 클라이언트에 직접 넘기세요: model=, api_key=,
#   base_url= (GOOGLE_GEMINI_BASE_URL), timeout=LLM_TIMEOUT_SECONDS, max_retries=LLM_MAX_ATTEMPTS.
#   ChatGoogleGenerativeAI 는 .env 파일을 읽지 않으므로, api_key= 와 base_url= 을 빼면 README 대로
#   `cp .env.example .env` 로만 설정했을 때 키가 없다며 멈추거나 실제 Google 로 요청합니다.
#   max_retries 는 langchain-google-genai 의 시도 횟수 상한입니다 (빼면 기본값 6번, 429 가
#   계속되면 약 33초). google-genai SDK 자체는 재시도 옵션을 주지 않으면 재시도하지 않습니다.
# TODO 6 (lesson §7 '/health 와 OpenAPI 문서'): FastAPI(title=..., description=...) 로
#   /docs 에 보일 설명을 붙이세요.
app = FastAPI()
llm = ChatGoogleGenerativeAI(model="gemini-3.5-flash")


# TODO 5 (lesson §6 '서비스 API 키'): X-API-Key 헤더를 SERVICE_API_KEY 와
#   secrets.compare_digest 로 비교하고, 없거나 틀리면 401 unauthorized 를 돌려주세요.
#   키 값은 어떤 응답에도 넣지 마세요.


# TODO 6 (lesson §7 '/health 와 OpenAPI 문서'): {"status": "ok", "model": <설정된 모델>} 을
#   돌려주세요. LLM 은 부르지 마세요.
@app.get("/health")
def health():
    return {"status": "ok"}


# TODO 1 (lesson §2 '요청/응답 모델'): 쿼리 문자열 대신 JSON 본문 ChatRequest 를 받고
#   ChatResponse (답변, 모델, 토큰 사용량 usage_metadata) 를 돌려주세요.
# TODO 2 (lesson §3 'async def 와 블로킹 호출'): async def 안에서 llm.invoke 는 이벤트 루프를
#   막습니다. await llm.ainvoke(...) 로 바꾸세요.
# TODO 4 (lesson §5 '업스트림 오류 다루기'): 429 -> 503 upstream_rate_limited (+ Retry-After),
#   5xx -> 502 upstream_error, 시간 초과 -> 504 upstream_timeout, 그 밖의 예외 -> 500
#   internal_error. 응답에 트레이스나 SDK 예외 문자열을 넣지 마세요.
# TODO 5 (lesson §6 '서비스 API 키'): X-API-Key 검사를 이 엔드포인트에 의존성으로 거세요.
@app.post("/chat")
async def chat(message: str):
    response = llm.invoke(message)
    return {"response": response.content}
