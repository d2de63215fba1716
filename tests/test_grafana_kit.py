"""coursekit/grafana.py, and step 04's monitoring files checked with the real tools.

Offline: loading (Korean errors with line/column), panel listing (rows flattened, hidden targets
skipped), variable rendering, dashboard problems, PromQL syntax through promtool.
Online (real Prometheus 2.42 from Debian, skipped with a Korean note where absent, failed under
COURSE_REQUIRE_TOOLS=1): a prometheus_client app exporting the step 04 metric contract's names
is scraped every 1 s with the solution's alerts.yml loaded, and every panel of the solution's
dashboard must answer data; a query Prometheus rejects becomes an error row, not an exception.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest
import yaml
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
)

from coursekit import REPO_ROOT, grafana
from coursekit import prometheus as kp

MONITORING = REPO_ROOT / "solutions" / "04-monitoring" / "monitoring"
DASHBOARD = MONITORING / "grafana" / "dashboards" / "llm-chat.json"
LLM_BUCKETS = tuple(0.01 * 2**i for i in range(14))  # 0.01 .. 81.92 s
TOKEN_BUCKETS = tuple(4.0**i for i in range(14))  # 1, 4, 16, ... 67108864


def _dash(*panels, schema=39, **extra):
    return {"title": "t", "schemaVersion": schema, "panels": list(panels), **extra}


def _panel(title, *exprs, uid="prometheus", ptype="timeseries", **extra):
    return {"title": title, "type": ptype, "datasource": {"type": "prometheus", "uid": uid},
            "targets": [{"refId": chr(65 + i), "expr": e} for i, e in enumerate(exprs)], **extra}


# --------------------------------------------------------------------------- offline
def test_load_reports_broken_json_in_korean_with_position(tmp_path):
    bad = tmp_path / "d.json"
    bad.write_text('{\n  "title": "x",\n  "panels": [,]\n}', encoding="utf-8")
    with pytest.raises(grafana.GrafanaError, match=r"올바른 JSON 이 아닙니다: 3번째 줄 14번째 칸"):
        grafana.load(bad)
    with pytest.raises(grafana.GrafanaError, match="없습니다"):
        grafana.load(tmp_path / "missing.json")
    (tmp_path / "list.json").write_text("[]", encoding="utf-8")
    with pytest.raises(grafana.GrafanaError, match="JSON 객체"):
        grafana.load(tmp_path / "list.json")
    # the HTTP API's {"dashboard": {...}} wrapper is unwrapped
    (tmp_path / "api.json").write_text(json.dumps({"dashboard": _dash(_panel("a", "up"))}), encoding="utf-8")
    assert [p.title for p in grafana.panels(tmp_path / "api.json")] == ["a"]


def test_panels_flatten_rows_skip_hidden_targets_and_unpack_as_title_and_exprs():
    dash = _dash(
        {"type": "row", "title": "접힌 행", "collapsed": True,
         "panels": [_panel("안쪽", "sum(rate(a_total[$__rate_interval]))")]},
        _panel("바깥", "b", "c"),
        {"type": "text", "title": "설명", "options": {"content": "안녕"}},
    )
    dash["panels"][1]["targets"].append({"refId": "Z", "expr": "hidden", "hide": True})
    found = grafana.panels(dash)
    assert [(title, exprs) for title, exprs in found] == [
        ("안쪽", ["sum(rate(a_total[$__rate_interval]))"]), ("바깥", ["b", "c"]), ("설명", [])]
    assert found[1].datasources == ("prometheus",)
    assert [p.title for p in grafana.panels_using(dash, "a_total")] == ["안쪽"]
    assert grafana.panels_using(dash, "a_tota") == []  # whole names only


def test_render_substitutes_grafana_variables():
    assert grafana.render("rate(x_total[$__rate_interval])") == "rate(x_total[1m])"
    assert grafana.render("rate(x_total[${__rate_interval}])", rate_interval="30s") == "rate(x_total[30s])"
    assert grafana.render("increase(x_total[$__range]) / $__range_s", range="2h") == "increase(x_total[2h]) / 7200"
    assert grafana.render("avg_over_time(g[$__interval]) $__interval_ms [[__interval]]", interval="15s") == \
        "avg_over_time(g[15s]) 15000 15s"
    assert grafana.render('x{model="$model"}', variables={"model": "m1"}) == 'x{model="m1"}'
    with pytest.raises(grafana.GrafanaError, match=r"\$model 을\(를\) 바꿀 값이 없습니다"):
        grafana.render('x{model="$model"}')
    with pytest.raises(grafana.GrafanaError, match="기간 '1x'"):
        grafana.render("x", rate_interval="1x")


def test_problems_name_each_defect_in_korean():
    assert grafana.problems(_dash(_panel("a", "up"))) == []
    found = grafana.problems(_dash(_panel("a", "up", uid="PBFA97CFB590B2093"), _panel("b"), _panel("b", "up"),
                                   schema=36, title=""))
    assert any("schemaVersion 이 36" in p for p in found), found
    assert any("제목(title)이 없습니다" in p for p in found), found
    assert any("'a' 의 데이터소스 uid" in p and "'prometheus'" in p for p in found), found
    assert any("'b' 에 PromQL 쿼리" in p for p in found), found
    assert any("'b' 이(가) 2번" in p for p in found), found
    assert grafana.problems(_dash()) == ["패널이 하나도 없습니다."]


def test_check_syntax_names_the_panel_query():
    kp.require_tools("promtool", reason="대시보드 쿼리 문법 검사")
    good = grafana.check_syntax(_dash(_panel("a", "sum(rate(x_total[$__rate_interval]))")))
    assert good.ok, good.summary()
    bad = grafana.check_syntax(_dash(_panel("a", "up"), _panel("b", "up", "sum(rate(x_total[5m])")))
    assert not bad.ok
    assert "panel_2_2" in bad.output and "unclosed left parenthesis" in bad.output, bad.output
    assert bad.summary().startswith("대시보드 쿼리 문법 (promtool check rules): 실패")


def test_solution_dashboard_is_valid_with_one_panel_per_signal():
    dash = grafana.load(DASHBOARD)
    assert grafana.problems(dash) == []
    assert dash["schemaVersion"] >= 39
    required = {  # signal -> a metric its panel must query
        "latency": "http_server_request_duration_seconds_bucket",
        "rps": "http_server_request_duration_seconds_count",
        "errors by kind": "gen_ai_client_operation_duration_seconds_count",
        "tokens": "gen_ai_client_token_usage_sum",
        "cost": "llm_cost_usd_total",
        "feedback": "llm_feedback_total",
        "judge": "llm_judge_score_sum",
        "refusals": "llm_answers_total",
        "drift": "llm_input_drift_psi",
    }
    for signal, metric in required.items():
        assert grafana.panels_using(dash, metric), f"{signal}: no panel queries {metric}"
    latency = grafana.panels_using(dash, "http_server_request_duration_seconds_bucket")[0]
    assert [e.split(",")[0] for e in latency.exprs] == [f"histogram_quantile({q}" for q in ("0.50", "0.95", "0.99")]
    if kp.find_tool("promtool"):
        result = grafana.check_syntax(dash)
        assert result.ok, result.summary()


# --------------------------------------------------------------------------- real Prometheus
class ContractApp:
    """A prometheus_client app exporting step 04's contract names (what S's service exports)."""

    def __init__(self):
        r = self.registry = CollectorRegistry()
        self.http = Histogram("http_server_request_duration_seconds", "HTTP",
                              ["http_route", "http_request_method", "http_response_status_code"],
                              buckets=LLM_BUCKETS, registry=r)
        self.op = Histogram("gen_ai_client_operation_duration_seconds", "LLM 호출",
                            ["gen_ai_operation_name", "gen_ai_request_model", "error_type"],
                            buckets=LLM_BUCKETS, registry=r)
        self.tokens = Histogram("gen_ai_client_token_usage", "토큰", ["gen_ai_token_type", "gen_ai_request_model"],
                                buckets=TOKEN_BUCKETS, registry=r)
        self.cost = Counter("llm_cost_usd", "비용", ["gen_ai_request_model"], registry=r)
        self.answers = Counter("llm_answers", "답변", ["gen_ai_request_model", "refused"], registry=r)
        self.feedback = Counter("llm_feedback", "피드백", ["rating"], registry=r)
        self.judge = Histogram("llm_judge_score", "판정", ["gen_ai_request_model"], buckets=(1, 2, 3, 4, 5), registry=r)
        self.psi = Gauge("llm_input_drift_psi", "PSI", registry=r)
        self.server, self.thread = start_http_server(0, addr="127.0.0.1", registry=r)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    def traffic(self, n: int, rng: random.Random) -> None:
        model = "gemini-3.5-flash"
        for i in range(n):
            seconds = rng.lognormvariate(0, 0.5)
            failed = i % 10 == 0
            code = "503" if failed else "200"
            self.http.labels("/chat", "POST", code).observe(seconds)
            self.op.labels("chat", model, "upstream_error" if failed else "").observe(seconds)
            if failed:
                continue
            self.tokens.labels("input", model).observe(40)
            self.tokens.labels("output", model).observe(120)
            self.cost.labels(model).inc((40 * 0.3 + 120 * 2.5) / 1e6)
            self.answers.labels(model, "true" if i % 7 == 0 else "false").inc()
            self.feedback.labels("down" if i % 4 == 0 else "up").inc()
            self.judge.labels(model).observe(rng.choice((3, 4, 5)))
        self.psi.set(0.12)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def prom():
    kp.require_tools("prometheus", "promtool", reason="대시보드 패널을 실제 Prometheus 에서 평가합니다")
    app = ContractApp()
    config = kp.prometheus_config({"llm-chat": [app.target]}, rule_files=["alerts.yml"])
    server = kp.Prometheus(config, files={"alerts.yml": (MONITORING / "alerts.yml").read_text(encoding="utf-8")})
    with server:
        server.wait_for_targets(job="llm-chat")
        rng = random.Random(13)
        for _ in range(3):  # three scrapes apart, so rate() has points to work with
            app.traffic(60, rng)
            server.wait_for_targets(job="llm-chat")
        yield server
    app.stop()


def test_every_solution_panel_answers_data_on_a_real_prometheus(prom):
    began = time.monotonic()
    results = grafana.evaluate(DASHBOARD, prom, rate_interval="1m")
    took = time.monotonic() - began
    print(f"\n{grafana.summary(results)}\n[측정] 쿼리 {len(results)}개 평가: {took:.2f}s")
    assert len(results) == sum(len(p.exprs) for p in grafana.panels(DASHBOARD))
    assert [r for r in results if not r.ok] == []
    by_title = {r.title: r for r in results}
    share = by_title["에러율 (/chat 5xx 비율, LLM 호출 오류 종류별)"]
    assert float(share.result[0]["value"][1]) == pytest.approx(0.1, abs=0.02)  # 1 in 10 failed
    # the rules loaded and evaluated without errors (alerts.yml against the contract's names)
    health = [(r["name"], r["health"], r.get("lastError", "")) for g in prom.rules() for r in g["rules"]]
    assert len(health) == 5 and all(h == "ok" for _, h, _ in health), health


def test_range_evaluation_counts_points(prom):
    prom.wait_for_targets(job="llm-chat", scrapes=3)  # rate() needs two points at start as well
    end = time.time()
    results = grafana.evaluate(_dash(_panel("rps", "sum(rate(http_server_request_duration_seconds_count[$__rate_interval]))")),
                               prom, start=end - 2, end=end, step=1)
    assert results[0].series == 1 and results[0].values == 3


def test_rejected_and_empty_queries_are_rows_not_exceptions(prom):
    results = grafana.evaluate(_dash(_panel("깨짐", "sum(rate(x_total[1m])"), _panel("없는 메트릭", "no_such_metric_total"),
                                     _panel("변수", 'up{model="$model"}')), prom)
    broken, empty, unknown = results
    assert broken.status == "오류" and "bad_data" in broken.error
    assert empty.status == "데이터 없음" and empty.error is None and not empty.ok
    assert "$model" in unknown.error
    text = grafana.summary(results)
    assert text.startswith("패널 쿼리 3개: 데이터 있음 0, 데이터 없음 1, 오류 2"), text


# --------------------------------------------------------------------------- the other monitoring files
def test_solution_monitoring_files_pass_the_real_tools():
    kp.require_tools("promtool", "amtool", reason="단계 04 모니터링 설정 검사")
    for result in (kp.check_config(MONITORING / "prometheus.yml"), kp.check_rules(MONITORING / "alerts.yml"),
                   kp.test_rules(MONITORING / "alerts_test.yml"),
                   kp.amtool_check_config(MONITORING / "alertmanager.yml")):
        assert result.ok, result.summary()
    rules = yaml.safe_load((MONITORING / "alerts.yml").read_text(encoding="utf-8"))["groups"][0]["rules"]
    assert {r["alert"] for r in rules} == {"LLMHighErrorRate", "LLMHighLatencyP95", "LLMCostBudgetExceeded",
                                           "LLMQualityDrop", "LLMInputDrift"}
    for r in rules:
        assert r["labels"]["severity"] in ("critical", "warning", "info")
        assert {"summary", "runbook_url"} <= set(r["annotations"])
        assert "_sum" not in r["expr"] or r["alert"] == "LLMQualityDrop", r["alert"]  # means only for quality


def test_datasource_uids_from_provisioning(tmp_path):
    assert grafana.datasource_uids(MONITORING / "grafana/provisioning/datasources/prometheus.yml") == ["prometheus"]
    starter = tmp_path / "ds.yml"
    starter.write_text("apiVersion: 1\n\ndatasources:\n  # TODO 19\n", encoding="utf-8")
    assert grafana.datasource_uids(starter) == []
    starter.write_text("datasources:\n  - {name: P, type: prometheus, uid: other}\n  - {type: loki, uid: l}\n")
    assert grafana.datasource_uids(starter) == ["other"]
    problems = grafana.problems(DASHBOARD, datasource_uid="other")
    assert len(problems) == len(grafana.panels(DASHBOARD)) and "'other'" in problems[0], problems
    starter.write_text("datasources: [\n", encoding="utf-8")
    with pytest.raises(grafana.GrafanaError, match="올바른 YAML 이 아닙니다"):
        grafana.datasource_uids(starter)
    with pytest.raises(grafana.GrafanaError, match="없습니다"):
        grafana.datasource_uids(tmp_path / "none.yml")


def test_grafana_provisioning_points_at_the_dashboard():
    providers = yaml.safe_load((MONITORING / "grafana/provisioning/dashboards/dashboards.yml").read_text(encoding="utf-8"))
    path = Path(providers["providers"][0]["options"]["path"])
    compose = yaml.safe_load((MONITORING / "compose.yaml").read_text(encoding="utf-8"))
    mounts = compose["services"]["grafana"]["volumes"]
    # the provider's folder inside the container is the mount of grafana/dashboards (read-only)
    assert any(m.startswith("./grafana/dashboards:") and m.split(":")[1] == str(path) and m.endswith(":ro")
               for m in mounts), mounts
