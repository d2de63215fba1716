"""The Gemini-API simulator as a minimal ASGI app (served by uvicorn + uvloop + httptools).

Wire format observed from the real client (langchain-google-genai 4.4.3 / google-genai
3.6.1) pointed at a capture server:
  POST /v1/models/{model}:generateContent                  (v1 when base_url is set;
  POST /v1/models/{model}:streamGenerateContent?alt=sse     v1beta / v1alpha accepted too)
  POST /v1/models/{model}:countTokens
  headers: x-goog-api-key, content-type: application/json
  body: {"contents": [{"parts": [{"text": ...}], "role": "user"}], "systemInstruction": {...},
         "safetySettings": [], "generationConfig": {"candidateCount": 1, "maxOutputTokens": n,
         "thinkingConfig": {"thinking_budget": n, "include_thoughts": bool}}}
"""

from __future__ import annotations

import asyncio
import base64
import math
import random
import re
import time
from collections import deque
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

import orjson

from . import errors
from .config import DEFAULTS, ConfigError, validate
from . import embeddings, knowledge
from .evaluation import grade, judge_request
from .generate import OUTCOMES
from .generate import answer_with_rules
from .models import judge_models, known_models, profile
from .prompts import rules as prompt_rules
from .tokens import count_request_tokens, count_tokens, split_tokens

__all__ = ["Simulator", "StreamCut", "create_app"]

_ROUTE = re.compile(r"^/(v1beta|v1|v1alpha)/models(?:/([^/:]+)(?::([A-Za-z]+))?)?/?$")
_ACTIONS = ("generateContent", "streamGenerateContent", "countTokens")
_MAX_BODY = 20 * 1024 * 1024
_CHUNK_TOKENS = 12          # tokens per SSE chunk
_JSON_HEADERS = [(b"content-type", b"application/json; charset=UTF-8")]
_SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
REQUEST_LOG_SIZE = 1000     # answered requests kept for GET /_sim/requests
_QUESTION_CHARS = 300       # question text kept per logged request
_LOG_FIELDS = ("seq", "time", "model", "action", "key", "question", "system_hash", "grounding", "brevity",
               "entry_id", "outcome", "input_tokens", "output_tokens", "thoughts_tokens", "finish_reason",
               "judge_verdict", "judge_score", "traceparent", "request_id")


class StreamCut(Exception):
    """Raised inside the ASGI app after some SSE chunks: uvicorn then closes the connection
    without the final chunk of the chunked body (what a dropped upstream stream looks like).
    cli.serve filters its traceback out of the log."""


class _Reply(Exception):
    """Short-circuit with a (status, body) response."""

    def __init__(self, status: int, body: bytes):
        self.status, self.body = status, body


@dataclass
class _Gauges:
    """Live gauges of model requests (GET /_sim/stats); a new set at each reset."""
    in_flight: int = 0
    max_in_flight: int = 0
    active: int = 0           # requests holding a max_concurrency slot
    queued: int = 0           # requests waiting for one
    queued_total: int = 0


class Simulator:
    """State of one simulator: config, seeded RNG, counters, per-key quota windows."""

    def __init__(self, **config: Any):
        self.config: dict[str, Any] = dict(DEFAULTS)
        self.config.update(validate(config))
        self.startup_config: dict[str, Any] = dict(self.config)
        self.started_at = time.time()
        self.reset()

    # ---- state ---------------------------------------------------------------
    def reset(self, config: bool = False) -> None:
        """Counters, quota windows and the RNG back to the start; with config=True also the
        configuration the simulator was started with (undoes every PATCH /_sim/config)."""
        if config:
            self.config = dict(self.startup_config)
        self.rng = random.Random(self.config["seed"])
        self.seq = 0
        # New gauges at each reset: a request still running from before (a call its client cancelled sleeps out its
        # simulated latency) keeps moving the gauges it started with, so these count only requests started since
        # this reset, never go negative, and a new measurement starts from 0.
        self.gauges = _Gauges()
        self.semaphores: dict[str, asyncio.Semaphore] = {}
        self.windows: dict[str, deque] = {}
        self.log: deque[tuple] = deque(maxlen=REQUEST_LOG_SIZE)
        self.counters = {
            "requests_total": 0,
            "by_model": {}, "by_key": {}, "by_status": {}, "by_action": {}, "by_request_id": {},
            "tokens": {"input": 0, "output": 0, "thoughts": 0},
            "tokens_by_model": {},
            "outcomes": dict.fromkeys(OUTCOMES, 0),
            "outcomes_by_model": {},
            "by_system": {},
            "judge": {"requests": 0, "verdicts": {}, "score_sum": 0},
            "faults": {"error_429": 0, "error_500": 0, "error_503": 0, "hang": 0, "quota_429": 0,
                       "malformed": 0, "safety_block": 0, "empty_candidates": 0, "slow_first_token": 0,
                       "stream_cut": 0},
            # answer streams: started; completed = the last chunk was sent; abandoned = the client left first
            # (a stream_cut fault is neither: it is counted in faults)
            "streams": {"started": 0, "completed": 0, "abandoned": 0},
            "embeddings": embeddings.new_counters(),     # embedContent / batchEmbedContents
        }

    def configure(self, changes: dict[str, Any]) -> dict[str, Any]:
        clean = validate(changes)
        merged = dict(self.config)
        merged.update(clean)
        validate({k: merged[k] for k in ("error_429_rate", "error_500_rate", "error_503_rate")})
        self.config = merged
        if "seed" in clean:
            self.rng = random.Random(self.config["seed"])
        if "quota_rpm" in clean:
            self.windows.clear()
        if "max_concurrency" in clean:
            self.semaphores = {}      # new capacity for new requests; holders release the old one
        return dict(self.config)

    def stats(self) -> dict[str, Any]:
        s = orjson.loads(orjson.dumps(self.counters))
        s.update(vars(self.gauges))
        s["uptime_seconds"] = round(time.time() - self.started_at, 3)
        return s

    def requests(self, limit: int | None = None) -> list[dict]:
        """The last `limit` answered requests (oldest first), as dicts with _LOG_FIELDS."""
        rows = list(self.log)
        if limit is not None:
            rows = rows[-limit:] if limit > 0 else []
        out = [dict(zip(_LOG_FIELDS, row)) for row in rows]
        for row in out:
            row["time"] = round(row["time"], 3)
        return out

    def _inc(self, table: str, key: str) -> None:
        d = self.counters[table]
        d[key] = d.get(key, 0) + 1

    # ---- ASGI ----------------------------------------------------------------
    async def __call__(self, scope, receive, send):
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return

    async def _send(self, send, status: int, body: bytes, headers=_JSON_HEADERS, count: bool = True):
        if count:
            self._inc("by_status", str(status))
        await send({"type": "http.response.start", "status": status,
                    "headers": headers + [(b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def _http(self, scope, receive, send):
        path: str = scope["path"]
        method: str = scope["method"]
        if path.startswith("/_sim/"):
            await self._admin(scope, path, method, receive, send)
            return
        m = _ROUTE.match(path)
        if m is None:
            self.counters["requests_total"] += 1
            self._inc("by_action", "unknown")
            await self._send(send, *errors.not_found(f"Requested path {path} was not found."))
            return
        version, model, action = m.groups()
        self.counters["requests_total"] += 1
        if model is None or action is None:
            await self._models_get(scope, model, method, send)
            return
        if action in embeddings.ACTIONS:
            await self._embed(scope, receive, send, version, model, action, method)
            return
        self._inc("by_action", action if action in _ACTIONS else "unknown")
        self._inc("by_model", model)
        request_id = _header(scope, b"x-request-id")
        if request_id:  # every attempt (faults and retries too), by the caller's X-Request-ID
            by_id = self.counters["by_request_id"]
            by_id[request_id] = by_id.get(request_id, 0) + 1
            if len(by_id) > REQUEST_LOG_SIZE:
                del by_id[next(iter(by_id))]
        g = self.gauges
        g.in_flight += 1
        g.max_in_flight = max(g.max_in_flight, g.in_flight)
        try:
            await self._model_action(scope, receive, send, version, model, action, method, g)
        except _Reply as r:
            await self._send(send, r.status, r.body)
        finally:
            g.in_flight -= 1

    # ---- admin API -------------------------------------------------------------
    async def _admin(self, scope, path, method, receive, send):
        def reply(obj, status=200):
            return self._send(send, status, orjson.dumps(obj), count=False)

        if path == "/_sim/health":
            return await reply({"status": "ok", "service": "gemini-simulator"})
        if path == "/_sim/stats" and method == "GET":
            return await reply(self.stats())
        if path == "/_sim/requests" and method == "GET":
            qs = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            raw_limit = (qs.get("limit") or [None])[0]
            try:
                limit = None if raw_limit in (None, "") else int(raw_limit)
                if limit is not None and limit < 0:
                    raise ValueError
            except ValueError:
                return await reply({"error": f"limit 은 0 이상의 정수여야 합니다: {raw_limit!r}"}, 400)
            rows = self.requests(limit)
            return await reply({"requests": rows, "count": len(rows), "log_size": REQUEST_LOG_SIZE})
        if path == "/_sim/reset" and method == "POST":
            raw = await _read_body(receive)
            try:
                opts = orjson.loads(raw) if raw and raw.strip() else {}
            except orjson.JSONDecodeError as exc:
                return await reply({"error": f"JSON 형식이 아닙니다: {exc}"}, 400)
            if not isinstance(opts, dict) or not isinstance(opts.get("config", False), bool) \
                    or set(opts) - {"config"}:
                return await reply({"error": '본문은 비어 있거나 {"config": true|false} 여야 합니다'}, 400)
            self.reset(config=opts.get("config", False))
            return await reply({"status": "reset", "config": self.config})
        if path == "/_sim/config":
            if method == "GET":
                return await reply(self.config)
            if method in ("PATCH", "POST"):
                raw = await _read_body(receive)
                try:
                    changes = orjson.loads(raw or b"{}")
                    return await reply(self.configure(changes))
                except orjson.JSONDecodeError as exc:
                    return await reply({"error": f"JSON 형식이 아닙니다: {exc}"}, 400)
                except ConfigError as exc:
                    return await reply({"error": str(exc)}, 400)
            return await reply({"error": f"{method} 는 지원하지 않습니다 (GET 또는 PATCH)"}, 405)
        return await reply({"error": f"알 수 없는 관리 경로: {path}"}, 404)

    # ---- API key (every /v1*/models path) ---------------------------------------------
    def _api_key(self, scope, count: bool = True) -> str:
        """The caller's key (x-goog-api-key header or ?key=), as Google checks it: none -> 403, one outside
        valid_keys -> 400 (raised as _Reply). `count`: add it to the by_key stats."""
        qs = parse_qs(scope.get("query_string", b"").decode("latin-1")) if scope.get("query_string") else {}
        key = _header(scope, b"x-goog-api-key") or (qs.get("key") or [""])[0]
        if not key:
            raise _Reply(*errors.api_key_missing())
        if count:
            self._inc("by_key", key)
        valid = self.config["valid_keys"]
        if valid is not None and key not in valid:
            raise _Reply(*errors.api_key_invalid())
        return key

    # ---- embeddings (coursekit/simulator/embeddings.py) ---------------------------------
    async def _embed(self, scope, receive, send, version, model, action, method):
        """embedContent / batchEmbedContents: key check like generate, then embeddings.respond.
        Not in by_model, in_flight, quotas or fault injection; counted in by_action, by_key, by_status
        and the `embeddings` block of the stats."""
        self._inc("by_action", action)
        if method != "POST":
            return await self._send(send, *errors.method_not_allowed(method))
        try:
            self._api_key(scope)
        except _Reply as r:
            return await self._send(send, r.status, r.body)
        raw = await _read_body(receive)
        await self._send(send, *embeddings.respond(self.counters["embeddings"], version, model, action, raw))

    # ---- models list / get -------------------------------------------------------
    def _model_info(self, name: str) -> dict:
        p = profile(name)
        return {
            "name": f"models/{name}", "version": "001", "displayName": p.display_name,
            "description": p.description, "inputTokenLimit": 1048576, "outputTokenLimit": 65536,
            "supportedGenerationMethods": ["generateContent", "countTokens", "streamGenerateContent"],
            "temperature": 1.0, "topP": 0.95, "topK": 64, "thinking": p.thinking,
        }

    async def _models_get(self, scope, model, method, send):
        if method != "GET":
            await self._send(send, *errors.method_not_allowed(method))
            return
        # The real API lists and describes models only for a key (README §4), as for generateContent.
        try:
            self._api_key(scope, count=False)
        except _Reply as r:
            await self._send(send, r.status, r.body)
            return
        if model is None:
            self._inc("by_action", "listModels")
            body = {"models": [self._model_info(n) for n in known_models() + judge_models()]}
        else:
            self._inc("by_action", "getModel")
            body = self._model_info(model)
        await self._send(send, 200, orjson.dumps(body))

    # ---- generate / stream / count --------------------------------------------------
    async def _model_action(self, scope, receive, send, version, model, action, method, g: _Gauges):
        if action not in _ACTIONS:
            raise _Reply(*errors.not_found(
                f"Method models.{action} is not found for API version {version}. "
                f"Supported: {', '.join(_ACTIONS)}."))
        if method != "POST":
            raise _Reply(*errors.method_not_allowed(method))
        key = self._api_key(scope)

        raw = await _read_body(receive)
        if raw is None:
            raise _Reply(*errors.invalid_argument("Request payload size exceeds the limit: 20971520 bytes."))
        try:
            req = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise _Reply(*errors.invalid_json(str(exc))) from None
        if not isinstance(req, dict):
            raise _Reply(*errors.invalid_json("Request body must be a JSON object."))

        if action == "countTokens":
            await self._count_tokens(req, send)
            return
        contents, system = _validate_generate(req)
        gen = req.get("generationConfig") or {}
        think = gen.get("thinkingConfig") or {}
        if not isinstance(think, dict):
            raise _Reply(*errors.invalid_argument("Invalid value at 'generation_config.thinking_config'."))
        budget = think.get("thinkingBudget", think.get("thinking_budget"))
        if budget is not None and (not isinstance(budget, int) or isinstance(budget, bool)):
            raise _Reply(*errors.invalid_argument(
                "Invalid value at 'generation_config.thinking_config.thinking_budget' (TYPE_INT32)."))
        max_out = gen.get("maxOutputTokens", gen.get("max_output_tokens"))
        if max_out is not None and (not isinstance(max_out, int) or isinstance(max_out, bool) or max_out <= 0):
            raise _Reply(*errors.invalid_argument(
                "Invalid value at 'generation_config.max_output_tokens', must be a positive integer."))

        # per-key quota (requests per minute, sliding window); refused requests don't count
        rpm = self.config["quota_rpm"]
        if rpm:
            now = time.monotonic()
            win = self.windows.setdefault(key, deque())
            while win and now - win[0] >= 60.0:
                win.popleft()
            if len(win) >= rpm:
                self.counters["faults"]["quota_429"] += 1
                raise _Reply(*errors.resource_exhausted(model, math.ceil(60.0 - (now - win[0])),
                                                        quota_value=rpm, quota=True))
            win.append(now)

        # fault injection (seeded)
        slow_first, cut, chunk_extra, capacity = 0.0, False, 0.0, None
        fm = self.config["fault_models"]
        if fm is None or model in fm or model.removeprefix("models/") in fm:
            cfg = self.config
            if cfg["hang_rate"] > 0 and self.rng.random() < cfg["hang_rate"]:
                self.counters["faults"]["hang"] += 1
                if not await _sleep_unless_disconnect(cfg["hang_seconds"], receive):
                    self._inc("by_status", "499")  # client closed the connection while hung
                    return
            r429, r500, r503 = cfg["error_429_rate"], cfg["error_500_rate"], cfg["error_503_rate"]
            if r429 + r500 + r503 > 0:
                u = self.rng.random()
                if u < r429:
                    self.counters["faults"]["error_429"] += 1
                    raise _Reply(*errors.resource_exhausted(model, 1 + self.rng.randint(0, 30)))
                if u < r429 + r500:
                    self.counters["faults"]["error_500"] += 1
                    raise _Reply(*errors.internal())
                if u < r429 + r500 + r503:
                    self.counters["faults"]["error_503"] += 1
                    raise _Reply(*errors.unavailable())
            if cfg["malformed_rate"] > 0 and self.rng.random() < cfg["malformed_rate"]:
                self.counters["faults"]["malformed"] += 1
                await self._malformed(send, action, model)
                return
            # step 06 faults: each drawn only when its rate is > 0 (older seeds keep their order)
            if cfg["safety_block_rate"] > 0 and self.rng.random() < cfg["safety_block_rate"]:
                self.counters["faults"]["safety_block"] += 1
                await self._blocked(send, action, model, contents, system, safety=True)
                return
            if cfg["empty_candidates_rate"] > 0 and self.rng.random() < cfg["empty_candidates_rate"]:
                self.counters["faults"]["empty_candidates"] += 1
                await self._blocked(send, action, model, contents, system, safety=False)
                return
            slow_rate = cfg["slow_first_token_rate"]
            if cfg["slow_first_token_seconds"] > 0 and slow_rate > 0 and (
                    slow_rate >= 1 or self.rng.random() < slow_rate):
                self.counters["faults"]["slow_first_token"] += 1
                slow_first = cfg["slow_first_token_seconds"]
            if action == "streamGenerateContent" and cfg["stream_cut_rate"] > 0 \
                    and self.rng.random() < cfg["stream_cut_rate"]:
                self.counters["faults"]["stream_cut"] += 1
                cut = True
            chunk_extra = cfg["slow_stream_chunk_seconds"]
            capacity = cfg["max_concurrency"]

        prompt = _prompt_text(contents)
        r = prompt_rules(_system_text(system))
        call = None   # a judge answering through function calling: (name, parameters schema)
        if profile(model).judge:
            call = _function_call(req)
            text, verdict, question = judge_request(
                prompt, gen if call is None else {"responseJsonSchema": call[1]})
            ans = _JudgeAnswer(text, count_tokens(text), verdict.entry_id)
            outcome, judged = None, (verdict.verdict, verdict.score)
        else:
            ans = answer_with_rules(prompt, model, self.config["seed"], budget, r.grounding, r.brevity)
            question, outcome, judged = prompt, ans.outcome, (None, None)
        text, out_tokens, finish = ans.text, ans.output_tokens, "STOP"
        parts = None if call is None else [{"functionCall": {"name": call[0], "args": orjson.loads(text)}}]
        if max_out is not None and out_tokens > max_out and parts is None:
            text, out_tokens, finish = _truncate(text, max_out), None, "MAX_TOKENS"
            out_tokens = count_tokens(text)
            # a cut answer may lose its facts: the outcome is what its text shows
            if outcome is not None:
                outcome = grade(text, knowledge.expected_facts(ans.matched_id) if ans.matched_id else ())
        prompt_tokens = count_request_tokens(contents, system)
        usage = {"promptTokenCount": prompt_tokens, "candidatesTokenCount": out_tokens,
                 "totalTokenCount": prompt_tokens + out_tokens + ans.thoughts_tokens,
                 "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt_tokens}]}
        if ans.thoughts_tokens:
            usage["thoughtsTokenCount"] = ans.thoughts_tokens
        self.seq += 1
        rid = base64.urlsafe_b64encode(self.seq.to_bytes(6, "big") + self.rng.randbytes(9)).decode()

        record = (self.seq, time.time(), model, action, key, question[:_QUESTION_CHARS], r.system_hash,
                  r.grounding, r.brevity, ans.matched_id, outcome, prompt_tokens, out_tokens,
                  ans.thoughts_tokens, finish) + judged + (
                      _header(scope, b"traceparent") or None, _header(scope, b"x-request-id") or None)

        if cut:
            record = record[:14] + ("STREAM_CUT",) + record[15:]

        ttft, per_token = self._latency(model)
        sem = None
        if capacity:
            sem = self.semaphores.get(model)
            if sem is None:
                sem = self.semaphores[model] = asyncio.Semaphore(capacity)
            if not await self._acquire(sem, receive, g):
                self._inc("by_status", "499")   # the caller gave up while queued
                return
        try:
            if action == "generateContent":
                delay = slow_first + ttft + (out_tokens + ans.thoughts_tokens) * per_token
                if delay > 0:
                    await asyncio.sleep(delay)
                body = {"candidates": [{"content": {"parts": parts or [{"text": text}], "role": "model"},
                                        "finishReason": finish, "index": 0}],
                        "usageMetadata": usage, "modelVersion": model, "responseId": rid}
                self._account(model, usage, record)
                await self._send(send, 200, orjson.dumps(body))
                return
            await self._stream(send, receive, model, text, finish, usage, rid,
                               slow_first + ttft + ans.thoughts_tokens * per_token, per_token, record, parts,
                               chunk_extra=chunk_extra, cut=cut)
        finally:
            if sem is not None:
                sem.release()
                g.active -= 1

    async def _acquire(self, sem: asyncio.Semaphore, receive, g: _Gauges) -> bool:
        """Take a max_concurrency slot, waiting in FIFO order (asyncio.Semaphore is fair); False
        if the client disconnects while waiting (then no slot is held). `g`: the gauges the request started with."""
        if not sem.locked():
            await sem.acquire()
            g.active += 1
            return True
        g.queued += 1
        g.queued_total += 1
        acq = asyncio.ensure_future(sem.acquire())
        gone = asyncio.ensure_future(receive())
        got = False
        try:
            while True:
                await asyncio.wait({acq, gone}, return_when=asyncio.FIRST_COMPLETED)
                if acq.done():
                    got = True
                    return True
                if gone.result().get("type") == "http.disconnect":
                    return False
                gone = asyncio.ensure_future(receive())
        finally:
            g.queued -= 1
            if not gone.done():
                gone.cancel()
            if not got:
                if acq.cancel() is False and not acq.cancelled() and acq.exception() is None:
                    sem.release()       # acquired in the same instant the client left
            else:
                g.active += 1

    async def _blocked(self, send, action, model, contents, system, safety: bool):
        """HTTP 200 without an answer: a candidate stopped by the safety filter (finishReason
        SAFETY, no content, one rating blocked) or an empty candidate list. Not logged in
        /_sim/requests, no tokens counted; the fault counters count it."""
        pt = count_request_tokens(contents, system)
        usage = {"promptTokenCount": pt, "totalTokenCount": pt,
                 "promptTokensDetails": [{"modality": "TEXT", "tokenCount": pt}]}
        cands = []
        if safety:
            cands = [{"finishReason": "SAFETY", "index": 0, "safetyRatings": [
                {"category": "HARM_CATEGORY_SEXUALLY_EXPLICIT", "probability": "NEGLIGIBLE"},
                {"category": "HARM_CATEGORY_HATE_SPEECH", "probability": "NEGLIGIBLE"},
                {"category": "HARM_CATEGORY_HARASSMENT", "probability": "NEGLIGIBLE"},
                {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH", "blocked": True}]}]
        body = orjson.dumps({"candidates": cands, "usageMetadata": usage, "modelVersion": model,
                             "responseId": "blocked-" + str(self.counters["requests_total"])})
        if action == "generateContent":
            await self._send(send, 200, body)
        else:
            await self._send(send, 200, b"data: " + body + b"\r\n\r\n", headers=_SSE_HEADERS)

    async def _malformed(self, send, action, model):
        """HTTP 200 whose body is a GenerateContentResponse cut in half (invalid JSON): the real
        client raises json.JSONDecodeError, not a ModelError. Nothing is accounted as tokens."""
        good = orjson.dumps({"candidates": [{"content": {"parts": [{"text": "응답이 중간에 끊겼"}],
                                                          "role": "model"}, "index": 0}],
                             "modelVersion": model})
        cut = good[: len(good) // 2]
        if action == "generateContent":
            await self._send(send, 200, cut)
        else:
            await self._send(send, 200, b"data: " + cut + b"\r\n\r\n", headers=_SSE_HEADERS)

    async def _stream(self, send, receive, model, text, finish, usage, rid, first_delay, per_token, record,
                      parts=None, chunk_extra: float = 0.0, cut: bool = False):
        """Send the answer as SSE chunks while watching receive() for http.disconnect: a client that
        leaves before the last chunk stops the generation at once (streams.abandoned)."""
        streams = self.counters["streams"]
        streams["started"] += 1
        gone = asyncio.ensure_future(_disconnected(receive))
        work = asyncio.ensure_future(self._stream_chunks(
            send, gone, model, text, finish, usage, rid, first_delay, per_token, record, parts, chunk_extra, cut))
        try:
            await asyncio.wait({gone, work}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:       # the server shuts down: stop generating
            work.cancel()
            raise
        finally:
            if not gone.done():
                gone.cancel()
        if not work.done():                  # the client left while a chunk was being prepared
            work.cancel()
            try:
                await work
            except asyncio.CancelledError:
                pass
            streams["abandoned"] += 1
            return
        try:
            work.result()
        except _ClientGone:
            streams["abandoned"] += 1
            return
        streams["completed"] += 1

    async def _stream_chunks(self, send, gone, model, text, finish, usage, rid, first_delay, per_token, record,
                             parts, chunk_extra, cut):
        pieces = split_tokens(text) if parts is None else []
        chunks: list[tuple[str, int]] = []
        buf, n = [], 0
        for piece in pieces:
            buf.append(piece)
            n += count_tokens(piece)
            if n >= _CHUNK_TOKENS:
                chunks.append(("".join(buf), n))
                buf, n = [], 0
        if buf or not chunks:
            chunks.append(("".join(buf), n))
        self._inc("by_status", "200")
        self._account(model, usage, record)

        async def out(message):
            # uvicorn drops a send after a disconnect silently: check first; a failing send is a disconnect too
            if gone.done():
                raise _ClientGone
            try:
                await send(message)
            except OSError as exc:
                raise _ClientGone from exc

        if first_delay > 0:
            await asyncio.sleep(first_delay)
        await out({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
        if cut:   # about half of the answer, never its last chunk, then the connection drops
            if len(chunks) == 1:
                head = chunks[0][0][: len(chunks[0][0]) // 2]
                chunks = [(head, count_tokens(head)), ("", 0)]
            chunks = chunks[: max(1, len(chunks) // 2)] + [("", 0)]
        last = len(chunks) - 1
        for i, (piece, ntok) in enumerate(chunks):
            if cut and i == last:
                raise StreamCut(f"stream_cut after {i} chunks")
            if i > 0 and chunk_extra > 0:
                await asyncio.sleep(chunk_extra)
            if per_token > 0 and ntok:
                await asyncio.sleep(ntok * per_token)
            cand: dict = {"content": {"parts": parts or [{"text": piece}], "role": "model"}, "index": 0}
            obj: dict = {"candidates": [cand], "modelVersion": model, "responseId": rid}
            if i == last:
                cand["finishReason"] = finish
                obj["usageMetadata"] = usage
            await out({"type": "http.response.body", "body": b"data: " + orjson.dumps(obj) + b"\r\n\r\n",
                       "more_body": i != last})

    async def _count_tokens(self, req, send):
        inner = req.get("generateContentRequest")
        src = inner if isinstance(inner, dict) else req
        contents, system = _validate_generate(src)
        n = count_request_tokens(contents, system)
        await self._send(send, 200, orjson.dumps(
            {"totalTokens": n, "promptTokensDetails": [{"modality": "TEXT", "tokenCount": n}]}))

    def _account(self, model, usage, record):
        c = self.counters
        outcome = record[10]
        if outcome is not None:
            c["outcomes"][outcome] += 1
            om = c["outcomes_by_model"].get(model)
            if om is None:
                om = c["outcomes_by_model"][model] = dict.fromkeys(OUTCOMES, 0)
            om[outcome] += 1
        else:  # a judge call: its verdict, not an answer outcome
            j = c["judge"]
            j["requests"] += 1
            j["verdicts"][record[15]] = j["verdicts"].get(record[15], 0) + 1
            j["score_sum"] += record[16]
        by_system = c["by_system"]
        sh = record[6] or "none"
        by_system[sh] = by_system.get(sh, 0) + 1
        self.log.append(record)
        t = self.counters["tokens"]
        t["input"] += usage["promptTokenCount"]
        t["output"] += usage["candidatesTokenCount"]
        t["thoughts"] += usage.get("thoughtsTokenCount", 0)
        tm = self.counters["tokens_by_model"].setdefault(model, {"input": 0, "output": 0, "thoughts": 0})
        tm["input"] += usage["promptTokenCount"]
        tm["output"] += usage["candidatesTokenCount"]
        tm["thoughts"] += usage.get("thoughtsTokenCount", 0)

    def _latency(self, model) -> tuple[float, float]:
        """(time to first token, seconds per token) for one request; (0, 0) in zero mode."""
        cfg = self.config
        if cfg["latency"] != "realistic" or cfg["latency_scale"] <= 0:
            return 0.0, 0.0
        p = profile(model)
        rng = self.rng
        j1 = rng.lognormvariate(0.0, p.jitter_sigma)
        j2 = rng.lognormvariate(0.0, p.jitter_sigma)
        tail = rng.uniform(p.tail_min, p.tail_max) if rng.random() < p.tail_prob else 1.0
        scale = cfg["latency_scale"] * tail
        return p.ttft_seconds * j1 * scale, p.per_token_seconds * j2 * scale


# ---- helpers ---------------------------------------------------------------------
def _header(scope, name: bytes) -> str:
    for k, v in scope["headers"]:
        if k == name:
            return v.decode("latin-1").strip()
    return ""


async def _read_body(receive) -> bytes | None:
    chunks = []
    size = 0
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            break
        body = msg.get("body", b"")
        size += len(body)
        if size > _MAX_BODY:
            return None
        chunks.append(body)
        if not msg.get("more_body"):
            break
    return b"".join(chunks)


class _ClientGone(Exception):
    """The client disconnected while its answer was being streamed."""


async def _disconnected(receive) -> None:
    """Return once receive() reports http.disconnect (the request body was already read)."""
    while (await receive()).get("type") != "http.disconnect":
        pass


async def _sleep_unless_disconnect(seconds: float, receive) -> bool:
    """Sleep; return False early if the client disconnects meanwhile."""
    waiter = asyncio.ensure_future(receive())
    try:
        done, _ = await asyncio.wait({waiter}, timeout=seconds)
        if waiter in done and waiter.result().get("type") == "http.disconnect":
            return False
        return True
    finally:
        if not waiter.done():
            waiter.cancel()


def _validate_generate(req: dict) -> tuple[list, dict | None]:
    contents = req.get("contents")
    if contents is None or contents == []:
        raise _Reply(*errors.invalid_argument("* GenerateContentRequest.contents: contents is not specified\n"))
    if not isinstance(contents, list):
        raise _Reply(*errors.invalid_argument(
            f"Invalid value at 'contents' (type.googleapis.com/google.ai.generativelanguage.v1beta.Content), "
            f"{orjson.dumps(contents).decode()[:80]}"))
    for i, c in enumerate(contents):
        if not isinstance(c, dict) or not isinstance(c.get("parts", []), list):
            raise _Reply(*errors.invalid_argument(f"Invalid value at 'contents[{i}]': expected a Content object."))
        if not c.get("parts"):
            raise _Reply(*errors.invalid_argument(
                f"* GenerateContentRequest.contents[{i}].parts: contents.parts must not be empty.\n"))
        for j, part in enumerate(c["parts"]):
            if not isinstance(part, dict):
                raise _Reply(*errors.invalid_argument(f"Invalid value at 'contents[{i}].parts[{j}]'."))
            if "text" in part and not isinstance(part["text"], str):
                raise _Reply(*errors.invalid_argument(
                    f"Invalid value at 'contents[{i}].parts[{j}].text' (TYPE_STRING)."))
        role = c.get("role")
        if role is not None and role not in ("user", "model", "function", "tool"):
            raise _Reply(*errors.invalid_argument(
                f"Please use a valid role: user, model. (contents[{i}].role = {role!r})"))
    system = req.get("systemInstruction", req.get("system_instruction"))
    if system is not None and not isinstance(system, dict):
        raise _Reply(*errors.invalid_argument("Invalid value at 'system_instruction': expected a Content object."))
    gen = req.get("generationConfig")
    if gen is not None and not isinstance(gen, dict):
        raise _Reply(*errors.invalid_argument("Invalid value at 'generation_config': expected an object."))
    return contents, system


def _system_text(system: dict | None) -> str | None:
    """All text parts of the systemInstruction, joined by newlines (None when there is none)."""
    if system is None:
        return None
    parts = system.get("parts")
    if not isinstance(parts, list):
        return None
    texts = [p["text"] for p in parts if isinstance(p, dict) and isinstance(p.get("text"), str)]
    return "\n".join(texts) or None


def _prompt_text(contents: list) -> str:
    """The text the model answers: the last user turn (all text if no user turn)."""
    for c in reversed(contents):
        if c.get("role", "user") == "user":
            texts = [p["text"] for p in c["parts"] if isinstance(p.get("text"), str)]
            if texts:
                return "\n".join(texts)
    return "\n".join(p["text"] for c in contents for p in c["parts"] if isinstance(p.get("text"), str))


class _JudgeAnswer:
    """The judge model's reply, shaped like generate.Answer where the app reads it."""
    __slots__ = ("text", "output_tokens", "matched_id")
    thoughts_tokens = 0

    def __init__(self, text: str, output_tokens: int, matched_id: str | None):
        self.text, self.output_tokens, self.matched_id = text, output_tokens, matched_id


def _function_call(req: dict) -> tuple[str, dict] | None:
    """(name, parameters) of the function a judge request asks to be called with its verdict
    (with_structured_output(method="function_calling") sends one declaration and mode ANY), else None."""
    tools = req.get("tools")
    if not isinstance(tools, list):
        return None
    decls = [d for t in tools if isinstance(t, dict)
             for d in (t.get("functionDeclarations") or t.get("function_declarations") or [])
             if isinstance(d, dict) and isinstance(d.get("name"), str)]
    if not decls:
        return None
    fcc = ((req.get("toolConfig") or {}).get("functionCallingConfig") or {}) \
        if isinstance(req.get("toolConfig"), dict) else {}
    allowed = fcc.get("allowedFunctionNames") if isinstance(fcc, dict) else None
    if isinstance(allowed, list) and allowed:
        decls = [d for d in decls if d["name"] in allowed] or decls
    d = decls[0]
    params = d.get("parameters", d.get("parametersJsonSchema"))
    return d["name"], params if isinstance(params, dict) else {}


def _truncate(text: str, max_tokens: int) -> str:
    out, n = [], 0
    for piece in split_tokens(text):
        k = count_tokens(piece)
        if n + k > max_tokens:
            break
        out.append(piece)
        n += k
    return "".join(out)


def create_app(**config: Any) -> Simulator:
    return Simulator(**config)
