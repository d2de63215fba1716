"""The real GoogleGenerativeAIEmbeddings (langchain-google-genai 4.4.3 / google-genai 3.6.1) against the
simulator's embedding API (coursekit/simulator/embeddings.py): wire format, vectors, errors, counters."""

from __future__ import annotations

import asyncio
import math

import httpx
import pytest
from langchain_google_genai import GoogleGenerativeAIEmbeddings
from langchain_google_genai._common import GoogleGenerativeAIError

from coursekit.simulator import embeddings, knowledge

KEY = {"x-goog-api-key": "sim-any-key", "content-type": "application/json"}


def client(sim, model="gemini-embedding-001", **kw):
    return GoogleGenerativeAIEmbeddings(model=model, base_url=sim.base_url, api_key="sim-any-key", **kw)


def cos(a, b):
    return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


@pytest.mark.parametrize("model,dim", [("gemini-embedding-001", 3072), ("text-embedding-004", 768),
                                       ("gemini-embedding-2-preview", 3072)])
def test_real_client_gets_deterministic_unit_vectors(sim, model, dim):
    e = client(sim, model)
    q = e.embed_query("요금제는 어떻게 되나요?")
    docs = e.embed_documents(["요금제는 어떻게 되나요?", "가격 정책 알려줘"])
    assert len(q) == dim and len(docs) == 2 and all(len(v) == dim for v in docs)
    assert abs(math.sqrt(sum(x * x for x in q)) - 1.0) < 1e-6
    assert cos(q, docs[0]) > 0.999999                 # same text, same vector (query or document)
    assert q == client(sim, model).embed_query("요금제는 어떻게 되나요?")
    s = sim.stats()
    # the Developer-API client always uses batchEmbedContents (embed_query too)
    assert s["by_action"] == {"batchEmbedContents": 3}
    assert s["embeddings"] == {"requests": 3, "texts": 4, "errors": 0, "by_model": {model: 4}}
    assert s["requests_total"] == 3 and model not in s["by_model"]     # by_model: answering models only


def test_env_base_url_works_like_the_chat_client(sim, monkeypatch):
    monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", sim.base_url)
    monkeypatch.setenv("GOOGLE_API_KEY", "client-key")
    v = GoogleGenerativeAIEmbeddings(model="gemini-embedding-001").embed_query("API 키 만드는 법")
    assert len(v) == 3072 and sim.stats()["by_key"] == {"client-key": 1}


def test_async_and_output_dimensionality(sim):
    e = client(sim, output_dimensionality=256)
    vs = asyncio.run(e.aembed_documents(["a", "b", "c"]))
    assert [len(v) for v in vs] == [256, 256, 256]
    assert len(asyncio.run(e.aembed_query("요금제"))) == 256
    assert len(client(sim).embed_query("요금제", output_dimensionality=128)) == 128
    v = client(sim, output_dimensionality=768).embed_query("요금제")
    assert abs(math.sqrt(sum(x * x for x in v)) - 1.0) < 1e-6


def test_more_than_100_texts_are_split_by_the_client(sim):
    texts = [f"질문 {i}" for i in range(150)]
    assert len(client(sim, "text-embedding-004").embed_documents(texts)) == 150
    assert sim.stats()["embeddings"]["requests"] == 2     # langchain's batch size 100


def test_paraphrases_close_unrelated_far_near_misses_close_too(sim):
    """The property the semantic-cache lesson measures: cosine is high for paraphrases AND for
    near-misses (same words, different intent), low for unrelated questions."""
    e = client(sim, output_dimensionality=768)
    base, para, near, unrelated, other = e.embed_documents([
        "요금제는 어떻게 되나요?", "하늘클라우드 요금제 종류", "요금제를 변경하고 싶어요", "오늘 날씨 어때?",
        "API 키가 유출됐어요"])
    assert cos(base, para) >= 0.83
    assert cos(base, near) >= 0.83          # as close as a paraphrase: the false-hit risk
    assert cos(base, unrelated) <= 0.72
    assert cos(base, other) <= 0.72
    # every pair of variants of one entry is closer than any variant of another entry
    vecs = {(en.id, q): embeddings.embed(q, "gemini-embedding-001", 768)
            for en in knowledge.entries() for q in en.questions}
    same = [cos(a, b) for (i, qa), a in vecs.items() for (j, qb), b in vecs.items() if i == j and qa < qb]
    diff = [cos(a, b) for (i, qa), a in vecs.items() for (j, qb), b in vecs.items() if i < j]
    assert min(same) > max(diff), (min(same), max(diff))


def test_vectors_differ_between_models(sim):
    a = embeddings.embed("요금제", "gemini-embedding-001", 768)
    b = embeddings.embed("요금제", "text-embedding-004", 768)
    assert cos(a, b) < 0.9          # a cache must not mix vectors of two embedding models


def test_rest_embed_content_and_batch_shapes(sim):
    with httpx.Client(base_url=sim.base_url, headers=KEY) as http:
        r = http.post("/v1beta/models/gemini-embedding-001:embedContent",
                      json={"content": {"parts": [{"text": "요금제"}]}, "outputDimensionality": 8,
                            "taskType": "SEMANTIC_SIMILARITY"})
        assert r.status_code == 200 and len(r.json()["embedding"]["values"]) == 8
        r = http.post("/v1beta/models/text-embedding-004:batchEmbedContents", json={"requests": [
            {"model": "models/text-embedding-004", "content": {"parts": [{"text": "a"}, {"text": "b"}]}}]})
        assert r.status_code == 200 and len(r.json()["embeddings"][0]["values"]) == 768


@pytest.mark.parametrize("path,body,status,google", [
    ("/v1/models/nope-embedding:batchEmbedContents", {"requests": [{"content": {"parts": [{"text": "a"}]}}]},
     404, "NOT_FOUND"),
    ("/v1/models/gemini-3.5-flash:embedContent", {"content": {"parts": [{"text": "a"}]}}, 404, "NOT_FOUND"),
    ("/v1/models/gemini-embedding-001:embedContent", {}, 400, "INVALID_ARGUMENT"),
    ("/v1/models/gemini-embedding-001:embedContent", {"content": {"parts": [{"text": "  "}]}}, 400,
     "INVALID_ARGUMENT"),
    ("/v1/models/gemini-embedding-001:embedContent", {"content": {"parts": []}}, 400, "INVALID_ARGUMENT"),
    ("/v1/models/gemini-embedding-001:embedContent", {"content": {"parts": [{"text": 3}]}}, 400,
     "INVALID_ARGUMENT"),
    ("/v1/models/gemini-embedding-001:embedContent", {"content": {"parts": [{"text": "a"}]},
                                                      "outputDimensionality": 4000}, 400, "INVALID_ARGUMENT"),
    ("/v1/models/gemini-embedding-001:batchEmbedContents", {"requests": []}, 400, "INVALID_ARGUMENT"),
    ("/v1/models/gemini-embedding-001:batchEmbedContents",
     {"requests": [{"content": {"parts": [{"text": "a"}]}}] * 101}, 400, "INVALID_ARGUMENT"),
    ("/v1/models/gemini-embedding-001:batchEmbedContents",
     {"requests": [{"model": "models/text-embedding-004", "content": {"parts": [{"text": "a"}]}}]}, 400,
     "INVALID_ARGUMENT"),
])
def test_bad_requests_get_google_shaped_errors(sim, path, body, status, google):
    r = httpx.post(sim.base_url + path, json=body, headers=KEY)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == status and err["status"] == google and err["message"]
    s = sim.stats()
    assert s["embeddings"]["errors"] == 1 and s["embeddings"]["requests"] == 0
    assert s["by_status"] == {str(status): 1}


def test_broken_json_and_missing_or_invalid_key(sim):
    r = httpx.post(sim.base_url + "/v1/models/gemini-embedding-001:embedContent", content=b"{nope", headers=KEY)
    assert r.status_code == 400 and r.json()["error"]["status"] == "INVALID_ARGUMENT"
    r = httpx.post(sim.base_url + "/v1/models/gemini-embedding-001:embedContent",
                   json={"content": {"parts": [{"text": "a"}]}})
    assert r.status_code == 403 and r.json()["error"]["status"] == "PERMISSION_DENIED"
    sim.configure(valid_keys=["good-key"])
    with pytest.raises(GoogleGenerativeAIError, match="API key not valid"):
        client(sim).embed_query("a")


def test_real_client_raises_on_unknown_model_and_empty_text(sim):
    with pytest.raises(GoogleGenerativeAIError, match="NOT_FOUND"):
        client(sim, "gemini-3.5-flash").embed_query("요금제")
    with pytest.raises(GoogleGenerativeAIError, match="INVALID_ARGUMENT"):
        client(sim).embed_query("")
    assert sim.stats()["embeddings"]["errors"] == 2       # one attempt each: 4xx is not retried


def test_reset_zeroes_the_counters_and_chat_stays_unaffected(sim):
    client(sim).embed_documents(["a", "b"])
    assert sim.stats()["embeddings"]["texts"] == 2
    sim.reset()
    assert sim.stats()["embeddings"] == embeddings.new_counters()
    with httpx.Client(base_url=sim.base_url, headers=KEY) as http:
        r = http.post("/v1/models/gemini-3.5-flash:generateContent",
                      json={"contents": [{"parts": [{"text": "요금제는 어떻게 되나요?"}]}]})
        assert r.status_code == 200
    s = sim.stats()
    assert s["embeddings"]["requests"] == 0 and s["by_action"] == {"generateContent": 1}


def test_fault_injection_does_not_touch_embeddings(sim):
    sim.configure(error_503_rate=1.0)
    assert len(client(sim, "text-embedding-004").embed_query("요금제")) == 768
