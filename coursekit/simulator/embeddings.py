"""The simulator's Gemini embedding API: `embedContent` and `batchEmbedContents`.

Wire format of the real client (langchain-google-genai 4.4.3 `GoogleGenerativeAIEmbeddings`
on google-genai 3.6.1, Gemini Developer API): `embed_query` and `embed_documents` both call
`client.models.embed_content`, which always sends

    POST /{v1beta|v1|v1alpha}/models/{model}:batchEmbedContents
    {"requests": [{"model": "models/{model}", "content": {"parts": [{"text": ...}], "role"?: "user"},
                   "taskType"?: ..., "title"?: ..., "outputDimensionality"?: n}, ...]}
    -> {"embeddings": [{"values": [float, ...]}, ...]}

and the REST method `embedContent` (one `content`, answer `{"embedding": {"values": [...]}}`) is
served too, for direct REST callers.

The vectors are deterministic functions of (model, text, dimension), normalized to length 1:

    v = normalize( sqrt(0.50) * common  +  sqrt(0.15) * surface  +  sqrt(0.35) * topic )

- `common`: one fixed pseudo-random direction per model and dimension. Real embedding models are
  anisotropic: even unrelated sentences of one language have cosine ~0.5-0.7, so useful cache
  thresholds live at 0.80-0.95, not at 0.3.
- `surface`: hashed words and character 2-/3-grams of the NFKC-normalized, casefolded text
  (signed feature hashing). Same words -> close, whatever the intent.
- `topic`: the knowledge base's own matcher (`knowledge.search`, bigrams + keywords) stands in
  for what a trained model knows: "가격 정책" and "요금제 종류" are about the same thing. Questions
  outside the knowledge base get no topic (only common + surface).

So paraphrases of one FAQ entry are close (cosine ~0.83-0.90), different entries and unrelated
questions are far (~0.5-0.7), and near-misses -- the same words with a different intent
("요금제를 변경하고 싶어요" next to "요금제는 어떻게 되나요?") -- are ALSO close (~0.77-0.96): the
realistic risk of a semantic cache. `taskType` and `title` are accepted and ignored (a real model
gives slightly different vectors per task type). Fault injection, quotas and latency do not apply.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
import unicodedata
from functools import lru_cache

import orjson

from . import errors, knowledge

__all__ = ["ACTIONS", "MODELS", "embed", "new_counters", "respond"]

ACTIONS = ("embedContent", "batchEmbedContents")
# model -> default (and largest) output dimension
MODELS: dict[str, int] = {
    "gemini-embedding-001": 3072,
    "gemini-embedding-2-preview": 3072,
    "text-embedding-004": 768,
}
MAX_BATCH = 100            # requests per batchEmbedContents call (the real API's limit)
MAX_TEXT_CHARS = 40_000    # about the real 2,048-token input limit, in characters, generously

_COMMON, _SURFACE, _TOPIC = 0.50, 0.15, 0.35      # squared weights of the three parts (sum 1)
_TOPIC_FLOOR = 0.30        # knowledge.search score below which a text has no topic
_TOPIC_FULL = 0.35         # score above the floor at which the topic counts fully
_TOPIC_TEMP = 0.08         # softmax temperature over the 5 best entries' scores
_WORD = re.compile(r"[0-9a-z\uac00-\ud7a3\u3130-\u318f]+")


def new_counters() -> dict:
    """The `embeddings` block of /_sim/stats: answered requests, texts embedded (by model), errors."""
    return {"requests": 0, "texts": 0, "errors": 0, "by_model": {}}


# ---- vectors -------------------------------------------------------------------------
def _bucket(feature: str, model: str, dim: int) -> tuple[int, float]:
    h = int.from_bytes(hashlib.blake2b(feature.encode(), digest_size=8, key=model.encode()[:64]).digest(),
                       "little")
    return h % dim, (1.0 if h >> 63 else -1.0)


@lru_cache(maxsize=4096)
def _direction(name: str, model: str, dim: int) -> tuple[float, ...]:
    """A pseudo-random unit vector (dense, so two directions are nearly orthogonal: no bucket collisions)."""
    rng = random.Random(f"{name}:{model}:{dim}")
    v = [rng.gauss(0.0, 1.0) for _ in range(dim)]
    n = math.sqrt(sum(x * x for x in v))
    return tuple(x / n for x in v)


def _features(text: str) -> dict[str, float]:
    feats: dict[str, float] = {}
    for w in _WORD.findall(unicodedata.normalize("NFKC", text).casefold()):
        feats["w:" + w] = feats.get("w:" + w, 0.0) + 1.0
        p = f"<{w}>"
        for n in (2, 3):
            for i in range(len(p) - n + 1):
                g = "g:" + p[i:i + n]
                feats[g] = feats.get(g, 0.0) + 1.0
    return feats


def _add_unit(out: list[float], parts: dict[int, float], weight: float) -> None:
    n = math.sqrt(sum(x * x for x in parts.values()))
    if n:
        for i, x in parts.items():
            out[i] += weight * x / n


@lru_cache(maxsize=4096)
def embed(text: str, model: str = "gemini-embedding-001", dim: int | None = None) -> tuple[float, ...]:
    """The simulator's embedding of `text` (length 1). Same input, same vector, on every machine."""
    model = model.removeprefix("models/")
    dim = dim or MODELS.get(model, 768)
    out = [math.sqrt(_COMMON) * x for x in _direction("common", model, dim)]
    surface: dict[int, float] = {}
    for feat, count in _features(text).items():
        i, sign = _bucket(feat, model, dim)
        surface[i] = surface.get(i, 0.0) + sign * math.sqrt(count)
    _add_unit(out, surface, math.sqrt(_SURFACE))
    top = knowledge.search(text, k=5) if text.strip() else ()
    if top and top[0][1] > _TOPIC_FLOOR:
        best = top[0][1]
        confidence = min(1.0, (best - _TOPIC_FLOOR) / _TOPIC_FULL)
        topic = [0.0] * dim
        for entry, s in top:
            w = math.exp((s - best) / _TOPIC_TEMP)
            for i, x in enumerate(_direction("topic:" + entry.id, model, dim)):
                topic[i] += w * x
        _add_unit(out, dict(enumerate(topic)), math.sqrt(_TOPIC) * confidence)
    n = math.sqrt(sum(x * x for x in out))
    return tuple(x / n for x in out)


# ---- HTTP ----------------------------------------------------------------------------
class _Bad(Exception):
    def __init__(self, status: int, body: bytes):
        self.status, self.body = status, body


def _text(content, where: str) -> str:
    if content is None:
        raise _Bad(*errors.invalid_argument(f"* {where}: content is not specified\n"))
    if not isinstance(content, dict) or not isinstance(content.get("parts", []), list):
        raise _Bad(*errors.invalid_argument(
            f"Invalid value at '{where}' (type.googleapis.com/google.ai.generativelanguage.v1beta.Content)"))
    parts = content.get("parts") or []
    if not parts:
        raise _Bad(*errors.invalid_argument(f"* {where}.parts: contents.parts must not be empty.\n"))
    texts = []
    for j, p in enumerate(parts):
        if not isinstance(p, dict) or ("text" in p and not isinstance(p["text"], str)):
            raise _Bad(*errors.invalid_argument(f"Invalid value at '{where}.parts[{j}].text' (TYPE_STRING)."))
        if isinstance(p.get("text"), str):
            texts.append(p["text"])
    text = "\n".join(texts)
    if not text.strip():
        raise _Bad(*errors.invalid_argument(f"* {where}.parts: text must not be empty.\n"))
    if len(text) > MAX_TEXT_CHARS:
        raise _Bad(*errors.invalid_argument(
            f"* {where}: input is too long ({len(text)} characters, at most {MAX_TEXT_CHARS})."))
    return text


def _dimension(value, model: str, where: str) -> int:
    top = MODELS[model]
    if value is None:
        return top
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= top:
        raise _Bad(*errors.invalid_argument(
            f"* {where}.output_dimensionality: must be an integer between 1 and {top} for models/{model}, "
            f"got {orjson.dumps(value).decode()}.\n"))
    return value


def _one(req, model: str, where: str) -> tuple[str, int]:
    if not isinstance(req, dict):
        raise _Bad(*errors.invalid_argument(f"Invalid value at '{where}': expected an EmbedContentRequest."))
    cfg = req.get("embedContentConfig") if isinstance(req.get("embedContentConfig"), dict) else {}
    dim = req.get("outputDimensionality", req.get("output_dimensionality", cfg.get("outputDimensionality")))
    return _text(req.get("content"), f"{where}.content"), _dimension(dim, model, where)


def respond(counters: dict, version: str, model: str, action: str, raw: bytes | None) -> tuple[int, bytes]:
    """(status, body) for one embedContent / batchEmbedContents call; counts into `counters`."""
    try:
        name = model.removeprefix("models/")
        if name not in MODELS:
            raise _Bad(*errors.not_found(
                f"models/{name} is not found for API version {version}, or is not supported for {action}. "
                f"Call ListModels to see the list of available models and their supported methods."))
        if raw is None:
            raise _Bad(*errors.invalid_argument("Request payload size exceeds the limit: 20971520 bytes."))
        try:
            req = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise _Bad(*errors.invalid_json(str(exc))) from None
        if not isinstance(req, dict):
            raise _Bad(*errors.invalid_json("Request body must be a JSON object."))
        if action == "embedContent":
            jobs = [_one(req, name, "EmbedContentRequest")]
        else:
            reqs = req.get("requests")
            if not isinstance(reqs, list) or not reqs:
                raise _Bad(*errors.invalid_argument(
                    "* BatchEmbedContentsRequest.requests: requests is not specified\n"))
            if len(reqs) > MAX_BATCH:
                raise _Bad(*errors.invalid_argument(
                    f"* BatchEmbedContentsRequest.requests: at most {MAX_BATCH} requests can be in one batch.\n"))
            jobs = []
            for i, r in enumerate(reqs):
                where = f"BatchEmbedContentsRequest.requests[{i}]"
                inner = r.get("model") if isinstance(r, dict) else None
                if inner is not None and str(inner).removeprefix("models/") != name:
                    raise _Bad(*errors.invalid_argument(
                        f"* {where}.model: the model of every request must be models/{name} "
                        f"(the model in the URL), got {inner}.\n"))
                jobs.append(_one(r, name, where))
    except _Bad as bad:
        counters["errors"] += 1
        return bad.status, bad.body
    vectors = [{"values": [round(x, 9) for x in embed(text, name, dim)]} for text, dim in jobs]
    counters["requests"] += 1
    counters["texts"] += len(vectors)
    counters["by_model"][name] = counters["by_model"].get(name, 0) + len(vectors)
    body = {"embedding": vectors[0]} if action == "embedContent" else {"embeddings": vectors}
    return 200, orjson.dumps(body)
