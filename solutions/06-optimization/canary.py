"""06단계 2부: 카나리 모델 업데이트와 자동 롤백 (lesson §16 '카나리 모델 업데이트').

새 모델(CANARY_MODEL)에 요청의 일부(CANARY_SHARE)만 보내고, 최근 창(CANARY_WINDOW_SECONDS) 안의 결과를 지금 모델
(baseline)과 비교해 나빠지면 스스로 되돌립니다 (롤백).

- `await should_route()`: 이 요청을 카나리 모델로 보낼지. 꺼졌거나 롤백됐으면 False, 아니면 random() < share.
- `record(role, ok)`, `record_score(role, score)`: 결과 하나 (role = "canary" | "baseline"). 창은 프로세스(복제본)마다
  따로 (collections.deque 에 시각과 함께): 복제본마다 자기가 본 요청으로 판정합니다.
- `await check()`: 규칙을 창에 적용합니다. 카나리 결과가 CANARY_MIN_REQUESTS 개 이상일 때만 판정하고
  * 카나리 오류율 > baseline 오류율 + CANARY_MAX_ERROR_INCREASE -> "error_rate",
  * 둘 다 판정 점수가 MIN_SCORES 개 이상이고 카나리 평균 < baseline 평균 - CANARY_MAX_SCORE_DROP -> "quality".
  이 호출이 롤백을 일으켰으면 그 이유를, 아니면 None 을 돌려줍니다 (롤백 메트릭은 서비스가 이 값으로 한 번 셈).
- 롤백 상태는 복제본이 함께 봅니다: REDIS_URL 이 있으면 Redis 키 `llm-chat:canary:v1:<카나리 모델>` =
  JSON {"state": "rolled_back", "reason", "at"} (SET NX, TTL 없음). 다른 복제본은 이 키를 읽습니다 (1초 동안 캐시).
  Redis 를 읽지 못하면 롤백된 것으로 봅니다 (fail safe: 상태를 모를 때는 카나리로 보내지 않음) + 경고.
  REDIS_URL 이 없으면 이 프로세스 안에서만 (복제본이 하나일 때만 맞음).
- 롤백은 되돌리지 않습니다: 다시 시도하려면 고친 모델로 CANARY_MODEL 을 바꿔 다시 배포합니다 (키에 모델 이름이 있음).
  롤백할 때 WARNING JSON 로그 한 줄 `canary_rollback` (reason, 두 오류율, 두 평균 점수).

FastAPI 를 모르는 모듈이라 단위 테스트가 쉽습니다 (시계와 난수를 주입할 수 있음). 메트릭은 서비스(main.py)가 남깁니다.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Literal

import structlog

import resilience

logger = structlog.get_logger("llm-chat.canary")
_std_logger = logging.getLogger("llm-chat.canary")

KEY_PREFIX = "llm-chat:canary:v1:"
READ_CACHE_SECONDS = 1.0  # 다른 복제본의 롤백을 늦어도 이만큼 뒤에 봄 (요청마다 Redis 를 읽지 않으려고)
MIN_SCORES = 5  # 평균 점수를 비교하기 전에 두 쪽 모두 필요한 판정 수
WARN_EVERY_SECONDS = 30.0

Role = Literal["canary", "baseline"]
ROLES: tuple[str, str] = ("canary", "baseline")


class Canary:
    """카나리 하나 (서비스에 하나). model 이 빈 문자열이면 꺼짐: should_route 는 늘 False, state 는 "off"."""

    def __init__(self, model: str | None, share: float = 0.05, *, min_requests: int = 20,
                 window_seconds: float = 300.0, max_error_increase: float = 0.05, max_score_drop: float = 0.5,
                 redis_url: str | None = None, clock: Callable[[], float] = time.monotonic,
                 rng: Callable[[], float] = random.random):
        self.model = model or None
        self.share = share
        self.min_requests = min_requests
        self.window_seconds = window_seconds
        self.max_error_increase = max_error_increase
        self.max_score_drop = max_score_drop
        self.clock = clock
        self.rng = rng
        self.outcomes: dict[str, deque[tuple[float, bool]]] = {role: deque() for role in ROLES}
        self.scores: dict[str, deque[tuple[float, float]]] = {role: deque() for role in ROLES}
        self.rollback: dict | None = None  # 이 프로세스가 알게 된 롤백 (한 번 알면 끝까지: 롤백은 되돌리지 않음)
        self.redis = None
        self._read_at = -float("inf")  # 마지막으로 Redis 를 읽은 시각 (clock)
        self._read_failed = False  # 마지막 읽기가 실패했는지 (그동안은 롤백된 것으로 봄)
        self._last_warning = -float("inf")
        if self.model and redis_url:
            # BEGIN SOLUTION
            import redis.asyncio

            self.redis = redis.asyncio.from_url(redis_url, **resilience.redis_options())
            # STARTER
            # # TODO 24 (lesson §16 '카나리 모델 업데이트'): REDIS_URL 이 있으면 redis.asyncio.from_url(url,
            # # **resilience.redis_options()) 로 롤백 상태를 복제본이 함께 보게 하세요 (없으면 한 복제본이 롤백해도
            # # 다른 복제본은 계속 망가진 모델로 보냅니다).
            # pass
            # END SOLUTION

    @property
    def enabled(self) -> bool:
        return self.model is not None

    @property
    def key(self) -> str:
        return KEY_PREFIX + (self.model or "")

    # ------------------------------------------------------------------ 라우팅
    async def should_route(self) -> bool:
        """이 요청을 카나리 모델로? 꺼짐/롤백(또는 상태를 모름) -> False, 아니면 share 의 확률로 True."""
        if not self.enabled or await self.rolled_back():
            return False
        # BEGIN SOLUTION
        return self.rng() < self.share
        # STARTER
        # # TODO 24 (lesson §16 '카나리 모델 업데이트'): 요청의 share 만큼만 카나리로: self.rng() < self.share.
        # return False
        # END SOLUTION

    # ------------------------------------------------------------------ 결과의 창
    def record(self, role: Role, ok: bool) -> None:
        """요청 하나의 결과. ok = 보낸 모델이 답함, False = 업스트림 오류로 끝났거나 Fallback 이 답함."""
        if role not in ROLES:
            raise ValueError(f"role 은 canary 또는 baseline 입니다: {role!r}")
        self.outcomes[role].append((self.clock(), bool(ok)))
        self._prune()

    def record_score(self, role: Role, score: float) -> None:
        """판정 모델의 점수 하나 (1..5)."""
        if role not in ROLES:
            raise ValueError(f"role 은 canary 또는 baseline 입니다: {role!r}")
        self.scores[role].append((self.clock(), float(score)))
        self._prune()

    def _prune(self) -> None:
        # BEGIN SOLUTION
        oldest = self.clock() - self.window_seconds
        for window in (*self.outcomes.values(), *self.scores.values()):
            while window and window[0][0] < oldest:
                window.popleft()
        # STARTER
        # # TODO 24 (lesson §16 '카나리 모델 업데이트'): 창(CANARY_WINDOW_SECONDS)보다 오래된 결과를 deque 의 앞에서
        # # 지우세요 (지우지 않으면 한 시간 전의 오류로 지금의 모델을 판정합니다).
        # pass
        # END SOLUTION

    def stats(self, role: Role) -> dict:
        """창 안의 {"requests", "errors", "error_rate", "mean_score"} (없으면 error_rate, mean_score 는 None)."""
        self._prune()
        outcomes = self.outcomes[role]
        requests = len(outcomes)
        errors = sum(1 for _, ok in outcomes if not ok)
        scores = [s for _, s in self.scores[role]]
        return {"requests": requests, "errors": errors,
                "error_rate": errors / requests if requests else None,
                "mean_score": sum(scores) / len(scores) if scores else None,
                "scored": len(scores)}

    # ------------------------------------------------------------------ 규칙과 롤백
    def verdict(self) -> str | None:
        """창에 규칙을 적용한 결과: "error_rate", "quality" 또는 None (아직 판정하지 않거나 괜찮음). 상태는 바꾸지 않음."""
        canary, baseline = self.stats("canary"), self.stats("baseline")
        # BEGIN SOLUTION
        if canary["requests"] >= max(1, self.min_requests):
            baseline_rate = baseline["error_rate"] or 0.0
            if canary["error_rate"] > baseline_rate + self.max_error_increase:
                return "error_rate"
        if (canary["scored"] >= MIN_SCORES and baseline["scored"] >= MIN_SCORES
                and canary["mean_score"] < baseline["mean_score"] - self.max_score_drop):
            return "quality"
        return None
        # STARTER
        # # TODO 24 (lesson §16 '카나리 모델 업데이트'): 카나리 결과가 min_requests 개 이상이면 오류율을 비교해
        # # canary > baseline(없으면 0) + max_error_increase -> "error_rate". 두 쪽 모두 점수가 MIN_SCORES 개 이상이면
        # # canary 평균 < baseline 평균 - max_score_drop -> "quality". 아니면 None.
        # return None
        # END SOLUTION

    async def check(self) -> str | None:
        """규칙을 적용하고 나쁘면 롤백합니다. 이 호출이 롤백을 일으켰을 때만 그 이유, 아니면 None."""
        if not self.enabled or await self.rolled_back():
            return None
        reason = self.verdict()
        if reason is None:
            return None
        # BEGIN SOLUTION
        return await self._roll_back(reason)
        # STARTER
        # # TODO 24 (lesson §16 '카나리 모델 업데이트'): self._roll_back(reason) 으로 롤백하세요.
        # return None
        # END SOLUTION

    async def _roll_back(self, reason: str) -> str | None:
        canary, baseline = self.stats("canary"), self.stats("baseline")
        state = {"state": "rolled_back", "reason": reason,
                 "at": datetime.now(UTC).isoformat(timespec="seconds")}
        first = True
        # BEGIN SOLUTION
        if self.redis is not None:
            try:
                # NX: 두 복제본이 거의 동시에 롤백해도 처음 것 하나만 남고 롤백은 한 번만 셉니다.
                first = bool(await self.redis.set(self.key, json.dumps(state), nx=True))
                if not first:
                    state = await self._read_shared() or state
            except Exception as exc:  # 적지 못해도 이 복제본은 롤백 (다른 복제본은 자기 창으로 판정)
                self._redis_error(exc, "카나리 롤백 상태를 Redis 에 적지 못했습니다: 이 복제본만 롤백합니다")
        # STARTER
        # # TODO 24 (lesson §16 '카나리 모델 업데이트'): Redis 가 있으면 SET llm-chat:canary:v1:<모델> <state JSON> NX 로
        # # 다른 복제본에도 알리세요 (NX 가 실패하면 다른 복제본이 먼저 롤백한 것: first = False).
        # END SOLUTION
        self.rollback = state
        if not first:
            return None
        logger.warning("canary_rollback", model=self.model, reason=reason,
                       canary_error_rate=canary["error_rate"], baseline_error_rate=baseline["error_rate"],
                       canary_mean_score=canary["mean_score"], baseline_mean_score=baseline["mean_score"],
                       canary_requests=canary["requests"], baseline_requests=baseline["requests"])
        return reason

    # ------------------------------------------------------------------ 함께 보는 상태
    async def _read_shared(self) -> dict | None:
        raw = await self.redis.get(self.key)
        if raw is None:
            return None
        try:
            state = json.loads(raw)
        except ValueError:
            state = {"state": "rolled_back", "reason": "unknown", "at": None}
        return state if isinstance(state, dict) else {"state": "rolled_back", "reason": "unknown", "at": None}

    async def rolled_back(self) -> bool:
        """롤백됐는지 (또는 Redis 를 읽지 못해 모르는지: 그때도 True). Redis 는 READ_CACHE_SECONDS 에 한 번만 읽습니다."""
        if not self.enabled:
            return False
        if self.rollback is not None:
            return True
        if self.redis is None:
            return False
        now = self.clock()
        if now - self._read_at < READ_CACHE_SECONDS:
            return self._read_failed
        # BEGIN SOLUTION
        if resilience.redis_skipped():  # 이 요청에서 Redis 가 이미 시간 초과: 또 기다리지 않음 (모름 = 롤백)
            return True
        self._read_at = now
        try:
            state = await self._read_shared()
        except Exception as exc:  # fail safe: 상태를 모르면 카나리로 보내지 않음
            self._read_failed = True
            self._redis_error(exc, "카나리 상태를 Redis 에서 읽지 못했습니다: 롤백된 것으로 봅니다 (fail safe)")
            return True
        self._read_failed = False
        if state is not None:
            self.rollback = state
            return True
        return False
        # STARTER
        # # TODO 24 (lesson §16 '카나리 모델 업데이트'): GET llm-chat:canary:v1:<모델> 을 읽어 값이 있으면 롤백
        # # (self.rollback = 그 JSON). Redis 오류는 잡아서 self._read_failed = True, self._redis_error(exc, "...") 후
        # # True (fail safe: 상태를 모르면 카나리로 보내지 않음).
        # return False
        # END SOLUTION

    async def state(self) -> dict:
        """GET /canary 의 본문: {"model", "share", "state": "off"|"active"|"rolled_back", "reason", "at",
        "canary": {...}, "baseline": {...}} (창 안의 requests, errors, error_rate, mean_score)."""
        if not self.enabled:
            name, reason, at = "off", None, None
        elif await self.rolled_back():
            name = "rolled_back"
            known = self.rollback or {}
            reason = known.get("reason", "state_unknown" if self._read_failed else None)
            at = known.get("at")
        else:
            name, reason, at = "active", None, None

        def public(role: str) -> dict:
            s = self.stats(role)
            return {k: s[k] for k in ("requests", "errors", "error_rate", "mean_score")}

        return {"model": self.model, "share": self.share, "state": name, "reason": reason, "at": at,
                "canary": public("canary"), "baseline": public("baseline")}

    def _redis_error(self, exc: BaseException, message: str) -> None:
        """Redis 오류 하나: 이 요청의 나머지 Redis 호출은 건너뛰게 하고(resilience), 경고는 WARN_EVERY_SECONDS 에 한 번."""
        resilience.redis_failed(exc)
        now = self.clock()
        if now - self._last_warning >= WARN_EVERY_SECONDS:
            self._last_warning = now
            _std_logger.warning("%s (%s)", message, type(exc).__name__)

    async def aclose(self) -> None:
        if self.redis is not None:
            await self.redis.aclose()
