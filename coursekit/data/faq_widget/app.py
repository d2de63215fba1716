"""faq-widget: 웹사이트 도움말 위젯의 백엔드 (step 04 레슨의 예제 서비스, llm-chat 의 이웃).

POST /ask {"q"} -> {"reply", "reply_id", "model"}      (X-API-Key 필요)
POST /votes {"reply_id", "helpful", "stars"?}           (X-API-Key 필요) 사용자의 평가
GET  /metrics                                            (키 없음) Prometheus 가 수집
GET  /healthz
"""

import asyncio
import json
import os
import random
import time
import uuid
from collections import OrderedDict
from contextlib import asynccontextmanager
from pathlib import Path

import httpx2
from fastapi import Depends, FastAPI, Header, HTTPException, Response
from fastapi.responses import JSONResponse
from langchain_core.exceptions import ModelError, ModelRateLimitError
from langchain_google_genai import ChatGoogleGenerativeAI
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field

import meters
from drift import LengthDrift
from pricing import cost_usd

MODEL = os.environ.get("WIDGET_MODEL", "gemini-3.5-flash")
JUDGE_MODEL = os.environ.get("WIDGET_JUDGE_MODEL", "gemini-3.5-flash-judge")
JUDGE_SAMPLE = float(os.environ.get("WIDGET_JUDGE_SAMPLE", "0.2"))  # 답의 몇 분의 1 을 판정할지 (0 = 끔)
API_KEY = os.environ.get("WIDGET_API_KEY", "lab-service-key")
REFUSAL_MARKERS = ("답할 수 없습니다", "정보를 찾지 못했습니다")
BASELINE = json.loads((Path(__file__).parent / "baseline_lengths.json").read_text(encoding="utf-8"))


class Ask(BaseModel):
    model_config = ConfigDict(extra="forbid")
    q: str = Field(min_length=1, max_length=2000)


class Vote(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reply_id: str = Field(pattern=r"^[0-9a-f]{32}$")
    helpful: bool
    stars: int | None = Field(default=None, ge=1, le=5)


class Verdict(BaseModel):
    score: int = Field(ge=1, le=5)
    reason: str


def require_key(x_api_key: str = Header(default="")):
    if x_api_key != API_KEY:
        raise HTTPException(401, "X-API-Key 가 필요합니다")


@asynccontextmanager
async def lifespan(app: FastAPI):
    base = os.environ.get("GOOGLE_GEMINI_BASE_URL")
    app.state.llm = ChatGoogleGenerativeAI(model=MODEL, base_url=base, max_retries=1, timeout=20)
    judge = ChatGoogleGenerativeAI(model=JUDGE_MODEL, base_url=base, max_retries=1, timeout=20)
    app.state.judge = judge.with_structured_output(Verdict, include_raw=True)
    app.state.issued = OrderedDict()  # 이 서비스가 낸 reply_id (최근 10 000 개) -> 평가 받았는지
    app.state.pending = set()         # 돌고 있는 판정 작업 (강한 참조: 작업이 중간에 사라지지 않게)
    app.state.drift = LengthDrift(BASELINE, window=int(os.environ.get("WIDGET_DRIFT_WINDOW", "100")))
    yield
    if app.state.pending:
        await asyncio.wait(app.state.pending, timeout=10)


app = FastAPI(title="faq-widget", lifespan=lifespan, telemetry={
    "meter_provider": meters.provider, "tracing": False, "logs": False, "operation_spans": False,
    "exclude": lambda scope: scope.get("path") == "/metrics",  # 수집 요청 자체는 세지 않음
})


async def call_llm(llm, model: str, prompt: str, usage_of=lambda r: r.usage_metadata):
    """LLM 호출 한 번 = 시간 한 번 기록 (성공/실패), 성공이면 토큰과 비용도."""
    started = time.perf_counter()
    try:
        result = await llm.ainvoke(prompt)
    except Exception as exc:
        kind = ("upstream_rate_limited" if isinstance(exc, ModelRateLimitError) else
                "upstream_error" if isinstance(exc, ModelError) else
                "upstream_timeout" if isinstance(exc, httpx2.TimeoutException) else "internal_error")
        meters.record_call(model, time.perf_counter() - started, None, kind)
        raise
    usage = usage_of(result)
    meters.record_call(model, time.perf_counter() - started, usage)
    if usage:
        meters.cost_usd.add(cost_usd(model, usage), {"gen_ai.request.model": model})
    return result


async def judge_reply(question: str, reply: str, model: str):
    try:
        out = await call_llm(app.state.judge, JUDGE_MODEL, f"질문: {question}\n답변: {reply}",
                             usage_of=lambda r: r["raw"].usage_metadata)
        if out["parsed"] is not None:
            meters.judge_score.record(out["parsed"].score, {"gen_ai.request.model": model})
    except Exception:
        pass  # 판정 실패는 사용자의 응답과 무관: 호출 시간 메트릭의 error.type 으로만 남습니다


@app.get("/healthz")
async def healthz():
    return {"ok": True, "model": MODEL}


@app.get("/metrics")
async def metrics():
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


@app.post("/ask", dependencies=[Depends(require_key)])
async def ask(body: Ask):
    meters.input_drift.set(app.state.drift.add(body.q))
    try:
        result = await call_llm(app.state.llm, MODEL, body.q)
    except Exception as exc:
        status = 503 if isinstance(exc, ModelRateLimitError) else 504 if isinstance(exc, httpx2.TimeoutException) else 502
        return JSONResponse({"error": "LLM 호출 실패"}, status_code=status)
    reply, reply_id = result.text, uuid.uuid4().hex
    refused = any(m in reply for m in REFUSAL_MARKERS)
    meters.replies.add(1, {"gen_ai.request.model": MODEL, "refused": str(refused).lower()})
    app.state.issued[reply_id] = False
    while len(app.state.issued) > 10_000:
        app.state.issued.popitem(last=False)
    if JUDGE_SAMPLE > 0 and random.random() < JUDGE_SAMPLE:  # 표본만 판정: 응답을 기다리게 하지 않음
        task = asyncio.create_task(judge_reply(body.q, reply, MODEL))
        app.state.pending.add(task)
        task.add_done_callback(app.state.pending.discard)
    return {"reply": reply, "reply_id": reply_id, "model": MODEL}


@app.post("/votes", dependencies=[Depends(require_key)])
async def vote(body: Vote):
    if body.reply_id not in app.state.issued:
        return JSONResponse({"error": "이 서비스가 낸 reply_id 가 아닙니다"}, status_code=404)
    if app.state.issued[body.reply_id]:
        return JSONResponse({"error": "이미 평가한 답입니다"}, status_code=409)
    app.state.issued[body.reply_id] = True
    meters.votes.add(1, {"helpful": str(body.helpful).lower()})
    if body.stars is not None:
        meters.vote_stars.record(body.stars)
    return {"reply_id": body.reply_id, "recorded": True}
