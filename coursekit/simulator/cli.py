"""Command line of the simulator: `python -m coursekit.simulator` and `course sim`.

`add_arguments(parser)` + `serve_from_args(args)` let the `course` CLI reuse these flags.
Precedence: built-in defaults < SIM_* environment variables < flags.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from typing import Any

from .config import DEFAULTS, ConfigError, check_ascii_key, from_env, validate

__all__ = ["add_arguments", "config_from_args", "serve_from_args", "serve", "main"]

_FLAG_HELP = {
    "latency": "지연 시간 모드: zero(대기 없음, 테스트용) 또는 realistic(부하 테스트용) [env SIM_LATENCY]",
    "latency_scale": "realistic 지연 시간에 곱할 배율 (기본 1.0) [env SIM_LATENCY_SCALE]",
    "seed": "난수 시드: 같은 시드·프롬프트·모델이면 같은 답, 같은 장애 순서 [env SIM_SEED]",
    "error_429_rate": "429 RESOURCE_EXHAUSTED 를 돌려줄 확률 0..1 [env SIM_ERROR_429_RATE]",
    "error_500_rate": "500 INTERNAL 을 돌려줄 확률 0..1 [env SIM_ERROR_500_RATE]",
    "error_503_rate": "503 UNAVAILABLE 을 돌려줄 확률 0..1 [env SIM_ERROR_503_RATE]",
    "hang_rate": "요청이 hang_seconds 동안 멈출 확률 0..1 [env SIM_HANG_RATE]",
    "malformed_rate": "HTTP 200 이지만 본문이 깨진(잘린 JSON) 응답을 돌려줄 확률 0..1 [env SIM_MALFORMED_RATE]",
    "hang_seconds": "멈춘 요청이 기다리는 시간(초, 기본 30) [env SIM_HANG_SECONDS]",
    "quota_rpm": "API 키마다 분당 허용 요청 수 (넘으면 429), 0 이면 제한 없음 [env SIM_QUOTA_RPM]",
    "valid_keys": "허용할 API 키 목록(쉼표 구분). 없으면 비어 있지 않은 모든 키 허용 [env SIM_VALID_KEYS]",
    "fault_models": "장애를 주입할 모델 목록(쉼표 구분). 없으면 모든 모델 [env SIM_FAULT_MODELS]",
    "safety_block_rate": "HTTP 200 이지만 안전 필터에 막힌(finishReason SAFETY, 텍스트 없음) 답을 돌려줄 확률 0..1 "
                         "[env SIM_SAFETY_BLOCK_RATE]",
    "empty_candidates_rate": "HTTP 200 이지만 candidates 가 빈 목록인 답을 돌려줄 확률 0..1 [env SIM_EMPTY_CANDIDATES_RATE]",
    "slow_first_token_seconds": "첫 바이트 전에 더 기다릴 시간(초, 기본 0 = 끔) [env SIM_SLOW_FIRST_TOKEN_SECONDS]",
    "slow_first_token_rate": "slow_first_token_seconds 를 적용할 요청의 비율 0..1 (기본 1) "
                             "[env SIM_SLOW_FIRST_TOKEN_RATE]",
    "slow_stream_chunk_seconds": "스트림 조각 사이에 더 기다릴 시간(초, 기본 0) [env SIM_SLOW_STREAM_CHUNK_SECONDS]",
    "stream_cut_rate": "스트림이 답 중간에 연결이 끊길 확률 0..1 [env SIM_STREAM_CUT_RATE]",
    "max_concurrency": "모델마다 동시에 생성하는 요청 수 상한 (넘으면 시뮬레이터 안에서 차례로 대기), "
                       "0 이면 상한 없음 [env SIM_MAX_CONCURRENCY]",
}


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the simulator's flags (Korean help) to a parser; defaults come from SIM_* env."""
    parser.add_argument("--host", default=os.environ.get("SIM_HOST", "127.0.0.1"),
                        help="바인드할 주소 (기본 127.0.0.1) [env SIM_HOST]")
    parser.add_argument("--port", type=int, default=int(os.environ.get("SIM_PORT", "8765")),
                        help="포트 (기본 8765, 0 이면 빈 포트) [env SIM_PORT]")
    parser.add_argument("--fd", type=int, default=None, help=argparse.SUPPRESS)  # inherited socket
    parser.add_argument("--latency", choices=["zero", "realistic"], default=None, help=_FLAG_HELP["latency"])
    parser.add_argument("--latency-scale", type=float, default=None, help=_FLAG_HELP["latency_scale"])
    parser.add_argument("--seed", type=int, default=None, help=_FLAG_HELP["seed"])
    for name in ("error_429_rate", "error_500_rate", "error_503_rate", "hang_rate", "malformed_rate"):
        parser.add_argument("--" + name.replace("_", "-"), type=float, default=None, help=_FLAG_HELP[name])
    parser.add_argument("--hang-seconds", type=float, default=None, help=_FLAG_HELP["hang_seconds"])
    parser.add_argument("--quota-rpm", type=int, default=None, help=_FLAG_HELP["quota_rpm"])
    parser.add_argument("--valid-keys", default=None, help=_FLAG_HELP["valid_keys"])
    parser.add_argument("--fault-models", default=None, help=_FLAG_HELP["fault_models"])
    for name in ("safety_block_rate", "empty_candidates_rate", "slow_first_token_seconds", "slow_first_token_rate",
                 "slow_stream_chunk_seconds", "stream_cut_rate"):
        parser.add_argument("--" + name.replace("_", "-"), type=float, default=None, help=_FLAG_HELP[name])
    parser.add_argument("--max-concurrency", type=int, default=None, help=_FLAG_HELP["max_concurrency"])
    parser.add_argument("--log-level", default="warning", help="uvicorn 로그 수준 (기본 warning)")
    return parser


def config_from_args(args: argparse.Namespace) -> dict[str, Any]:
    cfg = from_env()
    flags = {k: getattr(args, k) for k in DEFAULTS if getattr(args, k, None) is not None}
    cfg.update(validate(flags))
    return cfg


def serve(host: str = "127.0.0.1", port: int = 8765, fd: int | None = None,
          log_level: str = "warning", **config: Any) -> None:
    """Run the simulator in the foreground (blocks)."""
    import uvicorn

    from .app import Simulator

    app = Simulator(**config)
    ucfg = uvicorn.Config(app, host=host, port=port, loop="uvloop", http="httptools", lifespan="on",
                          access_log=False, log_level=log_level, timeout_graceful_shutdown=2,
                          backlog=4096, timeout_keep_alive=30)
    server = uvicorn.Server(ucfg)
    logging.getLogger("uvicorn.error").addFilter(_drop_stream_cut)
    if fd is not None:
        sock = socket.socket(fileno=fd)
        server.run(sockets=[sock])
    else:
        server.run()


def _drop_stream_cut(record: logging.LogRecord) -> bool:
    """stream_cut is an injected fault, not a simulator bug: keep its traceback out of the log."""
    from .app import StreamCut

    exc = record.exc_info[1] if record.exc_info else None
    return not isinstance(exc, StreamCut)


SIM_KEY = "sim-any-key"  # the one documented placeholder for GOOGLE_API_KEY with the simulator


def check_key_environment(environ: dict[str, str] | None = None,
                          names: tuple[str, ...] = ("GOOGLE_API_KEY", "SERVICE_API_KEY")) -> None:
    """Refuse keys in the environment that cannot travel in an HTTP header (e.g. a Korean
    placeholder copied from old docs): ConfigError with a Korean message."""
    env = os.environ if environ is None else environ
    for name in names:
        if env.get(name):
            check_ascii_key(env[name], f"환경 변수 {name}")


def serve_from_args(args: argparse.Namespace) -> int:
    try:
        cfg = config_from_args(args)
        check_key_environment()
    except ConfigError as exc:
        print(f"시뮬레이터 설정 오류: {exc}", file=sys.stderr)
        return 2
    if args.fd is None and args.port == 0:
        # --port 0: the OS picks a free port; bind here so the printed address is the real one.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((args.host, 0))
        sock.listen(4096)
        sock.set_inheritable(True)
        args.port = sock.getsockname()[1]
        _print_address(args, cfg)
        serve(host=args.host, port=args.port, fd=sock.fileno(), log_level=args.log_level, **cfg)
        return 0
    if args.fd is None:
        _print_address(args, cfg)
    serve(host=args.host, port=args.port, fd=args.fd, log_level=args.log_level, **cfg)
    return 0


def _print_address(args: argparse.Namespace, cfg: dict[str, Any]) -> None:
    """The address and the two exports a learner copies (stderr)."""
    effective = {**DEFAULTS, **cfg}
    url_host = "127.0.0.1" if args.host == "0.0.0.0" else args.host
    bind = "  (0.0.0.0: 이 PC 의 모든 주소에서 받음, 컨테이너에서는 host.docker.internal)" \
        if args.host == "0.0.0.0" else ""
    print(f"Gemini 시뮬레이터: http://{url_host}:{args.port}  (지연 시간 {effective['latency']}){bind}\n"
          f"  export GOOGLE_GEMINI_BASE_URL=http://{url_host}:{args.port}\n"
          f"  export GOOGLE_API_KEY={SIM_KEY}    # 아무 ASCII 문자열 (키는 HTTP 헤더로 갑니다)",
          file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m coursekit.simulator",
                                     description="로컬 Gemini API 시뮬레이터 (오프라인, 무료, 결정적)")
    add_arguments(parser)
    return serve_from_args(parser.parse_args(argv))
