"""Real Prometheus, Alertmanager and promtool for step 04's lesson and grader.

Both the lesson (`from coursekit import prometheus`) and the grader use this module; it needs
no pytest and no grader internals. The binaries come from Debian (`prometheus`,
`prometheus-alertmanager`; `.ci/install-prometheus.sh` installs them). Debian names the
Alertmanager binary `prometheus-alertmanager`; `find_tool("alertmanager")` finds either name.

    from coursekit import prometheus as kp

    with kp.WebhookReceiver() as hook, \\
         kp.Alertmanager(kp.alertmanager_config(hook.url)) as am, \\
         kp.Prometheus(kp.prometheus_config({"service": ["127.0.0.1:8000"]},
                                            rule_files=["alerts.yml"], alertmanager=am.address),
                       files={"alerts.yml": rules_text}) as prom:
        prom.wait_for_targets()
        prom.value('sum(rate(http_requests_total[30s]))')
        hook.wait_for_alert("HighErrorRate", timeout=30)

Every process runs on loopback with a free port and a temporary data folder, is waited for
with a deadline (`/-/ready`), and is stopped by its PID (SIGTERM, then SIGKILL); the folder is
removed. `running()` lists what is still running; everything left is stopped at exit.
Messages meant for people are Korean.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import yaml

from .procs import Registry, free_port, skip_or_fail, stop_process, tools_required

__all__ = [
    "Alertmanager",
    "Prometheus",
    "PrometheusError",
    "ToolResult",
    "WebhookReceiver",
    "alertmanager_config",
    "amtool_check_config",
    "check_config",
    "check_rules",
    "find_tool",
    "missing_note",
    "missing_tools",
    "prometheus_config",
    "require_tools",
    "running",
    "stop_all",
    "test_rules",
    "tools_required",
]

TOOLS = ("prometheus", "promtool", "alertmanager", "amtool")
# Debian's package installs alertmanager as /usr/bin/prometheus-alertmanager.
_ALIASES = {"alertmanager": ("alertmanager", "prometheus-alertmanager")}
INSTALL_HINT = "설치: sudo bash .ci/install-prometheus.sh (Debian/Ubuntu 패키지 prometheus, prometheus-alertmanager)"


class PrometheusError(RuntimeError):
    """A component did not start, did not answer, or answered an error (Korean message)."""


# --------------------------------------------------------------------------- tools
def find_tool(name: str) -> str | None:
    """Absolute path of `name` (prometheus, promtool, alertmanager, amtool) or None."""
    for candidate in _ALIASES.get(name, (name,)):
        path = shutil.which(candidate)
        if path:
            return path
    return None


def missing_tools(*names: str) -> list[str]:
    """Which of `names` (default: all four) are not installed."""
    return [n for n in (names or TOOLS) if find_tool(n) is None]


def missing_note(names: Iterable[str], reason: str) -> str:
    """The Korean note shown when tools are missing (lessons print it, tests skip with it)."""
    return f"{', '.join(names)} 이(가) 없어 건너뜁니다: {reason}. {INSTALL_HINT}"


def require_tools(*names: str, reason: str) -> None:
    """Inside pytest: skip with a Korean note when a tool is missing, or fail under
    COURSE_REQUIRE_TOOLS=1 (same rule and wording as `grader.harness.require_tool`)."""
    missing = missing_tools(*names)
    if missing:
        skip_or_fail(missing_note(missing, reason))


def _tool(name: str) -> str:
    path = find_tool(name)
    if path is None:
        raise PrometheusError(f"{name} 이(가) 설치되어 있지 않습니다. {INSTALL_HINT}")
    return path


# --------------------------------------------------------------------------- promtool / amtool
@dataclass
class ToolResult:
    """Outcome of one promtool/amtool command: `ok`, `output`, and a Korean `summary()`."""

    command: list[str]
    returncode: int
    output: str
    what: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def summary(self, max_lines: int = 20) -> str:
        head = f"{self.what}: {'통과' if self.ok else f'실패 (종료 코드 {self.returncode})'}"
        lines = [ln for ln in self.output.strip().splitlines() if ln.strip()]
        if len(lines) > max_lines:
            lines = lines[:max_lines] + [f"... ({len(lines) - max_lines}줄 더)"]
        return "\n".join([head, *("    " + ln for ln in lines)])

    def __str__(self) -> str:
        return self.summary()

    def __bool__(self) -> bool:
        return self.ok


def _run_tool(args: list[str], what: str, cwd: str | os.PathLike | None = None,
              timeout: float = 60.0) -> ToolResult:
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False,
                          stdin=subprocess.DEVNULL)
    return ToolResult(args, proc.returncode, (proc.stdout + proc.stderr).strip(), what)


def check_config(path: str | os.PathLike) -> ToolResult:
    """`promtool check config FILE` (also checks the rule files the config names)."""
    path = Path(path)
    return _run_tool([_tool("promtool"), "check", "config", path.name],
                     f"promtool check config {path.name}", cwd=path.parent)


def check_rules(*paths: str | os.PathLike) -> ToolResult:
    """`promtool check rules FILE...` (syntax, PromQL, and rule-name lint)."""
    p = [Path(x) for x in paths]
    return _run_tool([_tool("promtool"), "check", "rules", *map(str, p)],
                     f"promtool check rules {' '.join(x.name for x in p)}")


def test_rules(*paths: str | os.PathLike) -> ToolResult:
    """`promtool test rules FILE...`: the rule unit tests (rule_files are relative to each test file)."""
    p = [Path(x).resolve() for x in paths]
    return _run_tool([_tool("promtool"), "test", "rules", *(x.name for x in p)],
                     f"promtool test rules {' '.join(x.name for x in p)}", cwd=p[0].parent)


test_rules.__test__ = False  # not a pytest test when imported into a test module


def amtool_check_config(path: str | os.PathLike) -> ToolResult:
    """`amtool check-config FILE` (Alertmanager configuration)."""
    path = Path(path)
    return _run_tool([_tool("amtool"), "check-config", str(path)], f"amtool check-config {path.name}")


# --------------------------------------------------------------------------- configs
def prometheus_config(targets: Mapping[str, Iterable[str]], *, interval: str = "1s",
                      rule_files: Iterable[str] = (), alertmanager: str | None = None,
                      metrics_path: str = "/metrics") -> dict[str, Any]:
    """A prometheus.yml as a dict: one scrape job per entry of `targets` ({job: ["host:port"]}),
    scrape and evaluation every `interval`, optional rule files and Alertmanager ("host:port")."""
    cfg: dict[str, Any] = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval,
                   "scrape_timeout": interval},
        "scrape_configs": [
            {"job_name": job, "metrics_path": metrics_path, "static_configs": [{"targets": list(hosts)}]}
            for job, hosts in targets.items()
        ],
    }
    if rule_files:
        cfg["rule_files"] = list(rule_files)
    if alertmanager:
        cfg["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]}
    return cfg


def alertmanager_config(webhook_url: str, *, group_wait: str = "1s", group_interval: str = "1s",
                        repeat_interval: str = "1h", group_by: Iterable[str] = ("alertname",)) -> dict[str, Any]:
    """An alertmanager.yml as a dict: every alert goes to one webhook receiver, grouped quickly
    (a short group_wait so a test sees the first notification within seconds)."""
    return {
        "route": {"receiver": "webhook", "group_by": list(group_by), "group_wait": group_wait,
                  "group_interval": group_interval, "repeat_interval": repeat_interval},
        "receivers": [{"name": "webhook",
                       "webhook_configs": [{"url": webhook_url, "send_resolved": True}]}],
    }


def _write_config(config: Mapping[str, Any] | str | os.PathLike, folder: Path, name: str) -> Path:
    target = folder / name
    if isinstance(config, Mapping):
        target.write_text(yaml.safe_dump(dict(config), sort_keys=False, allow_unicode=True), encoding="utf-8")
    elif isinstance(config, Path) or (isinstance(config, str) and "\n" not in config and Path(config).is_file()):
        shutil.copyfile(config, target)
    else:
        target.write_text(str(config), encoding="utf-8")
    return target


# --------------------------------------------------------------------------- processes
# What this module started: listed by running(), stopped by stop_all() and at exit (by PID).
_STARTED = Registry("stop")
running = _STARTED.running
stop_all = _STARTED.stop_all


class _Server:
    """A binary started on 127.0.0.1:<free port> with a temporary folder; stopped by PID."""

    name = "server"
    config_name = "config.yml"
    port_retries = 3

    def __init__(self, config: Mapping[str, Any] | str | os.PathLike, *,
                 files: Mapping[str, str] | None = None, extra_args: Iterable[str] = (),
                 timeout: float = 30.0):
        self.config, self.files, self.extra_args = config, dict(files or {}), list(extra_args)
        self.timeout = timeout
        self.port: int = 0
        self.folder: Path | None = None
        self.process: subprocess.Popen | None = None
        self.started_at: float | None = None
        self.startup_seconds: float | None = None
        self.last_log = ""
        self._client: httpx.Client | None = None

    # -- to implement
    def _args(self, config_path: Path) -> list[str]:
        raise NotImplementedError

    # -- properties
    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def config_path(self) -> Path:
        assert self.folder is not None
        return self.folder / self.config_name

    def log(self) -> str:
        if self.folder is None:
            return self.last_log
        try:
            return (self.folder / "log.txt").read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return self.last_log

    def tail(self, lines: int = 15) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    # -- lifecycle
    def _prepare(self) -> Path:
        self.folder = Path(tempfile.mkdtemp(prefix=f"course-{self.name}-"))
        for rel, text in self.files.items():
            dest = self.folder / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(text, encoding="utf-8")
        return _write_config(self.config, self.folder, self.config_name)

    def start(self) -> _Server:
        """Start on a free port and wait for `/-/ready` (deadline `timeout`); retries another
        port when the one picked was taken meanwhile. Raises PrometheusError with the log tail."""
        if self.alive:
            return self
        began = time.monotonic()
        for attempt in range(self.port_retries):
            config_path = self._prepare()
            self.port = free_port()
            with open(self.folder / "log.txt", "wb") as out:
                self.process = subprocess.Popen(
                    self._args(config_path) + self.extra_args, cwd=self.folder, stdout=out,
                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
            _STARTED.add(self)
            self.started_at = time.time()
            self._client = httpx.Client(base_url=self.url, timeout=10.0)
            if self._wait_ready(began + self.timeout):
                self.startup_seconds = time.monotonic() - began
                return self
            exited = self.process.poll() is not None
            self.stop()
            taken = f"{self.address}: bind: address already in use"
            if taken in self.last_log and attempt + 1 < self.port_retries:
                continue  # the free port was taken meanwhile: another one
            tail = "\n".join(self.last_log.splitlines()[-15:])
            what = (f"시작하자마자 종료되었습니다 (종료 코드 {self.process.returncode})" if exited
                    else f"{self.timeout:.0f}초 안에 준비되지 않았습니다 ({self.url}/-/ready)")
            raise PrometheusError(f"{self.name} 가 {what}.\n--- {self.name} 로그 (마지막 줄) ---\n{tail}")
        raise AssertionError("unreachable")

    def _wait_ready(self, deadline: float) -> bool:
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                if self._client.get("/-/ready", timeout=1.0).status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        return False

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM by PID, SIGKILL after `grace` seconds; remove the temporary folder."""
        _STARTED.discard(self)
        if self._client is not None:
            self._client.close()
            self._client = None
        if self.process is not None:
            stop_process(self.process, grace)
        if self.folder is not None:
            self.last_log = self.log()
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"PID {self.pid}, {self.url}" if self.alive else "멈춤"
        return f"<{type(self).__name__} {state}>"

    # -- HTTP
    def _get_json(self, path: str, params: Any = None) -> Any:
        if self._client is None:
            raise PrometheusError(f"{self.name} 가 실행 중이 아닙니다 (start() 먼저).")
        try:
            r = self._client.get(path, params=params)
        except httpx.HTTPError as exc:
            raise PrometheusError(f"{self.name} {path} 요청 실패: {exc!r}") from exc
        try:
            body = r.json()
        except ValueError:
            raise PrometheusError(f"{self.name} {path}: HTTP {r.status_code}, JSON 이 아닌 응답: {r.text[:200]}")
        if isinstance(body, dict) and body.get("status") == "error":
            raise PrometheusError(f"{self.name} {path} 오류 ({body.get('errorType')}): {body.get('error')}"
                                  f" — 요청: {params}")
        if r.status_code >= 400:
            raise PrometheusError(f"{self.name} {path}: HTTP {r.status_code}: {r.text[:200]}")
        return body.get("data") if isinstance(body, dict) and "data" in body else body


class Prometheus(_Server):
    """A real Prometheus on loopback (`--web.enable-lifecycle` so `reload()` works).

    `config` is a dict (see `prometheus_config`), YAML text, or a file path; `files` are extra
    files written next to it (rule files named by `rule_files`).
    """

    name = "prometheus"
    config_name = "prometheus.yml"

    def _args(self, config_path: Path) -> list[str]:
        return [_tool("prometheus"), f"--config.file={config_path}",
                f"--storage.tsdb.path={self.folder / 'data'}",
                f"--web.listen-address={self.address}", "--web.enable-lifecycle",
                "--log.level=warn"]

    # -- queries
    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """Instant query; the `result` list (vector: [{"metric": {...}, "value": [t, "v"]}])."""
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = self._get_json("/api/v1/query", params)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        return data["result"]

    def value(self, expr: str, at: float | None = None) -> float | None:
        """The single number an instant query answers (None when it answers nothing).
        More than one series is an error: aggregate (sum, ...) in the expression."""
        result = self.query(expr, at)
        if not result:
            return None
        if len(result) > 1:
            raise PrometheusError(f"`{expr}` 가 시계열 {len(result)}개를 돌려주었습니다 (하나를 기대: sum 등으로 묶으세요).")
        return float(result[0]["value"][1])

    def values(self, expr: str, by: str, at: float | None = None) -> dict[str, float]:
        """{label value of `by`: number} for an instant query answering one series per label value."""
        return {r["metric"].get(by, ""): float(r["value"][1]) for r in self.query(expr, at)}

    def delta(self, expr: str, start: float, end: float) -> float:
        """`value(expr, at=end) - value(expr, at=start)`: the exact growth of a counter between two
        moments (both after a scrape). `increase()` over a range extrapolates to the window's
        edges, so it is not an exact count; graders compare counts with this instead."""
        a, b = self.value(expr, at=start), self.value(expr, at=end)
        if a is None or b is None:
            raise PrometheusError(f"`{expr}` 의 값이 {'시작' if a is None else '끝'} 시점에 없습니다.")
        return b - a

    def query_range(self, expr: str, start: float, end: float, step: float = 1.0) -> list[dict[str, Any]]:
        """Range query; [{"metric": {...}, "values": [[t, "v"], ...]}]."""
        data = self._get_json("/api/v1/query_range",
                              {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step}"})
        return data["result"]

    def series(self, match: str, start: float | None = None) -> list[dict[str, str]]:
        """Label sets of the series matching `match` (e.g. '{job="service"}')."""
        params = {"match[]": match}
        if start is not None:
            params["start"] = f"{start:.3f}"
        return self._get_json("/api/v1/series", params)

    def series_count(self, match: str) -> int:
        return len(self.series(match))

    def targets(self) -> list[dict[str, Any]]:
        """Active scrape targets: job (labels), scrapeUrl, health (up/down/unknown), lastError, lastScrape."""
        return self._get_json("/api/v1/targets", {"state": "active"})["activeTargets"]

    def wait_for_targets(self, timeout: float = 15.0, scrapes: int = 1, job: str | None = None,
                         health: str = "up") -> list[dict[str, Any]]:
        """Wait until every target (of `job`, if given) was scraped `scrapes` times after now
        and has `health` ("up"; "down" to wait for a failed scrape). Measured with Debian's 2.42: the
        first scrape comes about 5 s after start (new targets are applied on a 5 s tick), later
        scrapes every scrape_interval.
        Raises PrometheusError naming the targets and their last error."""
        since = time.time()
        seen: dict[str, int] = {}
        last: dict[str, str] = {}
        deadline = time.monotonic() + timeout
        targets: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            targets = [t for t in self.targets() if job is None or t["labels"].get("job") == job]
            for t in targets:
                stamp = t.get("lastScrape", "")
                if _parse_time(stamp) > since and last.get(t["scrapeUrl"]) != stamp:
                    last[t["scrapeUrl"]] = stamp
                    seen[t["scrapeUrl"]] = seen.get(t["scrapeUrl"], 0) + 1
            if targets and all(seen.get(t["scrapeUrl"], 0) >= scrapes and t["health"] == health for t in targets):
                return targets
            time.sleep(0.1)
        bad = [f"{t['scrapeUrl']}: {t['health']} {t.get('lastError') or ''}".strip() for t in targets
               if t["health"] != health or seen.get(t["scrapeUrl"], 0) < scrapes]
        what = f"job={job} 의 " if job else ""
        raise PrometheusError(f"{timeout:.0f}초 안에 {what}수집(scrape) 대상이 {health} 이(가) 되지 않았습니다: "
                              f"{'; '.join(bad) or '대상 없음'}")

    def wait_for(self, expr: str, predicate: Callable[[float | None], bool], timeout: float = 15.0,
                 interval: float = 0.1) -> float | None:
        """Poll `value(expr)` until `predicate(value)` holds; returns the value (raises on timeout)."""
        deadline = time.monotonic() + timeout
        v = None
        while time.monotonic() < deadline:
            v = self.value(expr)
            if predicate(v):
                return v
            time.sleep(interval)
        raise PrometheusError(f"{timeout:.0f}초 안에 `{expr}` 가 기대한 값이 되지 않았습니다 (마지막 값: {v}).")

    def rules(self) -> list[dict[str, Any]]:
        return self._get_json("/api/v1/rules")["groups"]

    def alerts(self) -> list[dict[str, Any]]:
        """Active alerts (state pending or firing) with labels and activeAt."""
        return self._get_json("/api/v1/alerts")["alerts"]

    def reload(self) -> None:
        r = self._client.post("/-/reload")
        if r.status_code != 200:
            raise PrometheusError(f"prometheus 설정 다시 읽기 실패: HTTP {r.status_code}: {r.text.strip()}")


class Alertmanager(_Server):
    """A real Alertmanager on loopback, clustering off (no gossip port)."""

    name = "alertmanager"
    config_name = "alertmanager.yml"

    def _args(self, config_path: Path) -> list[str]:
        return [_tool("alertmanager"), f"--config.file={config_path}",
                f"--storage.path={self.folder / 'data'}", f"--web.listen-address={self.address}",
                "--cluster.listen-address=",
                "--log.level=warn"]

    def alerts(self) -> list[dict[str, Any]]:
        """Alerts Alertmanager holds (API v2)."""
        return self._get_json("/api/v2/alerts")


def _parse_time(stamp: str) -> float:
    """RFC 3339 from Prometheus (nanoseconds, Z or offset) -> unix seconds; 0.0 when unset."""
    if not stamp or stamp.startswith("0001-"):
        return 0.0
    from datetime import datetime

    s = stamp.replace("Z", "+00:00")
    if "." in s:  # trim fractional seconds to microseconds for fromisoformat
        head, rest = s.split(".", 1)
        frac = "".join(ch for ch in rest if ch.isdigit())
        tz = rest[len(frac):]
        s = f"{head}.{frac[:6].ljust(6, '0')}{tz}"
    return datetime.fromisoformat(s).timestamp()


# --------------------------------------------------------------------------- webhook receiver
@dataclass
class Delivery:
    """One webhook POST from Alertmanager: its JSON payload and when it arrived."""

    payload: dict[str, Any]
    received_at: float  # time.time()
    received_monotonic: float = field(repr=False, default=0.0)

    @property
    def alerts(self) -> list[dict[str, Any]]:
        return self.payload.get("alerts", [])


class WebhookReceiver:
    """A tiny HTTP server (a thread) on 127.0.0.1:<free port> that records what Alertmanager
    delivers. `url` goes into `alertmanager_config`; `wait_for_alert(name)` waits with a deadline."""

    def __init__(self):
        self.deliveries: list[Delivery] = []
        self._cond = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                try:
                    payload = json.loads(raw or b"{}")
                except ValueError:
                    payload = {"_invalid": raw.decode("utf-8", "replace")}
                with receiver._cond:
                    receiver.deliveries.append(Delivery(payload, time.time(), time.monotonic()))
                    receiver._cond.notify_all()
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):  # quiet
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/alerts"

    def start(self) -> WebhookReceiver:
        if self._thread is None:
            self._thread = threading.Thread(target=self._server.serve_forever, name="webhook", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> WebhookReceiver:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def alerts(self, name: str | None = None, status: str | None = None) -> list[dict[str, Any]]:
        """Every delivered alert (flattened), optionally only `alertname == name` and `status`."""
        with self._cond:
            out = [a for d in self.deliveries for a in d.alerts]
        return [a for a in out
                if (name is None or a.get("labels", {}).get("alertname") == name)
                and (status is None or a.get("status") == status)]

    def wait_for_alert(self, name: str, status: str = "firing", timeout: float = 30.0) -> Delivery | None:
        """The first delivery carrying alert `name` with `status`, waiting up to `timeout` s (None if none)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for d in self.deliveries:
                    if any(a.get("labels", {}).get("alertname") == name and a.get("status") == status
                           for a in d.alerts):
                        return d
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)
