"""Grafana dashboards as code for step 04, without Grafana: read a dashboard JSON, list its
panels and PromQL queries, substitute Grafana's built-in variables, and evaluate every panel
on a real Prometheus (`coursekit.prometheus.Prometheus`).

Grafana itself is not installable here (DESIGN.md §6), so the lesson, the docs and the grader
render the same panel queries from the real Prometheus that scraped the load:

    from coursekit import grafana, prometheus as kp

    dash = grafana.load("monitoring/grafana/dashboards/llm-chat.json")
    for title, exprs in grafana.panels(dash):
        print(title, exprs)
    grafana.render('rate(x_total[$__rate_interval])', rate_interval="30s")  # 'rate(x_total[30s])'
    results = grafana.evaluate(dash, prom)        # one row per panel query
    print(grafana.summary(results))               # Korean table: ok / no data / error

`problems(dash)` lists what is wrong with a dashboard file itself (schemaVersion, missing
queries, a datasource other than the provisioned uid), in Korean; `check_syntax(dash)` parses
every query with `promtool check rules` (offline, no Prometheus needed).
Messages meant for people are Korean.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "DATASOURCE_UID",
    "MIN_SCHEMA_VERSION",
    "GrafanaError",
    "Panel",
    "PanelResult",
    "check_syntax",
    "datasource_uids",
    "evaluate",
    "load",
    "panels",
    "panels_using",
    "problems",
    "render",
    "summary",
]

DATASOURCE_UID = "prometheus"  # the uid of monitoring/grafana/provisioning/datasources/prometheus.yml
MIN_SCHEMA_VERSION = 39  # Grafana 11.0's dashboard schema


class GrafanaError(ValueError):
    """A dashboard file that cannot be read, or a query that cannot be rendered (Korean message)."""


# --------------------------------------------------------------------------- reading
def load(path: str | os.PathLike) -> dict[str, Any]:
    """The dashboard JSON at `path` as a dict. Raises GrafanaError (Korean, with line and column)
    when the file is missing or is not a JSON object."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise GrafanaError(f"대시보드 파일 {path} 가 없습니다.") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise GrafanaError(f"대시보드 {path.name} 가 올바른 JSON 이 아닙니다: {exc.lineno}번째 줄 "
                           f"{exc.colno}번째 칸: {exc.msg}") from None
    if not isinstance(data, dict):
        raise GrafanaError(f"대시보드 {path.name} 의 최상위가 JSON 객체({{...}})가 아닙니다.")
    # the JSON Grafana's "Export for sharing externally" writes wraps nothing; the HTTP API wraps it
    if "dashboard" in data and isinstance(data["dashboard"], dict) and "panels" not in data:
        data = data["dashboard"]
    return data


def _dashboard(dashboard: Mapping[str, Any] | str | os.PathLike) -> Mapping[str, Any]:
    return dashboard if isinstance(dashboard, Mapping) else load(dashboard)


@dataclass(frozen=True)
class Panel:
    """One panel: its title and PromQL queries (`for title, exprs in panels(...)` unpacks these two),
    plus id, type, unit and the datasource uids it names (panel and targets)."""

    title: str
    exprs: tuple[str, ...]
    id: int | None = None
    type: str = ""
    unit: str | None = None
    datasources: tuple[str, ...] = ()
    legends: tuple[str, ...] = ()

    def __iter__(self) -> Iterator[Any]:
        yield self.title
        yield list(self.exprs)


def _uid(ds: Any) -> str | None:
    if isinstance(ds, Mapping):
        uid = ds.get("uid")
        return str(uid) if uid is not None else None
    if isinstance(ds, str):  # old dashboards name the datasource by its name
        return ds
    return None


def _walk(items: Any) -> Iterator[Mapping[str, Any]]:
    for p in items or []:
        if not isinstance(p, Mapping):
            continue
        if p.get("type") == "row":  # a collapsed row keeps its panels inside
            yield from _walk(p.get("panels"))
        else:
            yield p


def panels(dashboard: Mapping[str, Any] | str | os.PathLike) -> list[Panel]:
    """Every panel (rows flattened, row headers skipped) with the `expr` of each visible target."""
    out = []
    for p in _walk(_dashboard(dashboard).get("panels")):
        targets = [t for t in p.get("targets") or [] if isinstance(t, Mapping) and not t.get("hide")]
        exprs = tuple(str(t["expr"]) for t in targets if str(t.get("expr") or "").strip())
        uids = [u for u in [_uid(p.get("datasource"))] + [_uid(t.get("datasource")) for t in targets] if u]
        unit = ((p.get("fieldConfig") or {}).get("defaults") or {}).get("unit")
        out.append(Panel(title=str(p.get("title") or ""), exprs=exprs, id=p.get("id"), type=str(p.get("type") or ""),
                         unit=unit, datasources=tuple(dict.fromkeys(uids)),
                         legends=tuple(str(t.get("legendFormat") or "") for t in targets if t.get("expr"))))
    return out


def panels_using(dashboard: Mapping[str, Any] | str | os.PathLike, metric: str) -> list[Panel]:
    """Panels with a query that names `metric` (a whole metric name, e.g. 'llm_cost_usd_total')."""
    pattern = re.compile(rf"(?<![A-Za-z0-9_:]){re.escape(metric)}(?![A-Za-z0-9_:])")
    return [p for p in panels(dashboard) if any(pattern.search(e) for e in p.exprs)]


# --------------------------------------------------------------------------- variables
_VAR = re.compile(r"\$\{(\w+)(?::[\w]+)?\}|\$(\w+)|\[\[(\w+)(?::[\w]+)?\]\]")


def _seconds(duration: str) -> float:
    total, pos = 0.0, 0
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    for m in re.finditer(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)", duration):
        if m.start() != pos:
            break
        total += float(m.group(1)) * units[m.group(2)]
        pos = m.end()
    if pos != len(duration) or not duration:
        raise GrafanaError(f"기간 {duration!r} 을(를) 읽을 수 없습니다 (예: 15s, 1m, 1h30m).")
    return total


def render(expr: str, rate_interval: str = "1m", interval: str = "15s", range: str = "1h",
           variables: Mapping[str, str] | None = None) -> str:
    """`expr` with Grafana's variables replaced, so Prometheus can run it:
    $__rate_interval, $__interval, $__interval_ms, $__range, $__range_s, $__range_ms (also written
    ${...} or [[...]]), and dashboard variables from `variables` ({"model": "gemini-3.5-flash"}).

    Grafana computes $__rate_interval as max($__interval + scrape interval, 4 x scrape interval);
    here it is a parameter: with a 1 s scrape in tests, 1m..5m windows are plenty.
    An unknown variable raises GrafanaError naming it."""
    values = {
        "__rate_interval": rate_interval,
        "__interval": interval,
        "__interval_ms": str(int(_seconds(interval) * 1000)),
        "__range": range,
        "__range_s": str(int(_seconds(range))),
        "__range_ms": str(int(_seconds(range) * 1000)),
    }
    _seconds(rate_interval)  # validates
    values.update({k: str(v) for k, v in (variables or {}).items()})

    def sub(m: re.Match) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        if name not in values:
            known = ", ".join(f"${k}" for k in values)
            raise GrafanaError(f"쿼리의 변수 ${name} 을(를) 바꿀 값이 없습니다 (아는 변수: {known}). "
                               f"대시보드 변수라면 render(..., variables={{'{name}': ...}}) 로 값을 주세요.")
        return values[name]

    return _VAR.sub(sub, expr)


def datasource_uids(provisioning: str | os.PathLike, type_: str = "prometheus") -> list[str]:
    """The uids of the `type_` datasources a Grafana provisioning file defines
    (grafana/provisioning/datasources/*.yml); [] when it defines none. Raises GrafanaError
    (Korean) when the file is missing or is not YAML. `problems(dash, datasource_uid=...)` then
    tells whether the dashboard's panels point at a datasource that exists."""
    path = Path(provisioning)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise GrafanaError(f"데이터소스 provisioning 파일 {path} 가 없습니다.") from None
    except yaml.YAMLError as exc:
        raise GrafanaError(f"{path.name} 가 올바른 YAML 이 아닙니다: {exc}") from None
    sources = data.get("datasources") if isinstance(data, Mapping) else None
    return [str(d.get("uid")) for d in sources or []
            if isinstance(d, Mapping) and d.get("type") == type_ and d.get("uid") is not None]


# --------------------------------------------------------------------------- checks
def problems(dashboard: Mapping[str, Any] | str | os.PathLike, datasource_uid: str = DATASOURCE_UID,
             min_schema_version: int = MIN_SCHEMA_VERSION) -> list[str]:
    """What is wrong with the dashboard itself (Korean, one line each; empty = nothing found):
    schemaVersion, a title, panels without queries, duplicate titles, a datasource uid other than the
    provisioned one (Grafana then shows "Datasource ... was not found")."""
    dash = _dashboard(dashboard)
    out = []
    version = dash.get("schemaVersion")
    if not isinstance(version, int) or version < min_schema_version:
        out.append(f"schemaVersion 이 {version!r} 입니다 ({min_schema_version} 이상이어야 합니다: Grafana 11 의 스키마).")
    if not str(dash.get("title") or "").strip():
        out.append("대시보드 제목(title)이 없습니다.")
    found = panels(dash)
    if not found:
        out.append("패널이 하나도 없습니다.")
    seen: dict[str, int] = {}
    for p in found:
        name = p.title or f"(제목 없음, id {p.id})"
        seen[name] = seen.get(name, 0) + 1
        if p.type == "text":
            continue
        if not p.exprs:
            out.append(f"패널 '{name}' 에 PromQL 쿼리(targets[].expr)가 없습니다.")
        wrong = [u for u in p.datasources if u != datasource_uid and not u.startswith("$")]
        if wrong or (p.exprs and not p.datasources):
            out.append(f"패널 '{name}' 의 데이터소스 uid 가 {list(p.datasources) or '없음'} 입니다 "
                       f"(provisioning 의 uid '{datasource_uid}' 여야 합니다).")
    out += [f"패널 제목 '{t}' 이(가) {n}번 나옵니다 (제목으로 패널을 찾으므로 겹치면 안 됩니다)."
            for t, n in seen.items() if n > 1]
    return out


def check_syntax(dashboard: Mapping[str, Any] | str | os.PathLike, **render_args: Any):
    """Parse every panel query offline with `promtool check rules` (each query becomes a recording
    rule). Returns the `coursekit.prometheus.ToolResult` (`ok`, Korean `summary()`); rule names
    are `panel_<n>_<m>` in panel order, so an error names the panel."""
    from . import prometheus as kp

    rules = []
    for n, p in enumerate(panels(dashboard), start=1):
        for m, e in enumerate(p.exprs, start=1):
            rules.append({"record": f"panel_{n}_{m}", "expr": render(e, **render_args)})
    with tempfile.TemporaryDirectory(prefix="course-grafana-") as tmp:
        path = Path(tmp) / "dashboard_queries.yml"
        path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, allow_unicode=True),
                        encoding="utf-8")
        result = kp.check_rules(path)
    result.what = "대시보드 쿼리 문법 (promtool check rules)"
    return result


# --------------------------------------------------------------------------- evaluation
@dataclass
class PanelResult:
    """One panel query evaluated on Prometheus: `series` answered (0 = no data), the number of
    `values` (instant: = series; range: all points), or the Korean `error`."""

    title: str
    expr: str
    rendered: str
    series: int = 0
    values: int = 0
    error: str | None = None
    result: list[dict[str, Any]] | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.series > 0

    @property
    def status(self) -> str:
        if self.error is not None:
            return "오류"
        return "데이터 있음" if self.series else "데이터 없음"


def evaluate(dashboard: Mapping[str, Any] | str | os.PathLike, prom, *, rate_interval: str = "1m",
             interval: str = "15s", range: str = "1h", variables: Mapping[str, str] | None = None,
             at: float | None = None, start: float | None = None, end: float | None = None,
             step: float = 1.0) -> list[PanelResult]:
    """Run every panel query on `prom` (a running `coursekit.prometheus.Prometheus`): an instant
    query (at `at`, default now), or a range query when `start` and `end` are given (what a Grafana
    graph shows). One PanelResult per query, in panel order; a query Prometheus rejects is a
    result with `error`, never an exception."""
    from .prometheus import PrometheusError

    out = []
    for p in panels(dashboard):
        for expr in p.exprs:
            row = PanelResult(title=p.title, expr=expr, rendered=expr)
            try:
                row.rendered = render(expr, rate_interval=rate_interval, interval=interval, range=range,
                                      variables=variables)
                if start is not None and end is not None:
                    res = prom.query_range(row.rendered, start, end, step)
                    row.values = sum(len(r.get("values", [])) for r in res)
                else:
                    res = prom.query(row.rendered, at)
                    row.values = len(res)
                row.series, row.result = len(res), res
            except (GrafanaError, PrometheusError) as exc:
                row.error = str(exc)
            out.append(row)
    return out


def summary(results: list[PanelResult], width: int = 60) -> str:
    """A Korean text table of `evaluate`'s results: panel, status, series count, query (shortened)."""
    head = (f"패널 쿼리 {len(results)}개: 데이터 있음 {sum(r.ok for r in results)}, "
            f"데이터 없음 {sum(r.error is None and not r.series for r in results)}, "
            f"오류 {sum(r.error is not None for r in results)}")
    lines = [head]
    for r in results:
        q = r.rendered if len(r.rendered) <= width else r.rendered[: width - 3] + "..."
        tail = f" — {r.error.splitlines()[0]}" if r.error else ""
        lines.append(f"  [{r.status}] {r.title} (시계열 {r.series}): {q}{tail}")
    return "\n".join(lines)
