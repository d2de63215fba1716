"""Helpers of the step 04 grader: reading a /metrics page, rewriting the learner's Prometheus,
alert and Alertmanager files for a graded run, and the grader's own (hidden) rule tests.

Nothing here reads the learner's folder by itself: the grader passes the texts in.
"""

from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from coursekit import prometheus as kp

JOB = "llm-chat"
ALERTS = ("LLMHighErrorRate", "LLMHighLatencyP95", "LLMCostBudgetExceeded", "LLMQualityDrop", "LLMInputDrift")
SEVERITIES = ("critical", "warning", "info")


# --------------------------------------------------------------------------- /metrics
@dataclass
class Family:
    name: str      # family name as the parser gives it (a counter's without _total)
    type: str
    samples: list  # prometheus_client Sample(name, labels, value, ...)


class MetricsPage:
    """One /metrics page parsed with prometheus_client's own parser."""

    def __init__(self, text: str):
        self.text = text
        self.families: dict[str, Family] = {}
        for fam in text_string_to_metric_families(text):
            self.families[fam.name] = Family(fam.name, fam.type, list(fam.samples))

    def samples(self, name: str) -> list:
        return [s for f in self.families.values() for s in f.samples if s.name == name]

    def sum(self, name: str, **labels: str) -> float:
        """Sum of the samples named `name` whose labels include `labels` (0.0 when none)."""
        return sum(s.value for s in self.samples(name)
                   if all(s.labels.get(k) == v for k, v in labels.items()))

    def by(self, name: str, label: str, **labels: str) -> dict[str, float]:
        out: dict[str, float] = {}
        for s in self.samples(name):
            if all(s.labels.get(k) == v for k, v in labels.items()):
                out[s.labels.get(label, "")] = out.get(s.labels.get(label, ""), 0.0) + s.value
        return out

    def series(self) -> set[tuple]:
        """Every (sample name, labels) pair: what Prometheus would store as series."""
        return {(s.name, tuple(sorted(s.labels.items()))) for f in self.families.values() for s in f.samples}

    def type_of(self, sample_name: str) -> str | None:
        for f in self.families.values():
            if any(s.name == sample_name for s in f.samples):
                return f.type
        return None

    def bucket_bounds(self, name: str) -> list[float]:
        """Finite `le` bounds of histogram `name` (`name_bucket` samples)."""
        les = {float(s.labels["le"]) for s in self.samples(f"{name}_bucket") if "le" in s.labels}
        return sorted(b for b in les if math.isfinite(b))

    def label_values(self) -> set[str]:
        return {v for f in self.families.values() for s in f.samples for v in s.labels.values()}


# --------------------------------------------------------------------------- config rewrites
def load_yaml(path: Path) -> tuple[Any, str | None]:
    """(document, None) or (None, Korean reason)."""
    if not path.is_file():
        return None, f"{path.name} 파일이 없습니다"
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        return None, f"{path.name} 이 올바른 YAML 이 아닙니다: {str(exc).splitlines()[0]}"
    if not isinstance(doc, dict):
        return None, f"{path.name} 의 최상위가 매핑이 아닙니다"
    return doc, None


def chat_job(config: dict) -> dict | None:
    for job in config.get("scrape_configs") or []:
        if isinstance(job, dict) and job.get("job_name") == JOB:
            return job
    return None


def graded_prometheus_config(config: dict | None, target: str, alertmanager: str | None,
                             rule_files: list[str]) -> dict:
    """The learner's prometheus.yml for a graded run: only job llm-chat, its targets -> the service,
    scrape and evaluation every 1 s, rule files -> the graded copies, Alertmanager -> the grader's.
    Without a usable llm-chat job the kit's own config with that job is used instead."""
    job = chat_job(config) if isinstance(config, dict) else None
    if job is None:
        return kp.prometheus_config({JOB: [target]}, rule_files=rule_files, alertmanager=alertmanager)
    job = copy.deepcopy(job)
    for key in ("scrape_interval", "scrape_timeout", "file_sd_configs", "dns_sd_configs", "kubernetes_sd_configs",
                "consul_sd_configs", "http_sd_configs", "docker_sd_configs"):
        job.pop(key, None)
    job["static_configs"] = [{"targets": [target]}]
    job.setdefault("metrics_path", "/metrics")
    cfg = kp.prometheus_config({}, rule_files=rule_files, alertmanager=alertmanager)
    cfg["scrape_configs"] = [job]
    return cfg


def rule_file_names(config: dict | None) -> list[str]:
    if not isinstance(config, dict):
        return []
    return [Path(str(p)).name for p in (config.get("rule_files") or [])]


def alert_rules(doc: Any) -> dict[str, dict]:
    """{alert name: rule} of a rule file document."""
    out: dict[str, dict] = {}
    if not isinstance(doc, dict):
        return out
    for group in doc.get("groups") or []:
        for rule in (group or {}).get("rules") or []:
            if isinstance(rule, dict) and "alert" in rule:
                out[str(rule["alert"])] = rule
    return out


def with_short_for(doc: dict, alert: str, duration: str) -> dict:
    """A copy of a rule file where `alert` waits `duration` instead of its own `for:`."""
    doc = copy.deepcopy(doc)
    for group in doc.get("groups") or []:
        for rule in (group or {}).get("rules") or []:
            if isinstance(rule, dict) and rule.get("alert") == alert:
                rule["for"] = duration
                rule.pop("keep_firing_for", None)
    return doc


def graded_alertmanager_config(doc: dict, webhook_url: str) -> tuple[dict, int]:
    """The learner's alertmanager.yml with every webhook URL -> the grader's receiver and the
    route's group_wait/group_interval -> 1 s. Returns (config, number of webhook_configs)."""
    doc = copy.deepcopy(doc)
    hooks = 0
    for receiver in doc.get("receivers") or []:
        for hook in (receiver or {}).get("webhook_configs") or []:
            if isinstance(hook, dict):
                hook.pop("url_file", None)
                hook["url"] = webhook_url
                hooks += 1

    def fast(route: dict) -> None:
        route["group_wait"] = "1s"
        route["group_interval"] = "1s"
        for sub in route.get("routes") or []:
            if isinstance(sub, dict):
                fast(sub)

    if isinstance(doc.get("route"), dict):
        fast(doc["route"])
    return doc, hooks


def route_reaches_webhook(doc: dict) -> bool:
    """Whether an alert with any name reaches a receiver with webhook_configs (the route's own
    receiver, or a sub-route matching by alertname / severity / everything)."""
    receivers = {r.get("name"): r for r in doc.get("receivers") or [] if isinstance(r, dict)}

    def has_hook(name: Any) -> bool:
        return bool((receivers.get(name) or {}).get("webhook_configs"))

    route = doc.get("route")
    if not isinstance(route, dict):
        return False
    if has_hook(route.get("receiver")):
        return True
    return any(isinstance(sub, dict) and has_hook(sub.get("receiver")) for sub in route.get("routes") or [])


DURATION_RE = re.compile(r"^((\d+)y)?((\d+)w)?((\d+)d)?((\d+)h)?((\d+)m)?((\d+)s)?((\d+)ms)?$")
_UNITS = ((2, 365 * 86400), (4, 7 * 86400), (6, 86400), (8, 3600), (10, 60), (12, 1), (14, 0.001))


def duration_seconds(text: Any) -> float | None:
    """A Prometheus duration ("1m", "90s", "1h30m") in seconds; None when it is not one."""
    if text is None:
        return None
    m = DURATION_RE.match(str(text).strip())
    if not m or not str(text).strip():
        return None
    return sum(int(m.group(i)) * mult for i, mult in _UNITS if m.group(i))


# --------------------------------------------------------------------------- hidden rule tests
# The grader's own cases (the learner never sees them): series shaped like the service's
# metrics, a state that must make the alert fire and one that must not. Label-agnostic: the
# expression is wrapped in clamp_max(count((expr)), 1), so only "does it return something" counts.
# Every series rises steadily for 100 minutes (evaluated at 95 m), so any window from 1 m to 1 h works.
_BASE = {"job": JOB, "instance": "llm-chat:8000"}
_BUCKETS = [0.01 * 2 ** i for i in range(14)]


def _sel(name: str, **labels: str) -> str:
    inner = ", ".join(f'{k}="{v}"' for k, v in {**_BASE, **labels}.items())
    return f"{name}{{{inner}}}"


def _counter(name: str, per_min: float, **labels: str) -> dict:
    return {"series": _sel(name, **labels), "values": f"0+{per_min:g}x100"}


def _http(status: str, per_min: float, route: str = "/chat") -> list[dict]:
    """http_server_request_duration_seconds (count, sum, buckets) for one status: all fast (0.3 s)."""
    lab = {"http_route": route, "http_request_method": "POST", "http_response_status_code": status,
           "url_scheme": "http", "network_protocol_version": "1.1"}
    out = [_counter("http_server_request_duration_seconds_count", per_min, **lab),
           _counter("http_server_request_duration_seconds_sum", per_min * 0.3, **lab)]
    for b in _BUCKETS:
        out.append(_counter("http_server_request_duration_seconds_bucket", per_min if b >= 0.3 else 0, **lab, le=f"{b:g}"))
    out.append(_counter("http_server_request_duration_seconds_bucket", per_min, **lab, le="+Inf"))
    return out


def _latency(fast_per_min: float, slow_per_min: float, slow_s: float) -> list[dict]:
    """200s on /chat: `fast` at 0.1 s and `slow` at `slow_s` (histogram buckets, _sum, _count)."""
    lab = {"http_route": "/chat", "http_request_method": "POST", "http_response_status_code": "200",
           "url_scheme": "http", "network_protocol_version": "1.1"}
    total = fast_per_min + slow_per_min
    out = [_counter("http_server_request_duration_seconds_count", total, **lab),
           _counter("http_server_request_duration_seconds_sum", fast_per_min * 0.1 + slow_per_min * slow_s, **lab)]
    for b in _BUCKETS:
        n = (fast_per_min if b >= 0.1 else 0) + (slow_per_min if b >= slow_s else 0)
        out.append(_counter("http_server_request_duration_seconds_bucket", n, **lab, le=f"{b:g}"))
    out.append(_counter("http_server_request_duration_seconds_bucket", total, **lab, le="+Inf"))
    # the same calls as GenAI operations (some rules use the LLM call duration instead)
    glab = {"gen_ai_operation_name": "chat", "gen_ai_provider_name": "gcp.gemini",
            "gen_ai_request_model": "gemini-3.5-flash"}
    out += [_counter("gen_ai_client_operation_duration_seconds_count", total, **glab),
            _counter("gen_ai_client_operation_duration_seconds_sum", fast_per_min * 0.09 + slow_per_min * (slow_s - 0.01),
                     **glab)]
    for b in _BUCKETS:
        n = (fast_per_min if b >= 0.09 else 0) + (slow_per_min if b >= slow_s - 0.01 else 0)
        out.append(_counter("gen_ai_client_operation_duration_seconds_bucket", n, **glab, le=f"{b:g}"))
    out.append(_counter("gen_ai_client_operation_duration_seconds_bucket", total, **glab, le="+Inf"))
    return out


def _judge(per_min: float, mean: float) -> list[dict]:
    """llm_judge_score histogram (buckets 1..5) with every score equal to `mean` rounded into a bucket."""
    lab = {"gen_ai_request_model": "gemini-3.5-flash"}
    score = round(mean)
    out = [_counter("llm_judge_score_count", per_min, **lab), _counter("llm_judge_score_sum", per_min * mean, **lab)]
    for b in (1, 2, 3, 4, 5):
        out.append(_counter("llm_judge_score_bucket", per_min if b >= score else 0, **lab, le=f"{b}.0"))
    out.append(_counter("llm_judge_score_bucket", per_min, **lab, le="+Inf"))
    return out


def _feedback(up: float, down: float) -> list[dict]:
    return [_counter("llm_feedback_total", up, rating="up"), _counter("llm_feedback_total", down, rating="down")]


def _answers(per_min: float, refused: float = 0.0) -> list[dict]:
    lab = {"gen_ai_request_model": "gemini-3.5-flash"}
    return [_counter("llm_answers_total", per_min - refused, **lab, refused="false"),
            _counter("llm_answers_total", refused, **lab, refused="true")]


def _cost(usd_per_hour: float) -> list[dict]:
    return [_counter("llm_cost_usd_total", usd_per_hour / 60, gen_ai_request_model="gemini-3.5-flash")]


def _drift(psi: float) -> list[dict]:
    return [{"series": _sel("llm_input_drift_psi"), "values": f"{psi:g}x100"}]


def _healthy() -> list[dict]:
    """A quiet, healthy service: 100 req/min, all 200 and fast, good judge scores, few thumbs-down,
    cost 1 USD/h, no drift. Each case starts from this and changes one signal."""
    return (_latency(100, 0, 0) + _judge(10, 4.6) + _feedback(8, 1) + _answers(100, 2) + _cost(1.0) + _drift(0.03))


def _replace(base: list[dict], new: list[dict]) -> list[dict]:
    names = {s["series"].split("{")[0] for s in new}
    return [s for s in base if s["series"].split("{")[0] not in names] + new


@dataclass(frozen=True)
class RuleCase:
    alert: str
    fires: bool
    what: str          # Korean: the situation
    series: tuple      # input_series


def rule_cases() -> list[RuleCase]:
    h = _healthy()
    errors = _replace(h, _latency(80, 0, 0) + _http("502", 12) + _http("503", 8))         # 20% 5xx
    client_errors = _replace(h, _latency(100, 0, 0) + _http("422", 20) + _http("401", 10) + _http("502", 1))
    slow_tail = _replace(h, _latency(90, 10, 7.0))   # p95 ~ 7 s, mean 0.79 s
    cost_spike = _replace(h, _cost(12.0))
    judge_low = _replace(h, _judge(10, 2.0))
    thumbs_down = _replace(h, _feedback(4, 6))      # 60% 👎
    drift = _replace(h, _drift(0.6))
    return [
        RuleCase("LLMHighErrorRate", True, "/chat 요청의 20% 가 5xx (502, 503)", tuple(errors)),
        RuleCase("LLMHighErrorRate", False, "5xx 는 0.8% 뿐이고 나머지 오류는 4xx (422, 401): 서버 오류율 5% 미만",
                 tuple(client_errors)),
        RuleCase("LLMHighErrorRate", False, "조용하고 건강한 서비스 (모두 200)", tuple(h)),
        RuleCase("LLMHighLatencyP95", True, "요청의 10% 가 7초 (p95 ≈ 7초, 평균은 0.8초)", tuple(slow_tail)),
        RuleCase("LLMHighLatencyP95", False, "모든 요청이 0.1초", tuple(h)),
        RuleCase("LLMCostBudgetExceeded", True, "비용이 시간당 12 USD 로 증가 (예산 5 USD/시간)", tuple(cost_spike)),
        RuleCase("LLMCostBudgetExceeded", False, "비용이 시간당 1 USD", tuple(h)),
        RuleCase("LLMQualityDrop", True, "판정 점수 평균 2.0 (👎 비율은 11%)", tuple(judge_low)),
        RuleCase("LLMQualityDrop", True, "👎 비율 60% (판정 점수 평균은 4.6)", tuple(thumbs_down)),
        RuleCase("LLMQualityDrop", False, "판정 점수 평균 4.6, 👎 비율 11%", tuple(h)),
        RuleCase("LLMInputDrift", True, "PSI 0.6", tuple(drift)),
        RuleCase("LLMInputDrift", False, "PSI 0.03", tuple(h)),
    ]


def rule_case_test(rule_file: str, expr: str, case: RuleCase) -> dict:
    """A promtool unit-test document for one case: the learner's rule file is loaded (its
    recording rules are evaluated), and the learner's alert expression must return something
    (fires) or nothing (quiet) at 95 m."""
    return {
        "rule_files": [rule_file],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [dict(s) for s in case.series],
            "promql_expr_test": [{
                "expr": f"clamp_max(count(({expr})), 1)",
                "eval_time": "95m",
                "exp_samples": [{"labels": "{}", "value": 1}] if case.fires else [],
            }],
        }],
    }
