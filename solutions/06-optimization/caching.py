"""06단계: 응답 캐시와 요청 합치기 (lesson §11 '응답 캐시와 요청 합치기').

- `cache_key(model, prompt_version, message)`: 정확히 같은 질문(정규화 뒤)만 같은 키. 키에 모델과 프롬프트 버전이
  들어가므로 모델이나 프롬프트를 바꾸면 옛 답이 나가지 않습니다. 키 = sha256(JSON [모델, 프롬프트 버전, 정규화한 질문]).
  정규화: `unicodedata.normalize("NFKC", m)`, `.casefold()`, 공백 여러 개는 하나로, 앞뒤 공백 없앰.
- `ResponseCache`: REDIS_URL 이 있으면 Redis (`llm-chat:cache:v1:<키>`, `SET ... PX`, 값 = 답의 JSON: 모든 복제본이 함께 씀),
  없으면 이 프로세스의 `cachetools.TTLCache`. Redis 오류는 FAIL OPEN: 캐시가 없는 것처럼(miss) 업스트림에 묻고
  메트릭 `llm_cache_requests_total{result="error"}` 를 남깁니다 (5xx 는 없음).
- `Coalescer`: 같은 키의 질문이 동시에 여럿 오면 업스트림 호출은 하나(`asyncio.Task`), 나머지는 그 작업을 기다립니다.
  프로세스(복제본)마다 따로라서 복제본이 N 개면 같은 질문에 호출이 최대 N 번입니다.

캐시하지 않는 답 (main.py 의 `cacheable`): 오류, Fallback 모델의 답, 거절(`quality.is_refusal`), 빈 답.
/chat 의 답은 사용자마다 다르지 않습니다 (`user_id` 는 답을 바꾸지 않음): 사용자별 데이터가 답에 들어가는 서비스라면
키에 사용자를 넣거나 캐시하지 말아야 합니다.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import time
import unicodedata
from collections.abc import Awaitable, Callable

import resilience
import telemetry

logger = logging.getLogger("llm-chat.caching")

KEY_PREFIX = "llm-chat:cache:v1:"
_WHITESPACE = re.compile(r"\s+")


def normalize(message: str) -> str:
    """같은 질문으로 볼 모양: NFKC (전각/반각 등), casefold (대소문자), 공백 하나로, 앞뒤 공백 없음."""
    # BEGIN SOLUTION
    return _WHITESPACE.sub(" ", unicodedata.normalize("NFKC", message).casefold()).strip()
    # STARTER
    # # TODO 14 (lesson §11 '응답 캐시와 요청 합치기'): unicodedata.normalize("NFKC", ...), .casefold(),
    # # 공백 여러 개를 하나로(_WHITESPACE), 앞뒤 공백 없애기.
    # return message
    # END SOLUTION


def cache_key(model: str, prompt_version: str, message: str) -> str:
    """sha256 16진수 64자리 = JSON [모델, 프롬프트 버전, 정규화한 질문] (json.dumps(..., ensure_ascii=False), UTF-8)."""
    # BEGIN SOLUTION
    payload = json.dumps([model, prompt_version, normalize(message)], ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()
    # STARTER
    # # TODO 14 (lesson §11 '응답 캐시와 요청 합치기'): 모델과 프롬프트 버전이 바뀌면 다른 키가 되게 하세요
    # # (안 그러면 새 모델로 배포해도 옛 모델의 답이 나갑니다).
    # return hashlib.sha256(message.encode("utf-8")).hexdigest()
    # END SOLUTION


class ResponseCache:
    """답 캐시. `await get(key)` -> 답(dict) 또는 None (없음, 꺼짐, 저장소 오류), `await set(key, answer)`.

    ttl_seconds <= 0 이면 꺼짐 (`enabled` False): 아무것도 저장하지 않고 요청 합치기도 하지 않습니다."""

    def __init__(self, ttl_seconds: float, max_entries: int, redis_url: str | None,
                 timer: Callable[[], float] = time.monotonic):
        self.ttl = ttl_seconds
        self.enabled = ttl_seconds > 0
        self.redis = None
        self.local = None
        if not self.enabled:
            return
        # BEGIN SOLUTION
        if redis_url:
            import redis.asyncio

            self.redis = redis.asyncio.from_url(redis_url, **resilience.redis_options())
        else:
            from cachetools import TTLCache

            self.local = TTLCache(maxsize=max_entries, ttl=ttl_seconds, timer=timer)
        # STARTER
        # # TODO 15 (lesson §11 '응답 캐시와 요청 합치기'): REDIS_URL 이 있으면 redis.asyncio.from_url(url,
        # # **resilience.redis_options()) (복제본이 모두 같은 캐시), 없으면 cachetools.TTLCache(maxsize=max_entries,
        # # ttl=ttl_seconds, timer=timer) (이 프로세스만).
        # pass
        # END SOLUTION

    async def get(self, key: str) -> dict | None:
        if not self.enabled:
            return None
        # BEGIN SOLUTION
        if self.redis is None:
            return self.local.get(key)
        if resilience.redis_skipped():  # 이 요청에서 Redis 가 이미 시간 초과: 또 기다리지 않음
            return self._failed(None, "read")
        try:
            raw = await self.redis.get(KEY_PREFIX + key)
        except Exception as exc:  # 연결 거부, 시간 초과, ...: fail open (miss)
            return self._failed(exc, "read")
        return json.loads(raw) if raw is not None else None
        # STARTER
        # # TODO 15 (lesson §11): 저장된 답(dict)을 돌려주세요. Redis 면 GET llm-chat:cache:v1:<key> 의 JSON.
        # # Redis 오류는 잡아서 None (fail open: 5xx 가 아니라 miss) + self._failed(exc, "read").
        # return None
        # END SOLUTION

    async def set(self, key: str, answer: dict) -> None:
        if not self.enabled:
            return
        # BEGIN SOLUTION
        if self.redis is None:
            self.local[key] = answer
            return
        if resilience.redis_skipped():
            self._failed(None, "write")
            return
        try:
            # PX = 밀리초 TTL (EX 는 정수 초만 받음: CACHE_TTL_SECONDS=0.5 도 맞게)
            await self.redis.set(KEY_PREFIX + key, json.dumps(answer, ensure_ascii=False),
                                 px=max(1, round(self.ttl * 1000)))
        except Exception as exc:
            self._failed(exc, "write")
        # STARTER
        # # TODO 15 (lesson §11): 답을 TTL 과 함께 저장하세요. Redis 면 SET llm-chat:cache:v1:<key> <JSON> PX <ttl 밀리초>,
        # # 오류는 잡아서 self._failed(exc, "write") (캐시에 못 써도 답은 나감).
        # pass
        # END SOLUTION

    def _failed(self, exc: BaseException | None, what: str) -> None:
        if exc is not None:
            resilience.redis_failed(exc)
            logger.warning("캐시 저장소 오류 (%s, %s): 캐시 없이 진행합니다 (fail open)", what, type(exc).__name__)
        telemetry.record_cache("error")
        return None

    async def aclose(self) -> None:
        if self.redis is not None:
            await self.redis.aclose()


class Coalescer:
    """요청 합치기 (single flight): 같은 키로 진행 중인 작업이 있으면 새 호출 없이 그 결과를 함께 기다립니다.

    `await run(key, make)` -> (결과, 이끈 요청인지). 첫 요청(leader)만 `make()` 로 작업을 만들고, 작업이 끝나면
    (성공이든 실패든) 표에서 지웁니다. 작업이 실패하면 기다리던 모두가 같은 예외를 받습니다. 기다리던 요청 하나가
    취소되어도(클라이언트가 떠남) `asyncio.shield` 덕분에 작업은 계속되어 다른 요청이 답을 받습니다."""

    def __init__(self):
        self.in_flight: dict[str, asyncio.Task] = {}

    async def run(self, key: str, make: Callable[[], Awaitable]) -> tuple[object, bool]:
        # BEGIN SOLUTION
        task = self.in_flight.get(key)
        if task is not None:
            return await asyncio.shield(task), False
        task = asyncio.create_task(make())
        self.in_flight[key] = task

        def forget(done: asyncio.Task) -> None:
            if self.in_flight.get(key) is done:
                del self.in_flight[key]

        task.add_done_callback(forget)
        return await asyncio.shield(task), True
        # STARTER
        # # TODO 16 (lesson §11 '응답 캐시와 요청 합치기'): self.in_flight 에 같은 key 의 작업이 있으면
        # # await asyncio.shield(그 작업) -> (결과, False). 없으면 asyncio.create_task(make()) 를 표에 넣고
        # # 끝나면(add_done_callback) 지우게 한 뒤 await asyncio.shield(작업) -> (결과, True).
        # return await make(), True
        # END SOLUTION
