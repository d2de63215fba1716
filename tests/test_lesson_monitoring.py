"""The step 04 lesson kit (`coursekit.lesson_monitoring`): Prometheus's histogram_quantile in Python
(checked against a real Prometheus), the demo service faq-widget (metric names, vote validation,
cost = tokens x its dated price table), the Locust runner with timed faults, and cleanup by PID."""

from __future__ import annotations

import math
import time
import tomllib

import httpx
import pytest
from prometheus_client import CollectorRegistry, Histogram, start_http_server

from coursekit import lesson
from coursekit import lesson_monitoring as lm
from coursekit import prometheus as kp
from coursekit.simulator.models import price_for


def test_histogram_quantile_rules():
    bounds = [1, 2, 4]
    # 10 observations: 5 in (0,1], 3 in (1,2], 2 in +Inf
    obs = [0.5] * 5 + [1.5] * 3 + [9.0] * 2
    assert lm.bucket_counts(bounds, obs) == [5, 8, 8, 10]
    assert lm.histogram_quantile(0.5, bounds, obs) == pytest.approx(1.0)   # rank 5 = top of bucket 1
    assert lm.histogram_quantile(0.65, bounds, obs) == pytest.approx(1.5)  # halfway through (1, 2]
    assert lm.histogram_quantile(0.95, bounds, obs) == 4                   # +Inf bucket: highest finite bound
    assert lm.histogram_quantile(0.2, bounds, obs) == pytest.approx(0.4)   # first bucket starts at 0
    assert math.isnan(lm.histogram_quantile(0.5, bounds, []))
    assert lm.exact_quantile(0.95, list(range(1, 101))) == 95


def test_histogram_quantile_matches_a_real_prometheus():
    kp.require_tools("prometheus", reason="lm.histogram_quantile 을 진짜 Prometheus 와 비교")
    sample = lm.latency_sample("gemini-3.5-flash-thinking", n=400, seed=3, scale=3.0)
    registry = CollectorRegistry()
    hist = Histogram("demo_latency_seconds", "lesson sample", buckets=lm.DEFAULT_BUCKETS, registry=registry)
    for x in sample:
        hist.observe(x)
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        with kp.Prometheus(kp.prometheus_config({"demo": [f"127.0.0.1:{server.server_port}"]})) as prom:
            prom.wait_for_targets(timeout=30)
            for q in (0.5, 0.9, 0.95, 0.99):
                theirs = prom.value(f"histogram_quantile({q}, sum by (le) (demo_latency_seconds_bucket))")
                assert lm.histogram_quantile(q, lm.DEFAULT_BUCKETS, sample) == pytest.approx(theirs, rel=1e-9), q
    finally:
        server.shutdown()
        thread.join(timeout=5)


def test_demo_price_table_matches_the_kit_table():
    table = tomllib.loads((lm.DEMO_SOURCE / "prices.toml").read_text(encoding="utf-8"))
    assert table["as_of"] == tomllib.loads((lm.DEMO_SOURCE.parent / "models.toml").read_text(encoding="utf-8"))["source_date"]
    for model, row in table["models"].items():
        p = price_for(model)
        assert (row["input_usd_per_1m"], row["output_usd_per_1m"]) == (p.input_usd_per_1m, p.output_usd_per_1m), model


def test_widget_metrics_votes_and_cost(own_sim):
    widget = lm.start_widget({"WIDGET_JUDGE_SAMPLE": "1.0"})
    with httpx.Client(base_url=widget.url, headers={"X-API-Key": lm.WIDGET_KEY}, timeout=30) as c:
        assert httpx.get(widget.url + "/metrics").status_code == 200       # no key for /metrics
        assert httpx.post(widget.url + "/ask", json={"q": "x"}).status_code == 401
        own_sim.reset()
        rid = c.post("/ask", json={"q": "요금제가 어떻게 돼요?"}).json()["reply_id"]
        time.sleep(0.5)  # the background judge
        m = lm.scrape(widget.url)
        for name in ("http_server_request_duration_seconds_bucket", "gen_ai_client_operation_duration_seconds_bucket",
                     "gen_ai_client_token_usage_bucket", "widget_cost_usd_total", "widget_replies_total",
                     "widget_judge_score_count", "widget_input_drift_psi"):
            assert m.names(name), name
        les = {float(l["le"]) for l in m.series("http_server_request_duration_seconds_bucket")} - {math.inf}
        assert sorted(les) == list(lm.GENAI_BUCKETS)
        for model, t in own_sim.stats()["tokens_by_model"].items():
            p = price_for(model)
            expected = (t["input"] * p.input_usd_per_1m + (t["output"] + t["thoughts"]) * p.output_usd_per_1m) / 1e6
            assert m.value("widget_cost_usd_total", gen_ai_request_model=model) == pytest.approx(expected, rel=1e-9)
        codes = [c.post("/votes", json=b).status_code for b in (
            {"reply_id": rid, "helpful": True, "extra": 1}, {"reply_id": rid, "helpful": True, "stars": 6},
            {"reply_id": "0" * 32, "helpful": True}, {"reply_id": rid, "helpful": True, "stars": 4},
            {"reply_id": rid, "helpful": False})]
        assert codes == [422, 422, 404, 200, 409]
        assert lm.scrape(widget.url).value("widget_votes_total") == 1


def test_load_counts_and_restores_faults(own_sim):
    widget = lm.start_widget({"WIDGET_JUDGE_SAMPLE": "0"})
    before = own_sim.config()
    run = lm.load(widget.url, users=4, seconds=6, faults=[(2, 4, {"error_503_rate": 1.0})])
    assert own_sim.config() == before, "load() must put the simulator configuration back"
    assert len(run.faults) == 1 and run.faults[0][2] == {"error_503_rate": 1.0}
    ask = run.by_name["POST /ask"]
    served = lm.scrape(widget.url).value("http_server_request_duration_seconds_count", http_route="/ask")
    assert ask["failures"] > 0 and ask["requests"] > ask["failures"]
    assert 0 <= served - ask["requests"] <= 4   # at most the requests in flight when Locust stopped
    assert 0 < ask["p50"] <= ask["p95"] <= ask["p99"]


def test_prometheus_alerting_and_cleanup_stop_everything(own_sim):
    kp.require_tools("prometheus", "alertmanager", reason="레슨 키트의 Prometheus/Alertmanager")
    widget = lm.start_widget({"WIDGET_JUDGE_SAMPLE": "0"})
    prom = lm.start_prometheus({"faq-widget": widget})
    hook, am = lm.start_alerting()
    lm.enable_alerting(prom, {"groups": [{"name": "t", "rules": [{"alert": "Always", "expr": "vector(1)", "for": "1s"}]}]},
                       am.address)
    assert hook.wait_for_alert("Always", timeout=30) is not None
    pids = [prom.pid, am.pid, widget.pid]
    lesson.cleanup()
    assert not kp.running()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            import os
            os.kill(pid, 0)
