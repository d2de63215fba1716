"""The real, self-hosted LLM trace backend of step 05: an MLflow tracing server.

MLflow (Apache-2.0) pins versions that conflict with the course venv, so it lives in its own
venv `.venv-mlflow/` at the repository root, created once by `ensure_backend()` (`make
tracing-backend`; `make test` and `make lab` depend on it). The lesson and the grader use it
like this (no pytest, no grader internals needed):

    from coursekit import tracing

    tracing.ensure_backend()                  # installs mlflow==3.17.2 once (Korean progress)
    with tracing.MLflowServer() as mlf:       # loopback, free port, sqlite in a temp folder
        env = mlf.env()                       # OTEL_EXPORTER_OTLP_TRACES_ENDPOINT / _HEADERS
        ...                                   # start the service with env, send requests
        trace = mlf.wait_for_trace(trace_id)  # MLflow's REST API: info, tags, token usage
        spans = mlf.spans(trace_id)           # every span with its attributes (gen_ai.*)

The server is waited for with a deadline (`/health`), an experiment is created for the run,
spans arrive over OTLP/HTTP (`POST /v1/traces` with header `x-mlflow-experiment-id`), and the
process is stopped by its PID (SIGTERM, then SIGKILL); the folder is removed. Everything still
running is stopped at exit. Messages meant for people are Korean.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from .procs import Registry, free_port, skip_or_fail, stop_process, wait_until

__all__ = [
    "MLFLOW_VERSION",
    "BACKEND_DIR",
    "MLflowServer",
    "TracingError",
    "backend_python",
    "ensure_backend",
    "find_backend",
    "install_record",
    "mlflow_trace_id",
    "missing_note",
    "require_backend",
    "running",
    "stop_all",
]

MLFLOW_VERSION = "3.17.2"
# A running server to share instead of starting one per MLflowServer (maintainers' test runs: one
# server for every grading subprocess saves its ~12 s start-up each time). Each user still gets an
# experiment of its own, so traces never mix.
SHARED_URL_ENV = "COURSE_MLFLOW_URL"
REPO_ROOT = Path(__file__).resolve().parent.parent
BACKEND_DIR = REPO_ROOT / ".venv-mlflow"
# The folder can be moved (e.g. a shared, prebuilt venv in CI) with COURSE_MLFLOW_VENV.
_ENV_DIR = "COURSE_MLFLOW_VENV"
INSTALL_HINT = "설치: make tracing-backend (또는 python -m coursekit.tracing)"


class TracingError(RuntimeError):
    """The backend is missing, did not start, or answered an error (Korean message)."""


# --------------------------------------------------------------------------- the backend venv
def _backend_dir() -> Path:
    return Path(os.environ.get(_ENV_DIR) or BACKEND_DIR)


def backend_python(folder: str | os.PathLike | None = None) -> Path:
    """The python of the MLflow venv (it may not exist yet)."""
    return Path(folder or _backend_dir()) / "bin" / "python"


def _stamp(folder: Path) -> Path:
    return folder / f".installed-mlflow-{MLFLOW_VERSION}"


def find_backend() -> Path | None:
    """The `mlflow` executable of a complete `.venv-mlflow` with the pinned version, else None."""
    folder = _backend_dir()
    exe = folder / "bin" / "mlflow"
    if _stamp(folder).is_file() and exe.is_file() and os.access(exe, os.X_OK):
        return exe
    return None


def missing_note(reason: str = "MLflow 추적 서버가 필요합니다") -> str:
    """The Korean note shown when the backend is missing (lessons print it, tests skip with it)."""
    return f"MLflow {MLFLOW_VERSION} 추적 백엔드(.venv-mlflow)가 없어 건너뜁니다: {reason}. {INSTALL_HINT}"


def require_backend(reason: str = "MLflow 추적 서버가 필요합니다") -> Path:
    """Inside pytest: skip with a Korean note when the backend is missing, or fail under
    COURSE_REQUIRE_TOOLS=1 (the rule of `coursekit.procs.skip_or_fail`)."""
    exe = find_backend()
    if exe is None:
        skip_or_fail(missing_note(reason))
    return exe  # type: ignore[return-value]


def _disk_bytes(folder: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            p = os.path.join(root, name)
            if not os.path.islink(p):
                try:
                    total += os.lstat(p).st_size
                except OSError:
                    pass
    return total


def ensure_backend(*, quiet: bool = False, python: str | None = None) -> Path:
    """Create `.venv-mlflow/` with `mlflow==3.17.2` if it is missing; return the `mlflow` executable.

    Prints Korean progress and the measured install time and disk size. A half-finished venv
    (no stamp file) is removed and made again. Raises TracingError when pip fails.
    """
    folder = _backend_dir()
    exe = find_backend()
    say = (lambda *_a: None) if quiet else (lambda msg: print(msg, flush=True))
    if exe is not None:
        say(f"MLflow {MLFLOW_VERSION} 추적 백엔드가 이미 있습니다: {folder}")
        return exe
    if folder.exists():
        say(f"완성되지 않은 {folder} 를 지우고 다시 만듭니다.")
        shutil.rmtree(folder)
    say(f"MLflow {MLFLOW_VERSION} 추적 백엔드를 {folder} 에 설치합니다 (코스 venv 와 버전이 충돌해 별도 venv, 1분 안팎)...")
    started = time.monotonic()
    base = python or sys.executable
    steps = [
        [base, "-m", "venv", str(folder)],
        [str(backend_python(folder)), "-m", "pip", "install", "--quiet", "--upgrade", "pip"],
        [str(backend_python(folder)), "-m", "pip", "install", "--quiet", f"mlflow=={MLFLOW_VERSION}"],
    ]
    for cmd in steps:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
            raise TracingError(f"MLflow 백엔드 설치 실패 (종료 코드 {proc.returncode}): {' '.join(cmd)}\n{tail}")
    seconds = time.monotonic() - started
    size_mb = _disk_bytes(folder) / 1e6
    _stamp(folder).write_text(json.dumps({"mlflow": MLFLOW_VERSION, "install_seconds": round(seconds, 1),
                                          "disk_mb": round(size_mb)}), encoding="utf-8")
    say(f"설치 완료: {seconds:.0f}초, 디스크 {size_mb:.0f} MB ({folder})")
    return folder / "bin" / "mlflow"


def install_record() -> dict[str, Any] | None:
    """What `ensure_backend` measured when it installed the backend ({mlflow, install_seconds, disk_mb})."""
    stamp = _stamp(_backend_dir())
    try:
        return json.loads(stamp.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return None


# --------------------------------------------------------------------------- the server
# What this module started: listed by running(), stopped by stop_all() and at exit (by PID).
_STARTED = Registry("stop")
running = _STARTED.running
stop_all = _STARTED.stop_all


def _stop_group(process: subprocess.Popen, grace: float) -> None:
    """`mlflow server` runs uvicorn and a job runner as its children, all in the process group
    this module created for it (start_new_session): SIGTERM that group by the PID we started,
    SIGKILL it after `grace` seconds."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    try:  # children left behind (or the leader after grace): SIGKILL the group
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    stop_process(process, grace=1.0)

    def _group_gone() -> bool:
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    wait_until(_group_gone, timeout=5.0)


def _hex_id(value: str | None) -> str | None:
    """OTLP/JSON ids from MLflow are base64; the W3C form (and our logs) use lowercase hex."""
    if not value:
        return None
    try:
        return base64.b64decode(value).hex()
    except (ValueError, binascii.Error):
        return value


def _any_value(v: dict[str, Any]) -> Any:
    """An OTLP AnyValue ({"string_value": ...}, {"int_value": ...}, ...) as a Python value."""
    if "string_value" in v:
        return v["string_value"]
    if "int_value" in v:
        return int(v["int_value"])
    if "double_value" in v:
        return float(v["double_value"])
    if "bool_value" in v:
        return bool(v["bool_value"])
    if "array_value" in v:
        return [_any_value(x) for x in v["array_value"].get("values", [])]
    if "kvlist_value" in v:
        return {x["key"]: _any_value(x.get("value", {})) for x in v["kvlist_value"].get("values", [])}
    if "bytes_value" in v:
        return v["bytes_value"]
    return None


def _span(raw: dict[str, Any]) -> dict[str, Any]:
    attrs = raw.get("attributes") or []
    if isinstance(attrs, list):
        attributes = {a["key"]: _any_value(a.get("value", {})) for a in attrs}
    else:
        attributes = dict(attrs)
    start, end = int(raw.get("start_time_unix_nano", 0)), int(raw.get("end_time_unix_nano", 0))
    return {"name": raw.get("name"), "trace_id": _hex_id(raw.get("trace_id")),
            "span_id": _hex_id(raw.get("span_id")), "parent_span_id": _hex_id(raw.get("parent_span_id")),
            "kind": raw.get("kind"), "start_ns": start, "end_ns": end,
            "duration_ms": round((end - start) / 1e6, 3) if end and start else None,
            "status": raw.get("status") or {}, "events": raw.get("events") or [], "attributes": attributes}


def _trace_info(info: dict[str, Any]) -> dict[str, Any]:
    meta = dict(info.get("trace_metadata") or {})

    def _json(key: str) -> Any:
        try:
            return json.loads(meta[key]) if key in meta else None
        except ValueError:
            return None

    tid = info.get("trace_id", "")
    return {"trace_id": tid, "otel_trace_id": tid.removeprefix("tr-"),
            "experiment_id": ((info.get("trace_location") or {}).get("mlflow_experiment") or {}).get("experiment_id"),
            "state": info.get("state"), "request_time": info.get("request_time"),
            "execution_duration": info.get("execution_duration"),
            "token_usage": _json("mlflow.trace.tokenUsage"), "cost": _json("mlflow.trace.cost"),
            "metadata": meta, "tags": dict(info.get("tags") or {})}


def mlflow_trace_id(trace_id: str) -> str:
    """MLflow's id of a trace ("tr-" + the 32-hex OpenTelemetry trace id) from either form."""
    return trace_id if trace_id.startswith("tr-") else f"tr-{trace_id.lower()}"


class MLflowServer:
    """A real `mlflow server` on 127.0.0.1:<free port>, sqlite and artifacts in a temporary folder,
    one experiment created for this run. Stopped by PID (its process group), folder removed.

    `env()` gives a service process the standard OpenTelemetry exporter variables; traces and
    spans are read back through MLflow's REST API (`traces()`, `trace()`, `spans()`, `wait_for_trace()`).
    """

    name = "mlflow"
    port_retries = 3

    def __init__(self, *, experiment: str = "llm-chat", timeout: float = 90.0, workers: int = 1,
                 share: bool = True):
        self.experiment_name, self.timeout, self.workers = experiment, timeout, workers
        self.share = share  # attach to $COURSE_MLFLOW_URL when it is set
        self.attached = False
        self.port: int = 0
        self.folder: Path | None = None
        self.process: subprocess.Popen | None = None
        self.experiment_id: str | None = None
        self.startup_seconds: float | None = None
        self.last_log = ""
        self._client: httpx.Client | None = None

    # -- properties
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def alive(self) -> bool:
        return self.attached or (self.process is not None and self.process.poll() is None)

    @property
    def otlp_endpoint(self) -> str:
        """OTLP/HTTP traces endpoint (protobuf or JSON): `<url>/v1/traces`."""
        return f"{self.url}/v1/traces"

    @property
    def otlp_headers(self) -> dict[str, str]:
        """The header MLflow needs on every OTLP request: which experiment the spans go to."""
        return {"x-mlflow-experiment-id": str(self.experiment_id)}

    def env(self) -> dict[str, str]:
        """Environment variables for a service process: the standard OpenTelemetry exporter settings
        (`OTLPSpanExporter()` reads them; headers as `key=value`, comma-separated)."""
        return {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": self.otlp_endpoint,
                "OTEL_EXPORTER_OTLP_TRACES_HEADERS": ",".join(f"{k}={v}" for k, v in self.otlp_headers.items())}

    def ui_url(self, trace_id: str | None = None) -> str:
        """The MLflow UI page of the experiment's traces (or of one trace)."""
        base = f"{self.url}/#/experiments/{self.experiment_id}/traces"
        return base if trace_id is None else f"{base}?selectedEvaluationId={mlflow_trace_id(trace_id)}"

    def log(self) -> str:
        if self.folder is None:
            return self.last_log
        try:
            return (self.folder / "mlflow.log").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    # -- lifecycle
    def start(self) -> MLflowServer:
        if self.alive:
            return self
        shared = os.environ.get(SHARED_URL_ENV, "").strip() if self.share else ""
        if shared:
            return self._attach(shared)
        exe = find_backend()
        if exe is None:
            raise TracingError(f"MLflow {MLFLOW_VERSION} 추적 백엔드(.venv-mlflow)가 없습니다. {INSTALL_HINT}")
        for attempt in range(self.port_retries):
            self.folder = Path(tempfile.mkdtemp(prefix="course-mlflow-"))
            self.port = free_port()
            # No job runner (huey consumers: about 8 more processes, for evaluation jobs; tracing
            # and its token usage do not need them), no telemetry.
            env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true",
                   "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "PYTHONUNBUFFERED": "1"}
            for var in ("MLFLOW_TRACKING_URI", "VIRTUAL_ENV", "PYTHONPATH"):
                env.pop(var, None)
            args = [str(exe), "server", "--host", "127.0.0.1", "--port", str(self.port),
                    "--workers", str(self.workers),
                    "--backend-store-uri", f"sqlite:///{self.folder / 'mlflow.db'}",
                    "--default-artifact-root", (self.folder / "artifacts").as_uri()]
            started = time.monotonic()
            with open(self.folder / "mlflow.log", "wb") as out:
                self.process = subprocess.Popen(args, cwd=self.folder, env=env, stdout=out,
                                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                                start_new_session=True)
            _STARTED.add(self)
            self._client = httpx.Client(base_url=self.url, timeout=30.0)
            if self._wait_ready(started + self.timeout):
                self.startup_seconds = round(time.monotonic() - started, 2)
                self.experiment_id = self.create_experiment(self.experiment_name)
                return self
            exited = self.process.poll() is not None
            self.stop()
            if "address already in use" in self.last_log and attempt + 1 < self.port_retries:
                continue
            tail = "\n".join(self.last_log.splitlines()[-15:])
            what = (f"시작하자마자 종료되었습니다 (종료 코드 {self.process.returncode})" if exited
                    else f"{self.timeout:.0f}초 안에 준비되지 않았습니다 ({self.url}/health)")
            raise TracingError(f"MLflow 서버가 {what}.\n--- mlflow 로그 (마지막 줄) ---\n{tail}")
        raise AssertionError("unreachable")

    def _attach(self, url: str) -> MLflowServer:
        """Use the running server at `url` (no process of ours) with a fresh experiment."""
        import uuid

        try:
            self.port = int(httpx.URL(url).port or 0)
        except (ValueError, TypeError):
            self.port = 0
        if not self.port:
            raise TracingError(f"{SHARED_URL_ENV}={url!r} 에서 포트를 읽을 수 없습니다 (예: http://127.0.0.1:5000).")
        self._client = httpx.Client(base_url=self.url, timeout=30.0)
        started = time.monotonic()
        try:
            ok = self._client.get("/health", timeout=5.0).status_code == 200
        except httpx.HTTPError:
            ok = False
        if not ok:
            self._client.close()
            self._client = None
            raise TracingError(f"{SHARED_URL_ENV}={url} 의 MLflow 서버가 응답하지 않습니다 (/health).")
        self.attached = True
        self.startup_seconds = round(time.monotonic() - started, 2)
        self.experiment_id = self.create_experiment(f"{self.experiment_name}-{uuid.uuid4().hex[:12]}")
        return self

    def _wait_ready(self, deadline: float) -> bool:
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                if self._client.get("/health", timeout=1.0).status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        return False

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM the server's process group by its PID, SIGKILL after `grace` s; remove the folder."""
        _STARTED.discard(self)
        if self._client is not None:
            self._client.close()
            self._client = None
        self.attached = False  # a shared server is not ours to stop
        if self.process is not None:
            _stop_group(self.process, grace)
        if self.folder is not None:
            self.last_log = self.log()
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None

    def __enter__(self) -> MLflowServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"PID {self.pid}, {self.url}, 실험 {self.experiment_id}" if self.alive else "멈춤"
        return f"<MLflowServer {state}>"

    # -- REST API
    def _call(self, method: str, path: str, **kw) -> Any:
        if self._client is None:
            raise TracingError("MLflow 서버가 실행 중이 아닙니다 (start() 먼저).")
        try:
            r = self._client.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise TracingError(f"MLflow {path} 요청 실패: {exc!r}") from exc
        if r.status_code >= 400:
            raise TracingError(f"MLflow {path}: HTTP {r.status_code}: {r.text[:300]}")
        try:
            return r.json()
        except ValueError:
            raise TracingError(f"MLflow {path}: JSON 이 아닌 응답: {r.text[:200]}") from None

    def create_experiment(self, name: str) -> str:
        """Create an experiment (a fresh place for traces); returns its id."""
        return str(self._call("POST", "/api/2.0/mlflow/experiments/create", json={"name": name})["experiment_id"])

    def traces(self, experiment_id: str | None = None, max_results: int = 500) -> list[dict[str, Any]]:
        """Trace infos of the experiment, newest first: trace_id ("tr-..."), otel_trace_id (32 hex),
        state, request_time, execution_duration, token_usage ({input_tokens, output_tokens,
        total_tokens} aggregated by MLflow from the spans' gen_ai.usage.*), cost, metadata, tags."""
        eid = str(experiment_id or self.experiment_id)
        out: list[dict[str, Any]] = []
        token = None
        while len(out) < max_results:
            body: dict[str, Any] = {"locations": [{"type": "MLFLOW_EXPERIMENT",
                                                   "mlflow_experiment": {"experiment_id": eid}}],
                                    "max_results": min(100, max_results - len(out))}
            if token:
                body["page_token"] = token
            data = self._call("POST", "/api/3.0/mlflow/traces/search", json=body)
            out += [_trace_info(t) for t in data.get("traces", [])]
            token = data.get("next_page_token")
            if not token:
                break
        return out

    def trace(self, trace_id: str) -> dict[str, Any] | None:
        """One trace (by its 32-hex OpenTelemetry id or MLflow's "tr-..." id): the info of
        `traces()` plus "spans" (see `spans`). None when MLflow does not know it (yet)."""
        tid = mlflow_trace_id(trace_id)
        try:
            data = self._call("GET", "/api/3.0/mlflow/traces/get", params={"trace_id": tid})
        except TracingError as exc:
            if "HTTP 404" in str(exc) or "RESOURCE_DOES_NOT_EXIST" in str(exc):
                return None
            raise
        trace = data.get("trace") or {}
        if not trace.get("trace_info"):
            return None
        out = _trace_info(trace["trace_info"])
        out["spans"] = sorted((_span(s) for s in trace.get("spans") or []), key=lambda s: s["start_ns"])
        return out

    def spans(self, trace_id: str) -> list[dict[str, Any]]:
        """The spans of a trace, by start time: name, trace_id/span_id/parent_span_id (hex),
        start_ns, end_ns, duration_ms, status, events, attributes (plain Python values: the
        service's gen_ai.* and the mlflow.* MLflow adds). [] when the trace is unknown."""
        t = self.trace(trace_id)
        return t["spans"] if t else []

    def wait_for_trace(self, trace_id: str, spans: int = 1, timeout: float = 15.0,
                       predicate=None) -> dict[str, Any]:
        """Poll until the trace exists with at least `spans` spans (and `predicate(trace)` holds):
        the service's BatchSpanProcessor sends spans a few seconds after the request. Raises
        TracingError naming what arrived."""
        deadline = time.monotonic() + timeout
        last = None
        while True:
            last = self.trace(trace_id)
            if last and len(last["spans"]) >= spans and (predicate is None or predicate(last)):
                return last
            if time.monotonic() >= deadline:
                break
            time.sleep(0.2)
        got = "추적 없음" if last is None else f"스팬 {len(last['spans'])}개: {[s['name'] for s in last['spans']]}"
        raise TracingError(f"{timeout:.0f}초 안에 추적 {trace_id} 가 MLflow 에 (스팬 {spans}개 이상) 오지 않았습니다 ({got}).")


if __name__ == "__main__":  # python -m coursekit.tracing  (make tracing-backend)
    try:
        ensure_backend()
    except TracingError as exc:
        print(exc, file=sys.stderr)
        sys.exit(1)
