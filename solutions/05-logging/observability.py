"""관측(로그, 요청 ID, 추적, 오류 추적) 설정: main.py 가 불러 씁니다 (05단계).

    configure_logging()        structlog: 요청당 JSON 한 줄을 표준 출력과 LOG_DIR/app.jsonl 에 (레슨 §2)
    request_id_from()          들어온 X-Request-ID 가 올바르면 그대로, 아니면 새 uuid4 (레슨 §3)
    RequestLogMiddleware       요청마다 event="request" 한 줄, 응답 헤더 X-Request-ID (레슨 §2, §3)
    note()                     요청을 처리하는 코드가 그 요청의 로그 줄에 필드(모델, 토큰, 비용, 시도 횟수...)를 채움
    tracer_provider()          OpenTelemetry TracerProvider + OTLP/HTTP 내보내기 (레슨 §6)
    add_upstream_headers()     LLM 호출의 HTTP 요청마다 traceparent 와 X-Request-ID (레슨 §3, §6)
    hide_langsmith_payloads()  LangSmith 에 입력(프롬프트)과 출력(답)을 보내지 않음 (레슨 §8)
    flush_langsmith()          종료할 때 LangSmith 가 모아 둔 실행을 보냄 (레슨 §8)
    init_sentry(), scrub()     Sentry: 헤더, 본문, 키를 지우고 보냄 (레슨 §9)

로그 줄에 절대 넣지 않는 것: 키, Authorization/X-API-Key/Cookie 헤더, 사용자의 질문, 모델의 답 (레슨 §4).
"""

from __future__ import annotations

import contextvars
import logging
import logging.handlers
import os
import re
import sys
import time
import uuid
from pathlib import Path

import sentry_sdk
import structlog
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from starlette.datastructures import Headers, MutableHeaders

SERVICE_NAME = "llm-chat"
REQUEST_ID_HEADER = "X-Request-ID"
# 받아들이는 요청 ID: 영문, 숫자, . _ - 로 8~64자. 그 밖의 값(없음, 틀린 글자, 너무 긺)은 버리고 새로 만듭니다:
# 클라이언트가 보낸 값을 검사 없이 로그와 응답에 넣으면 로그 위조(줄바꿈)나 거대한 헤더가 그대로 들어옵니다.
REQUEST_ID_PATTERN = re.compile(r"^[A-Za-z0-9._-]{8,64}$")
# 로그를 남기지 않는 경로 (샘플링 0): Prometheus 의 수집(/metrics)과 헬스 체크(/health)는 몇 초마다 와서
# 로그의 대부분을 차지하지만 찾을 일이 없습니다. 요청 수와 지연 시간은 메트릭에 그대로 남습니다.
UNLOGGED_PATHS = frozenset({"/metrics", "/health"})
LOG_FILE = "app.jsonl"
LOG_FILE_MAX_BYTES = 10 * 1024 * 1024  # 10 MiB 마다 app.jsonl.1, .2 ... 로 돌림
LOG_FILE_BACKUPS = 5

log = structlog.get_logger("llm-chat")

# 요청 하나의 로그 줄에 들어갈 필드 (요청마다 새 dict). 미들웨어가 만들고, 요청을 처리하는 코드가 note() 로 채웁니다.
# 값이 아니라 dict 를 contextvar 에 두는 이유: FastAPI 가 동기 의존성을 스레드에서 돌리면 contextvar 의 복사본이
# 생기므로, 그 안에서 새로 정한 값은 미들웨어에 돌아오지 않습니다. 같은 dict 를 고치면 보입니다.
_FIELDS: contextvars.ContextVar[dict | None] = contextvars.ContextVar("request_log_fields", default=None)


def note(**fields) -> None:
    """지금 처리 중인 요청의 로그 줄에 필드를 더합니다 (요청 밖, 예: 백그라운드 판정에서는 아무것도 안 함)."""
    current = _FIELDS.get()
    if current is not None:
        current.update(fields)


def in_request() -> bool:
    return _FIELDS.get() is not None


def background_context() -> contextvars.Context:
    """백그라운드 작업(판정)의 context: 요청 ID 와 추적은 이어받되, 요청의 로그 줄은 고치지 않습니다."""
    ctx = contextvars.copy_context()
    ctx.run(_FIELDS.set, None)
    return ctx


def request_id_from(value: str | None) -> str:
    """올바른 X-Request-ID 는 그대로, 아니면 새 ID (uuid4 의 32자리 16진수)."""
    # BEGIN SOLUTION
    if value is not None and REQUEST_ID_PATTERN.fullmatch(value):
        return value
    return uuid.uuid4().hex
    # STARTER
    # # TODO 4 (lesson §3 '요청 ID 와 contextvars'): value 가 REQUEST_ID_PATTERN 에 맞으면 그대로 돌려주고,
    # # 없거나(None) 형식이 틀리거나 너무 길면 uuid.uuid4().hex 를 돌려주세요. 틀린 값을 되돌려 보내면 안 됩니다.
    # return value or ""
    # END SOLUTION


# --------------------------------------------------------------------------- 로그 (§2)
def add_trace_context(logger, method_name, event_dict):
    """structlog 처리기: 현재 스팬의 trace_id(32자리)와 span_id(16자리)를 로그 줄에 (로그와 추적을 잇는 열쇠)."""
    ctx = trace.get_current_span().get_span_context()
    if ctx.is_valid:
        event_dict.setdefault("trace_id", format(ctx.trace_id, "032x"))
        event_dict.setdefault("span_id", format(ctx.span_id, "016x"))
    return event_dict


def configure_logging(log_dir: str | Path, level: str = "INFO") -> None:
    """모든 로그(structlog, 표준 logging, uvicorn)를 JSON 한 줄로: 표준 출력과 LOG_DIR/app.jsonl (크기로 돌림).

    여러 번 불러도 됩니다 (테스트가 LOG_DIR 를 바꿀 때): 이 함수가 붙인 핸들러만 바꿉니다."""
    # BEGIN SOLUTION
    shared = [
        structlog.contextvars.merge_contextvars,  # bind_contextvars 로 묶은 request_id
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
        add_trace_context,
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],  # 표준 logging 의 줄 (uvicorn 등)
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(ensure_ascii=False),
        ],
    )
    path = Path(log_dir)
    path.mkdir(parents=True, exist_ok=True)
    handlers = [logging.StreamHandler(sys.stdout),
                logging.handlers.RotatingFileHandler(path / LOG_FILE, maxBytes=LOG_FILE_MAX_BYTES,
                                                     backupCount=LOG_FILE_BACKUPS, encoding="utf-8")]
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_course_json", False)]:
        root.removeHandler(old)
        old.close()
    for handler in handlers:
        handler._course_json = True
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.setLevel(level.upper())
    # uvicorn 의 로그도 같은 JSON 으로 (자기 핸들러를 비우고 루트로). 접근 로그("POST /chat HTTP/1.1" 200)는 끕니다:
    # 요청마다 RequestLogMiddleware 의 한 줄이 더 많은 것을 담고, 두 줄이면 요청 수를 셀 때 두 번 셉니다.
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    access = logging.getLogger("uvicorn.access")
    access.handlers.clear()
    access.propagate = False
    # LLM 클라이언트(httpx/httpx2)와 google-genai("AFC is enabled ...")는 업스트림 요청마다 INFO 줄을 씁니다: 시도는 스팬과
    # 로그 줄의 attempts 로 보이므로 경고만.
    for name in ("httpx", "httpx2", "google_genai"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # STARTER
    # # TODO 1 (lesson §2 '요청당 JSON 로그 한 줄'): structlog 를 설정해 로그 한 줄이 JSON 하나가 되게 하세요:
    # # merge_contextvars(request_id), add_log_level, TimeStamper(fmt="iso", utc=True, key="timestamp"),
    # # add_trace_context 를 거쳐 JSONRenderer 로. 같은 줄을 표준 출력과 RotatingFileHandler(log_dir/app.jsonl)에 씁니다.
    # # TODO 2 (lesson §2 '요청당 JSON 로그 한 줄'): uvicorn 의 평문 접근 로그를 끄세요
    # # (logging.getLogger("uvicorn.access") 의 handlers 를 비우고 propagate=False).
    # logging.basicConfig(level=level.upper())
    # END SOLUTION


class RequestLogMiddleware:
    """요청마다 로그 한 줄 (event="request")과 응답 헤더 X-Request-ID. 순수 ASGI 미들웨어라서 401, 404, 413, 422,
    500 을 포함한 모든 응답을 보고, 요청 처리 코드와 같은 context 에서 돕니다 (request_id 가 모든 로그 줄에)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # BEGIN SOLUTION
        request_id = request_id_from(Headers(scope=scope).get(REQUEST_ID_HEADER))
        fields: dict = {}
        fields_token = _FIELDS.set(fields)
        bound = structlog.contextvars.bind_contextvars(request_id=request_id)
        sentry_sdk.get_isolation_scope().set_tag("request_id", request_id)  # 처리하지 못한 예외의 이벤트에도
        status = 500  # 응답을 시작하기 전에 예외가 나면 ServerErrorMiddleware 가 500 으로 답합니다
        started = time.perf_counter()

        async def send_with_request_id(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            await send(message)

        try:
            await self.app(scope, receive, send_with_request_id)
        except Exception:
            fields.setdefault("error_code", "internal_error")
            raise
        finally:
            if scope["path"] not in UNLOGGED_PATHS:
                route = scope.get("route")
                if status == 422:
                    fields.setdefault("error_code", "validation_error")
                level = "error" if status >= 500 else "warning" if status >= 400 else "info"
                log.log(logging.getLevelName(level.upper()), "request",
                        method=scope["method"], route=getattr(route, "path", None), path=scope["path"],
                        status=status, latency_ms=round((time.perf_counter() - started) * 1000, 1), **fields)
            structlog.contextvars.reset_contextvars(**bound)
            _FIELDS.reset(fields_token)
        # STARTER
        # # TODO 3 (lesson §2 '요청당 JSON 로그 한 줄'): 요청이 끝날 때(오류 응답, 예외 포함) log.info("request", ...)
        # # 한 줄: method, route(경로 템플릿, scope["route"].path), status, latency_ms 와 note() 로 모은 필드.
        # # /metrics 와 /health 는 남기지 않습니다 (UNLOGGED_PATHS).
        # # TODO 4 (lesson §3 '요청 ID 와 contextvars'): request_id_from(들어온 X-Request-ID) 를
        # # structlog.contextvars.bind_contextvars(request_id=...) 로 묶고, 응답 헤더 X-Request-ID 로 돌려주세요.
        # await self.app(scope, receive, send)
        # END SOLUTION


# --------------------------------------------------------------------------- 추적 (§6)
def tracer_provider() -> TracerProvider:
    """service.name=llm-chat 의 TracerProvider. OTEL_EXPORTER_OTLP_TRACES_ENDPOINT (또는 OTEL_EXPORTER_OTLP_ENDPOINT)
    가 있을 때만 OTLP/HTTP 로 내보냅니다 (주소, 헤더, 배치 간격은 OpenTelemetry 표준 환경 변수가 정함)."""
    provider = TracerProvider(resource=Resource.create({"service.name": SERVICE_NAME}))
    # BEGIN SOLUTION
    if os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    # STARTER
    # # TODO 10 (lesson §6 'OpenTelemetry 추적'): OTEL_EXPORTER_OTLP_TRACES_ENDPOINT 가 있으면
    # # provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter())) 로 스팬을 내보내세요.
    # END SOLUTION
    return provider


async def add_upstream_headers(request) -> None:
    """LLM 클라이언트(httpx2)의 요청 훅: 시도마다 나가는 HTTP 요청에 그 시도 스팬의 traceparent 와 요청 ID."""
    # BEGIN SOLUTION
    propagate.inject(request.headers)  # 현재 스팬(= 이 시도의 LLM 스팬) 의 W3C traceparent
    request_id = structlog.contextvars.get_contextvars().get("request_id")
    if request_id:
        request.headers[REQUEST_ID_HEADER] = request_id
    # STARTER
    # # TODO 5 (lesson §3 '요청 ID 와 contextvars'): structlog.contextvars.get_contextvars() 의 request_id 를
    # # request.headers["X-Request-ID"] 에 넣으세요.
    # # TODO 12 (lesson §6 'OpenTelemetry 추적'): propagate.inject(request.headers) 로 현재 스팬의 traceparent 를.
    # END SOLUTION


# --------------------------------------------------------------------------- LangSmith (§8)
def hide_langsmith_payloads() -> None:
    """LangSmith 는 LANGSMITH_TRACING=true 와 LANGSMITH_API_KEY (, LANGSMITH_ENDPOINT, LANGSMITH_PROJECT) 로만 켜집니다.
    켜져도 프롬프트와 답은 보내지 않습니다: 실행(run)의 구조, 시간, 토큰, 오류만. 운영자가 명시적으로 false 로 두면 그 값."""
    # BEGIN SOLUTION
    os.environ.setdefault("LANGSMITH_HIDE_INPUTS", "true")
    os.environ.setdefault("LANGSMITH_HIDE_OUTPUTS", "true")
    # STARTER
    # # TODO 13 (lesson §8 'LangSmith'): LANGSMITH_HIDE_INPUTS 와 LANGSMITH_HIDE_OUTPUTS 를 "true" 로 정하세요
    # # (os.environ.setdefault): 그러지 않으면 LangSmith 를 켜는 순간 모든 질문과 답이 밖으로 나갑니다.
    # END SOLUTION


def flush_langsmith(timeout: float = 5.0) -> None:
    """종료 직전에: LangSmith 가 켜져 있으면 클라이언트가 모아 둔 실행을 지금 보냅니다 (최대 timeout 초).
    실행은 백그라운드 스레드가 묶어 보내므로, 요청 직후에 끝나는 프로세스는 이것 없이 실행을 잃을 수 있습니다."""
    from langsmith import run_trees, utils

    if utils.tracing_is_enabled():
        run_trees.get_cached_client().flush(timeout=timeout)


# --------------------------------------------------------------------------- Sentry (§9)
FILTERED = "[Filtered]"
_secrets: list[str] = []
SENSITIVE_HEADERS = {"authorization", "x-api-key", "cookie", "set-cookie", "x-goog-api-key"}


def _redact(value):
    if isinstance(value, str):
        for secret in _secrets:
            if secret and secret in value:
                value = value.replace(secret, FILTERED)
        return value
    if isinstance(value, dict):
        return {k: (FILTERED if str(k).lower() in SENSITIVE_HEADERS else _redact(v)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_redact(v) for v in value]
    return value


def scrub(event: dict, hint: dict | None = None) -> dict:
    """Sentry 의 before_send: 요청의 헤더, 쿠키, 본문, 쿼리를 지우고, 남은 모든 문자열에서 키 값을 가립니다."""
    # BEGIN SOLUTION
    request = event.get("request")
    if isinstance(request, dict):
        for field in ("headers", "cookies", "data", "query_string", "env"):
            request.pop(field, None)
    return _redact(event)
    # STARTER
    # # TODO 14 (lesson §9 'Sentry 오류 추적'): event["request"] 의 headers, cookies, data, query_string 을 지우고,
    # # 남은 문자열의 키 값(_secrets)을 FILTERED 로 바꾸세요 (_redact).
    # return event
    # END SOLUTION


def init_sentry(dsn: str | None, secrets: list[str]) -> None:
    """Sentry SDK. dsn 이 없으면 아무것도 보내지 않습니다 (SDK 가 꺼진 채로 동작)."""
    _secrets[:] = [s for s in secrets if s]
    # BEGIN SOLUTION
    if not dsn:
        # 보낼 곳이 없으면 통합(ASGI 미들웨어, 로깅·스레드 훅)을 설치하지 않은 꺼진 클라이언트만 둡니다:
        # 통합은 DSN 이 없어도 요청마다 약 250µs 를 씁니다 (docs/benchmark.md 의 미들웨어 비용).
        sentry_sdk.init(dsn=None, default_integrations=False, auto_enabling_integrations=False)
        return
    from sentry_sdk.integrations.fastapi import FastApiIntegration
    from sentry_sdk.integrations.logging import LoggingIntegration
    from sentry_sdk.integrations.starlette import StarletteIntegration

    sentry_sdk.init(
        dsn=dsn or None,
        send_default_pii=False,  # IP, 쿠키, 사용자 정보를 보내지 않음
        include_local_variables=False,  # 스택의 지역 변수(질문 문자열이 들어 있음)를 보내지 않음
        max_request_body_size="never",  # 요청 본문(질문)을 보내지 않음
        before_send=scrub,
        integrations=[
            # 오류 로그 줄이 이벤트가 되지 않게: 로그는 이동 경로(breadcrumb)로만.
            LoggingIntegration(level=logging.INFO, event_level=None),
            # 우리가 처리해 502/503/504 로 답한 오류를 SDK 가 또 보내지 않게: 업스트림 실패는 capture_upstream_failure 가
            # 한 번만 보냅니다. 처리하지 못한 예외(500)는 그대로 SDK 가 보냅니다.
            StarletteIntegration(failed_request_status_codes=set()),
            FastApiIntegration(failed_request_status_codes=set()),
        ],
        # 설치된 패키지를 보고 저절로 켜지는 통합(LangChain, Google GenAI, httpx ...)은 끕니다: 그것들은 시도마다
        # (재시도 포함) 오류를 보내고 프롬프트를 담을 수 있습니다. 필요한 통합만 위에 적습니다.
        auto_enabling_integrations=False,
        traces_sample_rate=0,  # 추적은 OpenTelemetry 가 (Sentry 의 성능 추적은 끔)
    )
    # STARTER
    # # TODO 14 (lesson §9 'Sentry 오류 추적'): sentry_sdk.init(dsn=dsn or None, send_default_pii=False,
    # # include_local_variables=False, max_request_body_size="never", before_send=scrub) 로 시작하세요.
    # END SOLUTION


def capture_upstream_failure(exc: BaseException, request_id: str | None) -> None:
    """재시도가 모두 끝나 /chat 이 502/503/504 로 답하는 실패 하나 = Sentry 이벤트 하나 (시도마다가 아님)."""
    # BEGIN SOLUTION
    if not sentry_sdk.get_client().dsn:
        # DSN 이 없으면 보낼 곳이 없으니 이벤트를 만들지도 않습니다. SDK 는 버릴 이벤트도 먼저 다 만듭니다 (프레임마다 소스 줄을
        # 파일에서 읽고 지역 변수를 직렬화): 이벤트 루프에서 실패한 요청마다 약 15 ms, 성공한 요청 전체의 네 배였습니다 (잼).
        return
    with sentry_sdk.new_scope() as scope:
        scope.set_tag("request_id", request_id)
        sentry_sdk.capture_exception(exc)
    # STARTER
    # # TODO 15 (lesson §9 'Sentry 오류 추적'): sentry_sdk.new_scope() 안에서 set_tag("request_id", request_id) 를 하고
    # # sentry_sdk.capture_exception(exc) 를 한 번 부르세요.
    # END SOLUTION
