"""06단계: 복제본 여러 개가 함께 쓰는 한도와 상태 (lesson §5, §7).

- `RateLimiter`: API 키별 한도 (limits 의 MovingWindowRateLimiter). REDIS_URL 이 있으면 Redis 에 세므로
  복제본 몇 개가 떠 있어도 한도 하나, 없으면 이 프로세스의 메모리에 셉니다 (복제본 하나일 때만 맞음).
  Redis 가 죽으면 FAIL OPEN: 요청은 통과시키고 경고(30초에 한 번)와 메트릭 llm_ratelimit_errors_total 을 남깁니다.
- `SharedResponses`: /feedback 이 받을 응답 id. REDIS_URL 이 있으면 Redis 에도 적어 어느 복제본이 답해도 됩니다.
- `client_id`: 한도의 키 = API 키의 sha256 앞 16자리 (원래 키도, 클라이언트 IP 도 아님).
"""

from __future__ import annotations

import contextvars
import hashlib
import logging
import math
import time
from dataclasses import dataclass

import quality
import telemetry

logger = logging.getLogger("llm-chat.resilience")

# Redis 가 느리거나 죽었을 때 요청 하나에 더해지는 시간의 상한 (연결, 읽기 모두). 재시도하지 않습니다.
REDIS_TIMEOUT_SECONDS = 0.1
WARN_EVERY_SECONDS = 30.0  # Redis 오류 경고를 로그에 남기는 간격 (오류마다 한 줄이면 로그가 넘칩니다)
RESPONSE_TTL_SECONDS = 24 * 3600  # 피드백을 받을 수 있는 기간
# 요청 하나 안에서 Redis 가 시간 초과로 답하지 않았으면(멈춘 Redis) 그 요청의 나머지 Redis 호출(응답 id)은 건너뜁니다:
# 그러지 않으면 /chat 하나가 0.1 초씩 두 번 기다립니다. 요청마다 따로라서 Redis 가 다시 뜨면 다음 요청부터 셉니다.
_redis_timed_out: contextvars.ContextVar[bool] = contextvars.ContextVar("redis_timed_out", default=False)


def redis_skipped() -> bool:
    """이 요청에서 이미 Redis 시간 초과가 있었으면 True: 부르지 않고 바로 fail open."""
    return _redis_timed_out.get()


def redis_failed(exc: BaseException) -> None:
    from redis.exceptions import TimeoutError as RedisTimeout

    if isinstance(exc, (TimeoutError, RedisTimeout)):
        _redis_timed_out.set(True)


def client_id(api_key: str) -> str:
    """한도를 셀 클라이언트 이름: 키의 sha256 앞 16자리. Redis 나 로그에 원래 키가 남지 않습니다."""
    return hashlib.sha256(api_key.encode()).hexdigest()[:16]


def redis_options() -> dict:
    """짧은 타임아웃, 재시도 없음: Redis 장애가 요청마다 수 초를 더하지 않게 합니다
    (redis-py 6 이상은 기본으로 연결 오류를 3번까지 백오프하며 다시 시도합니다)."""
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    return {"socket_timeout": REDIS_TIMEOUT_SECONDS, "socket_connect_timeout": REDIS_TIMEOUT_SECONDS,
            "retry": Retry(NoBackoff(), 0)}


@dataclass(frozen=True)
class Decision:
    """한도 판정 하나: 응답 헤더에 그대로 씁니다."""

    allowed: bool
    limit: int
    remaining: int
    reset_seconds: int  # 창이 다시 채워지기 시작할 때까지 (초, 1 이상)
    window_seconds: int

    def headers(self) -> dict[str, str]:
        """IETF draft (RateLimit 헤더 필드, draft-07 모양): 성공 응답에도 붙입니다."""
        return {"RateLimit-Policy": f"{self.limit};w={self.window_seconds}",
                "RateLimit": f"limit={self.limit}, remaining={self.remaining}, reset={self.reset_seconds}"}


class RateLimiter:
    """API 키별 한도. `await hit(key)` 가 Decision 을 돌려주고, 저장소 오류면 None (= 통과, fail open)."""

    def __init__(self, rate: str, redis_url: str | None):
        from limits import parse

        self.item = parse(rate)  # 예: "60/minute" -> 60 회 / 60 초
        self.redis_url = redis_url
        self.storage = None
        self.limiter = None
        self._last_warning = -math.inf
        # BEGIN SOLUTION
        from limits.storage import storage_from_string
        from limits.aio.strategies import MovingWindowRateLimiter

        if redis_url:
            uri = "async+" + redis_url if not redis_url.startswith("async+") else redis_url
            self.storage = storage_from_string(uri, implementation="redispy", **redis_options())
        else:
            logger.warning("REDIS_URL 이 없어 한도를 이 프로세스의 메모리에 셉니다: 복제본이 하나일 때만 맞습니다")
            self.storage = storage_from_string("async+memory://")
        self.limiter = MovingWindowRateLimiter(self.storage)
        # STARTER
        # # TODO 6 (lesson §5 'API 키별 Rate Limiting'): limits 의 저장소와 MovingWindowRateLimiter 를 만드세요.
        # # REDIS_URL 이 있으면 storage_from_string("async+redis://...", implementation="redispy", **redis_options()),
        # # 없으면 "async+memory://" (복제본이 둘이면 한도가 두 배가 되는 이유: lesson §5).
        # pass
        # END SOLUTION

    @property
    def window_seconds(self) -> int:
        return int(self.item.get_expiry())

    # BEGIN SOLUTION
    async def hit(self, api_key: str, cost: int = 1) -> Decision | None:
        """요청 하나를 셉니다 (cost = 요청 몇 개로 셀지: POST /chat/batch 는 질문 수, lesson §13). 남은 한도가 cost 보다
        작으면 하나도 세지 않고 거절. None = 한도를 재지 못함 (아직 구현 전이거나 저장소 장애: 요청을 통과시킴)."""
    # STARTER
    # # TODO 19 (lesson §13 '배치 처리'): hit(api_key, cost=1): 배치는 질문 수만큼 (limits 의 hit(..., cost=cost)).
    # async def hit(self, api_key: str) -> Decision | None:
    #     """요청 하나를 셉니다. None = 한도를 재지 못함 (아직 구현 전이거나 저장소 장애: 요청을 통과시킴)."""
    # END SOLUTION
        # BEGIN SOLUTION
        who = client_id(api_key)
        if self.redis_url and redis_skipped():
            telemetry.record_ratelimit_error()
            return None
        try:
            allowed = await self.limiter.hit(self.item, who, cost=cost)
            reset_at, remaining = await self.limiter.get_window_stats(self.item, who)
        except Exception as exc:  # Redis 연결 거부, 시간 초과, ...: fail open
            if self.redis_url:
                redis_failed(exc)
            telemetry.record_ratelimit_error()
            now = time.monotonic()
            if now - self._last_warning >= WARN_EVERY_SECONDS:
                self._last_warning = now
                logger.warning("한도 저장소 오류 (%s): 한도 없이 통과시킵니다 (fail open)", type(exc).__name__)
            return None
        reset = max(1, math.ceil(reset_at - time.time()))
        return Decision(allowed, self.item.amount, remaining, reset, self.window_seconds)
        # STARTER
        # # TODO 7 (lesson §5 'API 키별 Rate Limiting'): client_id(api_key) 를 키로 self.limiter.hit() 와
        # # get_window_stats() 를 부르고 Decision 을 돌려주세요. 저장소 오류는 잡아서 None (fail open) 과
        # # telemetry.record_ratelimit_error(), 경고는 WARN_EVERY_SECONDS 에 한 번만.
        # return None
        # END SOLUTION

    async def aclose(self) -> None:
        bridge = getattr(self.storage, "bridge", None)
        client = getattr(bridge, "storage", None)
        if client is not None and hasattr(client, "aclose"):
            await client.aclose()


class SharedResponses:
    """피드백을 받을 응답 id. 프로세스 안(quality.IssuedResponses)에 늘 적고, REDIS_URL 이 있으면 Redis 에도
    적습니다. 받을 때는 Redis 가 먼저 (다른 복제본이 낸 id 도 받음), Redis 오류면 프로세스 안의 기록으로."""

    UNKNOWN, EXISTS, CLAIMED = quality.IssuedResponses.UNKNOWN, quality.IssuedResponses.EXISTS, quality.IssuedResponses.OK

    def __init__(self, redis_url: str | None):
        self.local = quality.IssuedResponses()
        self.redis = None
        # BEGIN SOLUTION
        # 06단계 2부 (lesson §15): 응답 id -> 답한 A/B 변형 (프로세스 안, 최근 10 000 개: IssuedResponses 와 같은 수)
        from cachetools import LRUCache

        self.variants: LRUCache = LRUCache(maxsize=10_000)
        # STARTER
        # # TODO 22 (lesson §15 'A/B 테스트'): 응답 id 마다 답한 변형을 기억할 곳 (피드백을 그 변형에 셈).
        # END SOLUTION
        # BEGIN SOLUTION
        if redis_url:
            import redis.asyncio

            self.redis = redis.asyncio.from_url(redis_url, **redis_options())
        # STARTER
        # # TODO 9 (lesson §7 '로드 밸런서 뒤의 복제본 두 개'): REDIS_URL 이 있으면 redis.asyncio.from_url(url,
        # # **redis_options()) 로 클라이언트를 만드세요. 없으면 복제본마다 자기가 낸 id 만 알아
        # # 다른 복제본이 낸 답의 피드백이 404 가 됩니다.
        # END SOLUTION

    # BEGIN SOLUTION
    async def issue(self, variant: str | None = None) -> str:
        """새 응답 id. variant = 이 답을 낸 A/B 변형 (Redis 값 "issued|<변형>"): /feedback 이 그 변형에 셉니다."""
        response_id = self.local.issue()
        if variant is not None:
            self.variants[response_id] = variant
    # STARTER
    # # TODO 22 (lesson §15 'A/B 테스트'): issue(variant=None) 이 변형도 함께 적게 하세요 (Redis 값 "issued|<변형>").
    # async def issue(self) -> str:
    #     response_id = self.local.issue()
    # END SOLUTION
        # BEGIN SOLUTION
        if self.redis is not None and not redis_skipped():
            try:
                value = "issued" if variant is None else f"issued|{variant}"
                await self.redis.set(f"llm-chat:response:{response_id}", value, ex=RESPONSE_TTL_SECONDS)
            except Exception as exc:
                redis_failed(exc)
                telemetry.record_ratelimit_error()
                logger.warning("응답 id 를 Redis 에 적지 못했습니다 (%s): 이 복제본만 압니다", type(exc).__name__)
        # STARTER
        # # TODO 9 (lesson §7): Redis 에도 SET llm-chat:response:<id> issued EX RESPONSE_TTL_SECONDS
        # END SOLUTION
        return response_id

    # BEGIN SOLUTION
    async def claim(self, response_id: str) -> str:
        """피드백 하나를 받음: UNKNOWN (모르는 id), EXISTS (이미 받음), CLAIMED. 변형까지는 claim_variant."""
        return (await self.claim_variant(response_id))[0]

    async def claim_variant(self, response_id: str) -> tuple[str, str | None]:
        """claim 과 같고, 이 답을 낸 A/B 변형도 돌려줍니다 (변형 없이 낸 id, 받지 못한 id 면 None)."""
        local_variant = self.variants.pop(response_id, None)
        if self.redis is not None and not redis_skipped():
            try:
                # SET ... XX GET: 있을 때만 "claimed" 로 바꾸고 이전 값을 돌려줌 (원자적: 두 복제본이 동시에 받아도 한 번)
                previous = await self.redis.set(f"llm-chat:response:{response_id}", "claimed", xx=True, get=True,
                                                keepttl=True)
                local_outcome = self.local.claim(response_id)
                if previous is None:
                    # Redis 가 모르는 id: 어느 복제본도 내지 않았거나, 이 복제본이 냈는데 그때 Redis 쓰기가 실패함
                    # (issue 의 fail open). 이 복제본의 기록이 그 답을 알면 그 기록으로 받습니다.
                    return local_outcome, (local_variant if local_outcome == self.CLAIMED else None)
                previous = previous.decode() if isinstance(previous, bytes) else previous
                if previous == "claimed":
                    return self.EXISTS, None
                _, _, variant = previous.partition("|")
                return self.CLAIMED, variant or None
            except Exception as exc:
                redis_failed(exc)
                telemetry.record_ratelimit_error()
                logger.warning("Redis 에서 응답 id 를 읽지 못했습니다 (%s): 이 복제본의 기록으로", type(exc).__name__)
        outcome = self.local.claim(response_id)
        return outcome, (local_variant if outcome == self.CLAIMED else None)
    # STARTER
    # async def claim(self, response_id: str) -> str:
    #     # TODO 9 (lesson §7): Redis 에서 원자적으로 받으세요: SET <key> claimed XX GET KEEPTTL
    #     # (이전 값 None = 모르는 id, "claimed" = 이미 피드백 있음).
    #     # TODO 22 (lesson §15 'A/B 테스트'): claim_variant(response_id) -> (결과, 변형) 도 만드세요.
    #     return self.local.claim(response_id)
    # END SOLUTION

    async def aclose(self) -> None:
        if self.redis is not None:
            await self.redis.aclose()
