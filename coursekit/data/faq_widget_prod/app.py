"""faq-widget (step 06 판): 한 서비스에 스위치를 달아 각 기법의 '전'과 '후'를 같은 부하로 잽니다.

POST /ask {"q", "user_id"?} -> {"reply", "model", "fallback", "truncated"}   (X-API-Key 필요; 캐시를 켜면
     X-Cache: hit|miss|coalesced; "truncated": 답이 출력 토큰 상한에서 잘림; 실험 중이면 "variant" 와 X-Variant;
     카나리로 보낸 요청이면 X-Canary: true)
POST /ask/batch {"qs": [...], "user_id"?} -> {"results": [{"ok": true, "reply", "model", ...} | {"ok": false, "code"}]}
GET  /canary (X-API-Key 필요) -> 카나리 상태: off | active | rolled_back, 역할별 요청·오류 수
POST /ask/stream {"q"} -> text/event-stream: event: delta {"text"} ... 그리고 event: done {"model"} 또는 event: error {"code"}
GET  /healthz (살아 있나), GET /ready (트래픽을 받아도 되나), GET /metrics

설정 (환경 변수, 레슨이 절마다 하나씩 바꿉니다):
  WIDGET_RETRY        sdk (전: SDK 기본 재시도, 데드라인 없음) | deadline (후: tenacity + 전체 데드라인)
  WIDGET_DEADLINE     요청 하나의 전체 시간 예산 (초, 2.5)
  WIDGET_ATTEMPTS     모델마다 시도 횟수 상한 (3)
  WIDGET_FALLBACK     두 번째 모델 (빈 값이면 Fallback 없음)
  WIDGET_BREAKER      연속 실패 몇 번에 회로를 열까 (0 이면 서킷 브레이커 없음)
  WIDGET_RATE_LIMIT   "10/minute" 같은 limits 문자열 (빈 값이면 제한 없음)
  WIDGET_LIMIT_BY     key (API 키의 해시) | ip (클라이언트 주소: 밸런서 뒤에서 틀린 선택)
  WIDGET_REDIS_URL    redis://... 이면 한도를 Redis 에 (복제본이 공유), 없으면 프로세스 메모리
  WIDGET_MAX_IN_FLIGHT 동시에 처리할 /ask 수 (0 이면 무제한: 줄을 서서 기다림)
  WIDGET_API_KEYS     받아 주는 클라이언트 키들 (쉼표로 구분)
  WIDGET_CACHE_TTL    응답 캐시의 수명 (초, 0 이면 캐시도 요청 합치기도 끔). 프로세스 메모리 (복제본마다 따로)
  WIDGET_PROMPT       실험이 없을 때 쓰는 시스템 프롬프트 버전 (PROMPTS 의 v1 | v2, 기본 v2)
  WIDGET_BATCH_CONCURRENCY  /ask/batch 한 번에 동시에 위로 보내는 질문 수 (4)
  WIDGET_MAX_OUTPUT_TOKENS  답의 출력 토큰 상한 (빈 값이면 상한 없음): 모델 클라이언트의 max_output_tokens
  WIDGET_THINKING_BUDGET    사고(thinking) 토큰 예산 (빈 값이면 모델 기본, 0 이면 사고 없음)
  WIDGET_AB_VARIANTS  "v1:0.5,v2:0.5" 처럼 프롬프트 버전:비율 (빈 값이면 실험 없음, 비율의 합은 1)
  WIDGET_AB_EXPERIMENT 실험 이름 (widget-prompt): 사용자 배정 sha256(실험:사용자) 의 소금
  WIDGET_CANARY_MODEL 새 모델 (빈 값이면 카나리 없음). A/B 실험과 함께 켜면 시작하지 않습니다 (한 번에 하나만 바꿈)
  WIDGET_CANARY_SHARE 카나리로 보낼 요청 비율 (0.1)
  WIDGET_CANARY_MIN_REQUESTS 판단 전에 모을 카나리 결과 수 (20)
  WIDGET_CANARY_MAX_ERROR_INCREASE 카나리 오류율이 기존 모델 오류율 + 이 값보다 크면 롤백 (0.05)
  WIDGET_CANARY_ROLLBACK on (규칙이 맞으면 롤백) | off (규칙만 기록하고 계속 카나리로 보냄: '전' 보여 주기)
"""

import asyncio
import hashlib
import json
import logging
import os
import random
import time
import unicodedata
from contextlib import asynccontextmanager

import httpx2
import pybreaker
from cachetools import TTLCache
from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.responses import JSONResponse
from fastapi.sse import EventSourceResponse, ServerSentEvent
from langchain_core.exceptions import ModelError, ModelInvalidRequestError
from langchain_core.runnables import RunnableLambda
from langchain_google_genai import ChatGoogleGenerativeAI
from limits import parse
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string
from prometheus_client import Counter, make_asgi_app
from pydantic import BaseModel, ConfigDict, Field
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

MODEL = os.environ.get("WIDGET_MODEL", "gemini-3.5-flash")
RETRY = os.environ.get("WIDGET_RETRY", "deadline")
DEADLINE = float(os.environ.get("WIDGET_DEADLINE", "2.5"))
ATTEMPTS = int(os.environ.get("WIDGET_ATTEMPTS", "3"))
FALLBACK = os.environ.get("WIDGET_FALLBACK", "")
RESERVE = float(os.environ.get("WIDGET_FALLBACK_RESERVE", "0.8"))
BREAKER = int(os.environ.get("WIDGET_BREAKER", "0"))
RATE_LIMIT = os.environ.get("WIDGET_RATE_LIMIT", "")
LIMIT_BY = os.environ.get("WIDGET_LIMIT_BY", "key")
REDIS_URL = os.environ.get("WIDGET_REDIS_URL", "")
MAX_IN_FLIGHT = int(os.environ.get("WIDGET_MAX_IN_FLIGHT", "0"))
KEYS = {k.strip() for k in os.environ.get("WIDGET_API_KEYS", "lab-service-key").split(",") if k.strip()}
REPLICA = os.environ.get("WIDGET_REPLICA", "1")
CACHE_TTL = float(os.environ.get("WIDGET_CACHE_TTL", "0"))
PROMPTS = {  # 프롬프트 버전 -> 시스템 프롬프트 (v1: 예전 것, 친절하고 자세하게 / v2: 지식 베이스만, 짧게)
    "v1": "당신은 웹사이트 도움말 위젯입니다. 고객의 질문에 친절하고 자세하게 답하세요.",
    "v2": "당신은 웹사이트 도움말 위젯입니다. 지식 베이스에 있는 내용만 짧게 답하세요.",
}
SYSTEM = PROMPTS[os.environ.get("WIDGET_PROMPT", "v2")]
BATCH_CONCURRENCY = int(os.environ.get("WIDGET_BATCH_CONCURRENCY", "4"))
MAX_OUTPUT_TOKENS = os.environ.get("WIDGET_MAX_OUTPUT_TOKENS", "")
THINKING_BUDGET = os.environ.get("WIDGET_THINKING_BUDGET", "")
EXPERIMENT = os.environ.get("WIDGET_AB_EXPERIMENT", "widget-prompt")
CANARY_MODEL = os.environ.get("WIDGET_CANARY_MODEL", "")
CANARY_SHARE = float(os.environ.get("WIDGET_CANARY_SHARE", "0.1"))
CANARY_MIN_REQUESTS = int(os.environ.get("WIDGET_CANARY_MIN_REQUESTS", "20"))
CANARY_MAX_ERROR_INCREASE = float(os.environ.get("WIDGET_CANARY_MAX_ERROR_INCREASE", "0.05"))
CANARY_ROLLBACK = os.environ.get("WIDGET_CANARY_ROLLBACK", "on") == "on"

log = logging.getLogger("faq-widget")
FALLBACKS = Counter("widget_fallbacks", "Fallback 모델이 답한 요청", ["reason"])
AB_REQUESTS = Counter("widget_ab_requests", "실험 변형별로 답한 요청", ["variant"])
CANARY_REQUESTS = Counter("widget_canary_requests", "카나리 결과", ["role", "outcome"])
SHED = Counter("widget_shed", "부하 차단으로 바로 503 을 준 요청")
LIMIT_ERRORS = Counter("widget_ratelimit_errors", "한도 저장소(Redis)에 닿지 못해 그냥 통과시킨 요청")


class Ask(BaseModel):
    model_config = ConfigDict(extra="forbid")
    q: str = Field(min_length=1, max_length=2000)
    user_id: str | None = Field(default=None, min_length=1, max_length=64)


class AskBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    qs: list[str] = Field(min_length=1, max_length=16)
    user_id: str | None = Field(default=None, min_length=1, max_length=64)


class Blocked(Exception):
    """모델이 안전 정책으로 답을 막았습니다 (다시 물어도 같음: 재시도하지 않음)."""


class Empty(Exception):
    """200 이지만 쓸 답이 없습니다 (빈 후보, 빈 텍스트): 일시적일 수 있어 재시도합니다."""


def client(model: str) -> ChatGoogleGenerativeAI:
    budget = {**({"max_output_tokens": int(MAX_OUTPUT_TOKENS)} if MAX_OUTPUT_TOKENS else {}),  # 토큰 예산
              **({"thinking_budget": int(THINKING_BUDGET)} if THINKING_BUDGET else {})}
    if RETRY == "sdk":  # 전: SDK 에 맡김 (시도 횟수 상한 6, 시도마다 타임아웃 없음)
        return ChatGoogleGenerativeAI(model=model, **budget)
    return ChatGoogleGenerativeAI(model=model, max_retries=1, **budget)  # 후: 재시도는 이 서비스가 한 곳에서


LLMS = {m: client(m) for m in {MODEL, FALLBACK, CANARY_MODEL} if m}
breaker = pybreaker.CircuitBreaker(fail_max=BREAKER, reset_timeout=10,
                                   exclude=[ModelInvalidRequestError, Blocked]) if BREAKER else None



# ------------------------------------------------------------------ A/B test
def parse_variants(text: str) -> dict[str, float]:
    """"v1:0.5,v2:0.5" -> {"v1": 0.5, "v2": 0.5}. 틀리면 서비스가 시작하지 않습니다."""
    out = {name.strip(): float(w) for name, _, w in (part.partition(":") for part in text.split(",") if part.strip())}
    if len(out) < 2 or not set(out) <= set(PROMPTS) or abs(sum(out.values()) - 1) > 1e-6:
        raise RuntimeError(f"WIDGET_AB_VARIANTS 가 틀렸습니다: 버전 {sorted(PROMPTS)} 중 둘 이상, 비율의 합 1 ({text!r})")
    return out


VARIANTS = parse_variants(os.environ["WIDGET_AB_VARIANTS"]) if os.environ.get("WIDGET_AB_VARIANTS") else {}
if VARIANTS and CANARY_MODEL:
    raise RuntimeError("A/B 실험과 카나리를 함께 켤 수 없습니다: 한 번에 하나만 바꿔야 무엇이 차이를 냈는지 압니다.")


def assign(user: str) -> str:
    """같은 사용자는 늘 같은 변형 (저장소 없음): sha256(실험:사용자) 의 앞 8바이트를 [0, 1) 로, 누적 비율로 고름."""
    bucket = int.from_bytes(hashlib.sha256(f"{EXPERIMENT}:{user}".encode()).digest()[:8], "big") / 2**64
    total = 0.0
    for name, weight in VARIANTS.items():
        total += weight
        if bucket < total:
            return name
    return name  # 부동소수점 합이 1 보다 아주 조금 작을 때


# ------------------------------------------------------------------ canary
canary = {"state": "active" if CANARY_MODEL else "off", "reason": None, "rule_fired": False,
          "canary": {"requests": 0, "errors": 0}, "baseline": {"requests": 0, "errors": 0}}
coin = random.Random(0)  # 결정적인 동전: 같은 순서의 요청이면 같은 요청이 카나리로


def route_to_canary() -> bool:
    return canary["state"] == "active" and coin.random() < CANARY_SHARE


def error_rate(role: str) -> float:
    c = canary[role]
    return c["errors"] / c["requests"] if c["requests"] else 0.0


def record(routed: bool, ok: bool) -> None:
    """결과 하나를 세고 규칙을 봅니다: 카나리 결과가 충분하고 오류율이 기존 모델 + 허용치를 넘으면 롤백."""
    if not CANARY_MODEL:
        return
    role = "canary" if routed else "baseline"
    canary[role]["requests"] += 1
    canary[role]["errors"] += not ok
    CANARY_REQUESTS.labels(role=role, outcome="ok" if ok else "error").inc()
    if (canary["state"] == "active" and canary["canary"]["requests"] >= CANARY_MIN_REQUESTS
            and error_rate("canary") > error_rate("baseline") + CANARY_MAX_ERROR_INCREASE):
        canary["rule_fired"] = True
        if CANARY_ROLLBACK:
            canary["state"], canary["reason"] = "rolled_back", "error_rate"
            log.warning("canary_rollback %s: error rate %.2f vs %.2f", CANARY_MODEL,
                        error_rate("canary"), error_rate("baseline"))


def worth_retrying(exc: BaseException) -> bool:
    """429, 5xx, 타임아웃, 연결 오류, 깨진·빈 200 은 다시 해 볼 만합니다. 400 과 안전 차단은 아닙니다."""
    if isinstance(exc, (ModelInvalidRequestError, Blocked, pybreaker.CircuitBreakerError)):
        return False
    return isinstance(exc, (ModelError, httpx2.TransportError, TimeoutError, ValueError, Empty))


def answer_text(msg) -> str:
    reason = str(msg.response_metadata.get("finish_reason", ""))
    if "SAFETY" in reason or "BLOCK" in reason:
        raise Blocked(reason)
    if not msg.text.strip():
        raise Empty(reason or "no text")
    return msg.text


async def one_model(model: str, q: str, until: float, system: str = SYSTEM) -> tuple[str, bool]:
    """`model` 에 `until` (loop 시각)까지, 시도 횟수 상한 ATTEMPTS 안에서 묻습니다."""
    clock = asyncio.get_running_loop().time

    def out_of_time(state) -> bool:  # 다음 대기가 데드라인을 넘기면 그만
        return clock() + (state.upcoming_sleep or 0) >= until

    retrying = AsyncRetrying(stop=stop_after_attempt(ATTEMPTS) | out_of_time,
                             wait=wait_random_exponential(multiplier=0.1, max=0.5),
                             retry=retry_if_exception(worth_retrying), reraise=True)
    async for attempt in retrying:
        with attempt:
            left = until - clock()
            if left <= 0:
                raise TimeoutError("deadline")
            async with asyncio.timeout(left):
                msg = await LLMS[model].ainvoke([("system", system), ("human", q)])
            return answer_text(msg), truncated(msg)
    raise AssertionError("unreachable")


def truncated(msg) -> bool:
    """출력 토큰 상한에서 멈춘 답 (finish_reason MAX_TOKENS): 잘렸다고 표시하고 캐시하지 않습니다."""
    return "MAX_TOKENS" in str(msg.response_metadata.get("finish_reason", ""))


async def ask_llm(q: str, model: str = MODEL, system: str = SYSTEM) -> tuple[str, str, str | None, bool]:
    """(답, 답한 모델, fallback 이유 또는 None, 잘렸나). `model`: 주 모델 (카나리면 새 모델)."""
    if RETRY == "sdk":
        msg = await LLMS[model].ainvoke([("system", system), ("human", q)])
        return answer_text(msg), model, None, truncated(msg)
    clock = asyncio.get_running_loop().time
    end = clock() + DEADLINE
    primary_end = end - RESERVE if FALLBACK else end
    try:
        if breaker is not None:
            with breaker.calling():  # 열려 있으면 여기서 바로 CircuitBreakerError
                text, cut = await one_model(model, q, primary_end, system)
        else:
            text, cut = await one_model(model, q, primary_end, system)
        return text, model, None, cut
    except (ModelInvalidRequestError, Blocked):
        raise
    except Exception as exc:
        if not FALLBACK:
            raise
        reason = ("circuit_open" if isinstance(exc, pybreaker.CircuitBreakerError)
                  else "timeout" if isinstance(exc, TimeoutError) else "error")
    text, cut = await one_model(FALLBACK, q, end, system)
    FALLBACKS.labels(reason=reason).inc()
    return text, FALLBACK, reason, cut


# ------------------------------------------------------------------ response cache + coalescing
cache: TTLCache | None = TTLCache(maxsize=10_000, ttl=CACHE_TTL) if CACHE_TTL > 0 else None
pending: dict[str, asyncio.Task] = {}  # 지금 위로 묻는 중인 질문: 같은 질문은 이 작업 하나를 함께 기다림


def cache_key(q: str, model: str = MODEL, system: str = SYSTEM) -> str:
    """모델 + 시스템 프롬프트 + 정규화한 질문 (NFKC, casefold, 공백 하나로): 프롬프트나 모델이 바뀌면 다른 키."""
    norm = " ".join(unicodedata.normalize("NFKC", q).casefold().split())
    return hashlib.sha256(json.dumps([model, system, norm], ensure_ascii=False).encode()).hexdigest()


async def cached_ask(q: str, model: str = MODEL, system: str = SYSTEM) -> tuple[str, str, str | None, bool, str]:
    """(답, 모델, fallback 이유, 잘렸나, "hit" | "miss" | "coalesced"). 오류, Fallback 의 답, 잘린 답은 캐시하지 않습니다."""
    key = cache_key(q, model, system)
    if (hit := cache.get(key)) is not None:
        return (*hit, None, False, "hit")
    task = pending.get(key)
    if task is not None:  # 같은 질문이 이미 위로 가 있음: 그 답을 함께 받음 (위로 가는 호출 0 번)
        return (*await asyncio.shield(task), "coalesced")
    task = pending[key] = asyncio.create_task(lead(key, q, model, system))
    task.add_done_callback(lambda _: pending.pop(key, None))
    return (*await asyncio.shield(task), "miss")  # 이 요청이 끊겨도 기다리는 다른 요청을 위해 계속


async def lead(key: str, q: str, model: str, system: str) -> tuple[str, str, str | None, bool]:
    text, answered, reason, cut = await ask_llm(q, model, system)
    if reason is None and not cut:  # 주 모델의 잘리지 않은 답만 캐시
        cache[key] = (text, answered)
    return text, answered, reason, cut


# ------------------------------------------------------------------ rate limit
storage = storage_from_string(("async+" + REDIS_URL) if REDIS_URL else "async+memory://",
                              **({"implementation": "redispy", "socket_timeout": 0.2, "socket_connect_timeout": 0.2}
                                 if REDIS_URL else {}))
limiter = MovingWindowRateLimiter(storage)
LIMIT = parse(RATE_LIMIT) if RATE_LIMIT else None


async def rate_limit(request: Request, x_api_key: str) -> dict[str, str]:
    """한도 안이면 RateLimit 헤더를, 넘으면 429 를. 저장소가 죽었으면 통과 (fail open)."""
    if LIMIT is None:
        return {}
    who = hashlib.sha256(x_api_key.encode()).hexdigest()[:16] if LIMIT_BY == "key" else request.client.host
    try:
        allowed = await limiter.hit(LIMIT, who)
        reset, remaining = await limiter.get_window_stats(LIMIT, who)
    except Exception as exc:  # noqa: BLE001 — Redis 장애: 서비스를 멈추느니 한도 없이 답합니다 (문서화한 선택)
        LIMIT_ERRORS.inc()
        log.warning("rate limit storage unavailable, failing open: %s", type(exc).__name__)
        return {}
    window = LIMIT.get_expiry()
    wait = max(1, int(reset - time.time() + 0.999))
    headers = {"RateLimit-Policy": f"{LIMIT.amount};w={window}",
               "RateLimit": f"limit={LIMIT.amount}, remaining={remaining}, reset={wait}"}
    if not allowed:
        raise HTTPException(429, {"code": "rate_limited"}, headers={**headers, "Retry-After": str(wait)})
    return headers


# ------------------------------------------------------------------ app
state = {"ready": False, "in_flight": 0}


@asynccontextmanager
async def lifespan(app):
    state["ready"] = True
    yield
    state["ready"] = False  # uvicorn 은 SIGTERM 뒤 처리 중인 요청을 끝내고 여기로 옵니다


app = FastAPI(lifespan=lifespan)
app.mount("/metrics", make_asgi_app())


def require_key(x_api_key: str = Header(default="")) -> str:
    if x_api_key not in KEYS:
        raise HTTPException(401, {"code": "unauthorized"})
    return x_api_key


@app.exception_handler(HTTPException)
async def as_json(request, exc: HTTPException):
    body = exc.detail if isinstance(exc.detail, dict) else {"code": str(exc.detail)}
    return JSONResponse(body, exc.status_code, headers=exc.headers)


async def answer(q: str, user: str) -> tuple[dict, dict[str, str]]:
    """질문 하나의 (본문, 헤더): 실험 변형의 프롬프트, 카나리면 새 모델, 캐시. 실패하면 예외 (부르는 쪽이 코드로)."""
    variant = assign(user) if VARIANTS else None
    system = PROMPTS[variant] if variant else SYSTEM
    routed = route_to_canary()
    model = CANARY_MODEL if routed else MODEL
    try:
        if cache is None:
            (text, answered, reason, cut), cached = await ask_llm(q, model, system), None
        else:
            text, answered, reason, cut, cached = await cached_ask(q, model, system)
    except Exception as exc:
        record(routed, ok=isinstance(exc, (Blocked, ModelInvalidRequestError)))  # 모델 탓이 아닌 실패는 오류로 세지 않음
        exc.canary = routed  # 실패한 답에도 X-Canary 를 붙이도록
        raise
    record(routed, ok=reason is None)  # Fallback 이 살린 카나리 요청도 카나리의 실패
    out = {"reply": text, "model": answered, "fallback": reason is not None, "truncated": cut, "replica": REPLICA}
    headers = {**({"X-Fallback": answered} if reason else {}), **({"X-Cache": cached} if cached else {}),
               **({"X-Canary": "true"} if routed else {})}
    if variant:
        AB_REQUESTS.labels(variant=variant).inc()
        out["variant"] = headers["X-Variant"] = variant
    return out, headers


def user_of(user_id: str | None, key: str) -> str:
    """실험의 사용자: 본문의 user_id, 없으면 API 키의 해시 (한도와 같은 클라이언트 구분)."""
    return user_id or "key:" + hashlib.sha256(key.encode()).hexdigest()[:16]


@app.post("/ask")
async def ask(body: Ask, request: Request, key: str = Depends(require_key)):
    headers = await rate_limit(request, key)
    if MAX_IN_FLIGHT and state["in_flight"] >= MAX_IN_FLIGHT:  # 줄 서게 하느니 바로 거절
        SHED.inc()
        return JSONResponse({"code": "overloaded"}, 503, headers={"Retry-After": "1"})
    state["in_flight"] += 1
    try:
        out, extra = await answer(body.q, user_of(body.user_id, key))
    except Exception as exc:
        if RETRY == "sdk":  # 전: 예외를 그대로 (FastAPI 가 500 과 평문 오류로 답함)
            raise
        failed = failure_response(exc)
        if getattr(exc, "canary", False):
            failed.headers["X-Canary"] = "true"
        return failed
    finally:
        state["in_flight"] -= 1
    return JSONResponse(out, headers={**headers, **extra})


@app.post("/ask/batch")
async def ask_batch(body: AskBatch, request: Request, key: str = Depends(require_key)):
    """질문 여러 개를 한 요청으로: 질문마다 /ask 와 같은 길, 위로는 한 번에 BATCH_CONCURRENCY 개까지.
    하나가 실패해도 그 자리만 {"ok": false, "code"} (배치 전체는 200)."""
    headers = await rate_limit(request, key)
    user = user_of(body.user_id, key)

    async def one(q: str) -> dict:
        out, _ = await answer(q, user)
        return {"ok": True, **out}

    results = await RunnableLambda(one).abatch(body.qs, config={"max_concurrency": BATCH_CONCURRENCY},
                                               return_exceptions=True)
    return JSONResponse({"results": [
        r if not isinstance(r, Exception) else {"ok": False, **json.loads(failure_response(r).body)}
        for r in results]}, headers=headers)


@app.get("/canary", dependencies=[Depends(require_key)])
async def canary_state():
    roles = {role: {**canary[role], "error_rate": round(error_rate(role), 4)} for role in ("canary", "baseline")}
    return {"model": CANARY_MODEL or None, "share": CANARY_SHARE, "state": canary["state"], "reason": canary["reason"],
            "rollback": CANARY_ROLLBACK, "rule_fired": canary["rule_fired"], **roles}


async def limited(request: Request, key: str = Depends(require_key)) -> None:
    """/ask/stream 의 인증과 한도: 스트림이 시작되기 전에 401/429 JSON 으로 끝납니다."""
    await rate_limit(request, key)


@app.post("/ask/stream", dependencies=[Depends(limited)], response_class=EventSourceResponse)
async def ask_stream(body: Ask):
    """위의 조각이 오는 대로 바로 내보냅니다 (모아 두지 않음). 재시도·Fallback·캐시 없음: 이미 보낸 글을
    되풀이하게 되니까요. 클라이언트가 떠나면 FastAPI 가 이 생성기를 취소하고, 위 스트림도 닫힙니다."""
    upstream = LLMS[MODEL].astream([("system", SYSTEM), ("human", body.q)])
    sent, reason = False, ""
    try:
        async with asyncio.timeout(DEADLINE):  # 첫 조각까지의 예산
            chunk = await anext(upstream)
        while True:
            reason = str(chunk.response_metadata.get("finish_reason", "")) or reason
            if piece := chunk.text:
                sent = True
                yield ServerSentEvent(data={"text": piece}, event="delta")
            chunk = await anext(upstream, None)
            if chunk is None:
                break
        if not sent:
            raise Blocked(reason) if "SAFETY" in reason or "BLOCK" in reason else Empty(reason or "no text")
        yield ServerSentEvent(event="done", data={"model": MODEL})
    except Exception as exc:  # 스트림이 이미 시작됨: 상태 코드 대신 error 이벤트 하나로 끝냄 (조용히 끝나지 않게)
        yield ServerSentEvent(event="error", data={"code": stream_error_code(exc)})
    finally:
        await upstream.aclose()


FAILURES = (  # (예외, 상태, 코드): 위에서부터 처음 맞는 것. 어느 것도 500 이 아님
    (Blocked, 422, "content_blocked"),
    (ModelInvalidRequestError, 502, "upstream_bad_request"),
    ((Empty, ValueError), 502, "upstream_malformed"),
)


def stream_error_code(exc: Exception) -> str:
    if isinstance(exc, TimeoutError):
        return "upstream_timeout"
    if isinstance(exc, httpx2.RemoteProtocolError):  # 위 스트림이 중간에 끊김: 깨진 답과 같게
        exc = Empty("stream cut")
    return json.loads(failure_response(exc).body)["code"]


def failure_response(exc: Exception) -> JSONResponse:
    for kinds, status, code in FAILURES:
        if isinstance(exc, kinds):
            return JSONResponse({"code": code}, status)
    return JSONResponse({"code": "upstream_unavailable"}, 503)


@app.get("/healthz")
async def healthz():
    return {"status": "ok"}


@app.get("/ready")
async def ready():
    return JSONResponse({"status": "ready" if state["ready"] else "stopping"}, 200 if state["ready"] else 503)

