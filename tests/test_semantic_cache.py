"""coursekit.semantic_cache: the step 06 lesson's measurement of a semantic cache's false hits on the
knowledge base, with the real GoogleGenerativeAIEmbeddings against the simulator."""

from __future__ import annotations

import pytest

from coursekit import semantic_cache
from coursekit.simulator import knowledge


@pytest.fixture
def emb(sim):
    return semantic_cache.embeddings_client(sim.base_url, "sim-any-key")


@pytest.fixture
def rows(sim, emb):
    out = semantic_cache.measure(emb)
    s = sim.stats()["embeddings"]
    assert s["requests"] == 2 and s["texts"] == 36 + 72 + 8 + len(semantic_cache.NEAR_MISSES)
    return out


def test_table_shape(rows):
    assert [r["threshold"] for r in rows] == [None, *semantic_cache.THRESHOLDS]
    assert [r["method"] for r in rows] == ["exact"] + ["semantic"] * len(semantic_cache.THRESHOLDS)
    for r in rows:
        for k in ("hit_rate", "false_hit_rate", "false_hit_other_entry", "false_hit_out_of_kb",
                  "false_hit_near_miss", "paraphrase_wrong_entry"):
            assert 0.0 <= r[k] <= 1.0


def test_exact_match_has_no_false_hits_and_misses_every_paraphrase(rows):
    exact = rows[0]
    assert exact["false_hit_rate"] == exact["false_hit_near_miss"] == 0.0
    assert exact["hit_rate"] == 0.0


def test_higher_threshold_fewer_hits_and_fewer_false_hits(rows):
    sem = rows[1:]
    for key in ("hit_rate", "false_hit_rate", "false_hit_near_miss"):
        values = [r[key] for r in sem]
        assert values == sorted(values, reverse=True), (key, values)


def test_the_risk_is_visible(rows):
    """Where the semantic cache catches paraphrases it also serves near-misses another entry's answer."""
    by = {r["threshold"]: r for r in rows[1:]}
    assert by[0.80]["hit_rate"] >= 0.95 and by[0.85]["hit_rate"] >= 0.8
    assert by[0.80]["false_hit_near_miss"] >= 0.8 and by[0.85]["false_hit_near_miss"] >= 0.5
    assert by[0.90]["false_hit_near_miss"] > by[0.90]["hit_rate"]     # no threshold separates them
    assert by[0.95]["hit_rate"] == 0.0
    # the KB's own questions of other entries and out-of-KB questions stay below 0.80
    assert by[0.80]["false_hit_other_entry"] <= 0.05 and by[0.80]["false_hit_out_of_kb"] == 0.0
    assert by[0.80]["paraphrase_wrong_entry"] == 0.0


def test_near_misses_are_new_questions_nearest_to_the_entry_they_resemble(emb):
    kb = {semantic_cache.exact_key(q) for e in knowledge.entries() for q in e.questions}
    cache = semantic_cache.SemanticCache(emb)
    firsts = [e.questions[0] for e in knowledge.entries()]
    for e, v in zip(knowledge.entries(), emb.embed_documents(firsts)):
        cache.add_vector(e.questions[0], e.answer, e.id, v)
    near = [q for q, _ in semantic_cache.NEAR_MISSES]
    nearest = [cache.nearest(v)[0].entry_id for v in emb.embed_documents(near)]
    assert all(semantic_cache.exact_key(q) not in kb for q in near)
    resembled = [eid for _, eid in semantic_cache.NEAR_MISSES]
    same = sum(a == b for a, b in zip(nearest, resembled))
    assert same >= len(near) - 2, list(zip(near, nearest))


def test_semantic_cache_lookup(emb, sim):
    cache = semantic_cache.SemanticCache(emb, threshold=0.80)
    cache.add("요금제는 어떻게 되나요?", knowledge.get("billing-plans").answer, "billing-plans")
    hit = cache.lookup("가격 정책 알려줘")
    assert hit is not None and hit[0].entry_id == "billing-plans" and 0.80 <= hit[1] < 1.0
    assert cache.lookup("오늘 날씨 어때?") is None
    wrong = cache.lookup("요금제를 변경하고 싶어요")       # a false hit: plan types answer a plan change
    assert wrong is not None and wrong[0].entry_id == "billing-plans"
    assert sim.stats()["embeddings"]["texts"] == 4


def test_client_from_environment(sim, monkeypatch):
    monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", sim.base_url)
    monkeypatch.setenv("GOOGLE_API_KEY", "sim-any-key")
    rows = semantic_cache.measure(thresholds=(0.85,))
    assert len(rows) == 2 and rows[1]["threshold"] == 0.85
