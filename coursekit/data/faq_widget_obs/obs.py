"""faq-widget 의 관측 설정: 요청당 JSON 로그 한 줄 (structlog), OpenTelemetry 추적, Sentry (step 05 레슨의 예제).

환경 변수: WIDGET_LOG_DIR (기본 logs), WIDGET_LOG_LEVEL (기본 INFO), WIDGET_UVICORN_ACCESS (1 이면 uvicorn 접근 로그도 남김: 레슨의 '전'),
OTEL_EXPORTER_OTLP_TRACES_ENDPOINT / OTEL_EXPORTER_OTLP_TRACES_HEADERS (없으면 추적을 내보내지 않음),
WIDGET_SENTRY_DSN (없으면 Sentry 끔), WIDGET_SENTRY_SCRUB (0 이면 before_send 없이: 레슨의 '전').
"""

import logging
import logging.handlers
import os
import re
import sys
from pathlib import Path

import sentry_sdk
import structlog
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from sentry_sdk.integrations.logging import LoggingIntegration
from structlog.stdlib import BoundLogger, LoggerFactory, ProcessorFormatter

SERVICE_NAME = "faq-widget"
LOG_DIR = Path(os.environ.get("WIDGET_LOG_DIR", "logs"))
LEVEL = os.environ.get("WIDGET_LOG_LEVEL", "INFO").upper()
REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{8,64}$")


# ----------------------------------------------------------------------------- 로그
def setup_logging() -> structlog.stdlib.BoundLogger:
    """structlog -> 표준 logging -> JSON 한 줄을 stdout 과 LOG_DIR/app.jsonl (크기로 교체) 에."""
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    shared = [
        structlog.contextvars.merge_contextvars,          # request_id, trace_id ... (요청마다 bind)
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", key="timestamp"),   # UTC
    ]
    fmt = ProcessorFormatter(
        foreign_pre_chain=shared,                         # uvicorn 처럼 structlog 를 안 쓰는 로거도 같은 형식으로
        processors=[ProcessorFormatter.remove_processors_meta,
                    structlog.processors.dict_tracebacks,          # 예외도 JSON 필드로
                    structlog.processors.JSONRenderer(ensure_ascii=False)],
    )
    to_file = logging.handlers.RotatingFileHandler(LOG_DIR / "app.jsonl", maxBytes=5_000_000, backupCount=3,
                                                   encoding="utf-8")
    to_stdout = logging.StreamHandler(sys.stdout)
    root_logger = logging.getLogger()
    root_logger.handlers = []
    for handler in (to_file, to_stdout):
        handler.setFormatter(fmt)
        root_logger.addHandler(handler)
    root_logger.setLevel(LEVEL)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uv = logging.getLogger(name)
        uv.handlers, uv.propagate = [], True              # uvicorn 의 평문 핸들러 대신 루트(JSON)로
    # 접근 로그는 요청 로그 한 줄과 겹칩니다: 끔 (레슨의 '전' 에서만 켬)
    logging.getLogger("uvicorn.access").disabled = os.environ.get("WIDGET_UVICORN_ACCESS") != "1"
    for noisy in ("httpx", "httpx2", "httpcore", "google_genai", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)  # 업스트림 URL, 헤더가 로그에 섞이지 않게
    structlog.configure(processors=[*shared, ProcessorFormatter.wrap_for_formatter],
                        logger_factory=LoggerFactory(), wrapper_class=BoundLogger, cache_logger_on_first_use=True)
    return structlog.get_logger("faq-widget")


# ----------------------------------------------------------------------------- 추적
def setup_tracing() -> TracerProvider:
    provider = TracerProvider(resource=Resource.create({"service.name": SERVICE_NAME}))
    if os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter,
        )

        # 주소와 헤더는 표준 환경 변수 OTEL_EXPORTER_OTLP_TRACES_ENDPOINT / _HEADERS 에서 읽습니다
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(), schedule_delay_millis=500))
    return provider


# ----------------------------------------------------------------------------- Sentry
SECRET_HEADERS = {"authorization", "x-api-key", "cookie", "set-cookie"}


def scrub(event, hint):
    """before_send: Sentry 로 나가기 직전의 이벤트에서 헤더의 비밀, 요청 본문(프롬프트), 쿠키를 지웁니다."""
    req = event.get("request") or {}
    headers = req.get("headers") or {}
    req["headers"] = {k: v for k, v in headers.items() if k.lower() not in SECRET_HEADERS}
    for field in ("data", "cookies", "query_string"):
        req.pop(field, None)
    for exc in (event.get("exception") or {}).get("values", []):
        for frame in (exc.get("stacktrace") or {}).get("frames", []):
            frame.pop("vars", None)                       # 함수의 지역 변수: 질문, 헤더, 설정이 들어 있음
    for value in (os.environ.get("WIDGET_API_KEY"), os.environ.get("GOOGLE_API_KEY")):
        if value and value in repr(event):                # 어딘가 남은 키 값은 통째로 버림
            return None
    return event


def setup_sentry() -> bool:
    dsn = os.environ.get("WIDGET_SENTRY_DSN")
    if not dsn:
        return False
    scrubbed = os.environ.get("WIDGET_SENTRY_SCRUB", "1") != "0"
    sentry_sdk.init(
        dsn=dsn,
        send_default_pii=not scrubbed and os.environ.get("WIDGET_SENTRY_PII") == "1",
        before_send=scrub if scrubbed else None,
        include_local_variables=not scrubbed,             # 스택 프레임의 지역 변수를 보내지 않음
        traces_sample_rate=None,                          # 성능 추적은 OpenTelemetry 가 함
        environment="lesson",
        release="faq-widget@5",
        # ERROR 로그 줄이 이벤트가 되면 실패한 요청 하나가 이벤트 둘이 됩니다: 로그는 빵부스러기(breadcrumb)로만
        integrations=[LoggingIntegration(level=logging.INFO, event_level=None)] if scrubbed else [],
        # 자동으로 켜지는 통합(LangChain, google-genai, FastAPI ...)은 실패한 LLM 시도마다 이벤트를 하나씩 더 보냅니다
        # (측정: 시도 3번 실패한 요청 하나 = 이벤트 4개). 요청당 한 번은 우리가 capture_exception 으로 보냄
        auto_enabling_integrations=not scrubbed,
    )
    return True


def current_ids() -> tuple[str, str]:
    """지금 스팬의 (trace_id, span_id), 16진수. 스팬이 없으면 ("", "")."""
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return "", ""
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")
