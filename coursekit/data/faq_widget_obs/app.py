"""faq-widget (step 05 판): 요청 ID, 요청당 JSON 로그 한 줄, 시도마다 LLM 스팬, Sentry, 암호화된 프롬프트 보관.

POST /ask {"q"} -> {"reply", "reply_id", "model"}   (X-API-Key 필요, 응답 헤더 X-Request-ID)
GET  /healthz                                        (로그에서 빠짐: 샘플링)
"""

import asyncio
import os
import time
import uuid
from contextlib import asynccontextmanager
from contextvars import ContextVar

import httpx2
import obs
import sentry_sdk
import structlog
import vault
from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.responses import JSONResponse
from langchain_core.exceptions import ModelError, ModelRateLimitError
from langchain_google_genai import ChatGoogleGenerativeAI
from opentelemetry import propagate
from opentelemetry.trace import SpanKind, Status, StatusCode
from pricing import cost_usd
from pydantic import BaseModel, ConfigDict, Field
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)

MODEL = os.environ.get("WIDGET_MODEL", "gemini-3.5-flash")
ATTEMPTS = int(os.environ.get("WIDGET_ATTEMPTS", "3"))       # 시도 횟수 상한 (재시도는 이 서비스가: SDK 재시도는 끔)
API_KEY = os.environ.get("WIDGET_API_KEY", "lab-service-key")
PROMPT_VERSION = "faq-v3"
SYSTEM = "당신은 웹사이트 도움말 위젯입니다. 지식 베이스에 있는 내용만 짧게 답하세요."
QUIET_PATHS = {"/healthz"}                                      # 로그에서 빼는 경로 (상태 확인은 초마다 옴)

log = obs.setup_logging()
tracer_provider = obs.setup_tracing()
tracer = tracer_provider.get_tracer("faq-widget")
obs.setup_sentry()
FIELDS: ContextVar[dict] = ContextVar("fields")                 # 엔드포인트가 요청 로그에 보탤 값 (model, tokens ...)


class Ask(BaseModel):
    model_config = ConfigDict(extra="forbid")
    q: str = Field(min_length=1, max_length=2000)


class UpstreamFailed(Exception):
    def __init__(self, code: str, status: int):
        super().__init__(code)
        self.code, self.status = code, status


def require_key(x_api_key: str = Header(default="")):
    if x_api_key != API_KEY:
        raise HTTPException(401, "X-API-Key 가 필요합니다")


@asynccontextmanager
async def lifespan(app: FastAPI):
    base = os.environ.get("GOOGLE_GEMINI_BASE_URL")
    app.state.llm = ChatGoogleGenerativeAI(model=MODEL, base_url=base, max_retries=1, timeout=20)  # 시도 1번 = 호출 1번
    yield
    tracer_provider.shutdown()                                  # 남은 스팬을 내보내고 끝냄


app = FastAPI(title="faq-widget", lifespan=lifespan, telemetry={
    "tracer_provider": tracer_provider, "tracing": True, "metrics": False, "logs": False, "operation_spans": False,
    "exclude": lambda scope: scope.get("path") in QUIET_PATHS,
})


@app.middleware("http")
async def request_log(request: Request, call_next):
    """요청마다: X-Request-ID 를 검증하거나 새로 만들고, contextvars 에 묶고, 끝에 JSON 로그 한 줄."""
    if request.url.path in QUIET_PATHS:
        return await call_next(request)
    incoming = request.headers.get("x-request-id", "")
    request_id = incoming if obs.REQUEST_ID.fullmatch(incoming) else uuid.uuid4().hex   # 이상한 값은 절대 되돌려주지 않음
    trace_id, span_id = obs.current_ids()                      # FastAPI 가 연 서버 스팬
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id=request_id, trace_id=trace_id, span_id=span_id)
    fields = {}
    FIELDS.set(fields)
    started = time.perf_counter()
    status = 500
    try:
        response = await call_next(request)
        status = response.status_code
        response.headers["X-Request-ID"] = request_id
        return response
    finally:
        route = request.scope.get("route")
        elapsed_ms = round((time.perf_counter() - started) * 1000, 1)
        level = "info" if status < 400 else "warning" if status < 500 else "error"
        getattr(log, level)("request", method=request.method, route=route.path if route else "<unmatched>",
                            status=status, latency_ms=elapsed_ms, **fields)


def is_transient(exc: BaseException) -> bool:
    return isinstance(exc, (ModelError, httpx2.TimeoutException)) and not isinstance(exc, ModelRateLimitError)


def classify(exc: BaseException) -> tuple[str, int]:
    if isinstance(exc, ModelRateLimitError):
        return "upstream_rate_limited", 503
    if isinstance(exc, httpx2.TimeoutException):
        return "upstream_timeout", 504
    return ("upstream_error", 502) if isinstance(exc, ModelError) else ("internal_error", 500)


async def call_llm(question: str, request_id: str, fields: dict):
    """시도마다 스팬 하나 (`chat <model>`, GenAI 속성). 나가는 요청에 traceparent 와 X-Request-ID."""
    fields["attempts"] = 0
    async for attempt in AsyncRetrying(stop=stop_after_attempt(ATTEMPTS), retry=retry_if_exception(is_transient),
                                       wait=wait_exponential(multiplier=0.05, max=0.4), reraise=True):
        with attempt, tracer.start_as_current_span(f"chat {MODEL}", kind=SpanKind.CLIENT,
                                                   set_status_on_exception=False, record_exception=False) as span:
            fields["attempts"] += 1
            span.set_attributes({"gen_ai.operation.name": "chat", "gen_ai.provider.name": "gcp.gemini",
                                 "gen_ai.request.model": MODEL})
            headers = {"X-Request-ID": request_id}
            propagate.inject(headers)                           # traceparent = 이 시도 스팬
            try:
                result = await app.state.llm.ainvoke(
                    [("system", SYSTEM), ("human", question)], http_options={"headers": headers},
                    config={"metadata": {"request_id": request_id, "prompt_version": PROMPT_VERSION}})
            except Exception as exc:
                span.set_attribute("error.type", classify(exc)[0])
                span.set_status(Status(StatusCode.ERROR))
                raise
            usage = result.usage_metadata or {}
            span.set_attributes({"gen_ai.usage.input_tokens": usage.get("input_tokens", 0),
                                 "gen_ai.usage.output_tokens": usage.get("output_tokens", 0)})
    return result


@app.get("/healthz")
async def healthz():
    return {"ok": True, "model": MODEL}


@app.post("/ask", dependencies=[Depends(require_key)])
async def ask(body: Ask):
    fields = FIELDS.get()
    request_id = structlog.contextvars.get_contextvars()["request_id"]
    fields.update(model=MODEL, prompt_version=PROMPT_VERSION)
    try:
        result = await call_llm(body.q, request_id, fields)
    except Exception as err:
        code, status = classify(err)
        fields["error_code"] = code
        with sentry_sdk.new_scope() as sentry_scope:
            sentry_scope.set_tags({"request_id": request_id, "trace_id": obs.current_ids()[0]})
            sentry_sdk.capture_exception(err)                   # 실패한 요청 하나 = 이벤트 하나
        return JSONResponse({"error": "LLM 호출 실패", "request_id": request_id}, status_code=status)
    usage = result.usage_metadata or {}
    fields.update(input_tokens=usage.get("input_tokens", 0), output_tokens=usage.get("output_tokens", 0),
                  cost_usd=round(cost_usd(MODEL, usage), 8))
    reply = result.text
    await asyncio.to_thread(vault.store, request_id, body.q, reply)   # 키가 없으면 저장 안 함
    return {"reply": reply, "reply_id": uuid.uuid4().hex, "model": MODEL}
