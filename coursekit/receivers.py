"""Stand-ins for two hosted services of step 05: Sentry (error tracking) and LangSmith (LLM tracing).

Neither has a server that can run here, so — like the Gemini simulator — the kit receives what
their real SDKs send and keeps it, so the grader and the lesson can read it:

    from coursekit.receivers import SentryReceiver, LangSmithReceiver

    with SentryReceiver() as sentry, LangSmithReceiver() as smith:
        env = {"SENTRY_DSN": sentry.dsn, **smith.env()}   # for a service process
        ...
        sentry.events()     # the error events, parsed (envelopes and the old /store/ endpoint)
        smith.runs()        # the runs, post + patch merged by id
        sentry.raw(), smith.raw()   # every request exactly as sent (bytes, headers)

Each receiver is a ThreadingHTTPServer in a thread on 127.0.0.1:<free port>; a context manager,
and stopped at exit. The bodies are kept exactly as received (`raw()`), and decoded (gzip, br,
deflate, zstd) for the parsed views. Messages meant for people are Korean.
"""

from __future__ import annotations

import email.parser
import email.policy
import gzip
import json
import threading
import time
import uuid
import zlib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from .procs import Registry

__all__ = ["LangSmithReceiver", "Received", "SentryReceiver", "decode_body", "parse_envelope", "running", "stop_all"]


# --------------------------------------------------------------------------- common
@dataclass
class Received:
    """One HTTP request as it arrived: method, path (with query), headers, body bytes as sent."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    received_at: float = field(default_factory=time.time)

    @property
    def content_encoding(self) -> str:
        return self.headers.get("content-encoding", "").strip().lower()

    def decoded(self) -> bytes:
        """The body after its Content-Encoding (gzip, br, deflate, zstd) is undone."""
        return decode_body(self.body, self.content_encoding)

    def text(self) -> str:
        """The decoded body as text (for secret and prompt scans)."""
        return self.decoded().decode("utf-8", "replace")


def decode_body(body: bytes, encoding: str | None) -> bytes:
    """Undo a Content-Encoding: gzip, br (brotli), deflate, zstd; identity otherwise."""
    enc = (encoding or "").strip().lower()
    if not enc or enc == "identity":
        return body
    if enc in ("gzip", "x-gzip"):
        return gzip.decompress(body)
    if enc == "deflate":
        try:
            return zlib.decompress(body)
        except zlib.error:
            return zlib.decompress(body, -zlib.MAX_WBITS)
    if enc == "br":
        import brotli

        return brotli.decompress(body)
    if enc == "zstd":
        import zstandard

        import io

        with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(body), read_across_frames=True) as r:
            return r.read()
    raise ValueError(f"모르는 Content-Encoding: {encoding}")


# What this module started: listed by running(), stopped by stop_all() and at exit (by PID).
_STARTED = Registry("stop", only_alive=False)
running = _STARTED.running
stop_all = _STARTED.stop_all


class _Receiver:
    """A ThreadingHTTPServer in a daemon thread on 127.0.0.1:<free port> that records requests."""

    name = "receiver"

    def __init__(self) -> None:
        self._requests: list[Received] = []
        self._cond = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    body = _read_chunked(self.rfile)
                else:
                    body = self.rfile.read(length) if length else b""
                req = Received(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                try:
                    status, payload = receiver._route(req)
                except Exception as exc:  # a bug or a malformed body: answer 400, keep the request
                    status, payload = 400, {"error": f"{type(exc).__name__}: {exc}"}
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = do_PUT = _handle

            def log_message(self, *args):  # quiet
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    # -- to implement: (status, JSON payload)
    def _route(self, req: Received) -> tuple[int, Any]:
        raise NotImplementedError

    def _record(self, req: Received) -> None:
        with self._cond:
            self._requests.append(req)
            self._cond.notify_all()

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        return self._thread is not None

    def start(self):
        if self._thread is None:
            self._thread = threading.Thread(target=self._server.serve_forever, name=self.name, daemon=True)
            self._thread.start()
            _STARTED.add(self)
        return self

    def stop(self) -> None:
        _STARTED.discard(self)
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._server.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url if self.alive else '멈춤'}, 요청 {len(self._requests)}개>"

    def raw(self) -> list[Received]:
        """Every recorded request, oldest first, body bytes exactly as sent."""
        with self._cond:
            return list(self._requests)

    def clear(self) -> None:
        """Forget everything received so far."""
        with self._cond:
            self._requests.clear()

    def _wait(self, count, n: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                if count() >= n:
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.2))


def _read_chunked(rfile) -> bytes:
    out = bytearray()
    while True:
        size = int(rfile.readline().split(b";")[0].strip() or b"0", 16)
        if size == 0:
            rfile.readline()
            return bytes(out)
        out += rfile.read(size)
        rfile.readline()


# --------------------------------------------------------------------------- Sentry
def parse_envelope(data: bytes) -> dict[str, Any]:
    """A Sentry envelope (https://develop.sentry.dev/sdk/data-model/envelopes/): a JSON header line,
    then items, each a JSON item header line and a payload (`length` bytes, or up to the next newline).
    Returns {"header": {...}, "items": [{"header": {...}, "payload": <JSON value or bytes>}]}."""
    pos = data.find(b"\n")
    header = json.loads(data[:pos] if pos >= 0 else data)
    items = []
    pos = len(data) if pos < 0 else pos + 1
    while pos < len(data):
        end = data.find(b"\n", pos)
        line = data[pos:] if end < 0 else data[pos:end]
        pos = len(data) if end < 0 else end + 1
        if not line.strip():
            continue
        item_header = json.loads(line)
        length = item_header.get("length")
        if length is not None:
            payload = data[pos:pos + length]
            pos += length
            if pos < len(data) and data[pos:pos + 1] == b"\n":
                pos += 1
        else:
            end = data.find(b"\n", pos)
            payload = data[pos:] if end < 0 else data[pos:end]
            pos = len(data) if end < 0 else end + 1
        try:
            value: Any = json.loads(payload)
        except ValueError:
            value = payload
        items.append({"header": item_header, "payload": value})
    return {"header": header, "items": items}


class SentryReceiver(_Receiver):
    """Receives what `sentry_sdk` sends to a DSN: `POST /api/<project_id>/envelope/` (envelopes)
    and the older `POST /api/<project_id>/store/` (one JSON event), plain or compressed.

    `dsn` goes into `sentry_sdk.init(dsn=...)` (or SENTRY_DSN); `events()` are the error events,
    `envelopes()` everything parsed, `raw()` the requests exactly as sent.
    """

    name = "sentry-receiver"

    def __init__(self, project_id: int = 1, public_key: str = "coursekey") -> None:
        super().__init__()
        self.project_id, self.public_key = project_id, public_key

    @property
    def dsn(self) -> str:
        return f"http://{self.public_key}@127.0.0.1:{self.port}/{self.project_id}"

    def _route(self, req: Received) -> tuple[int, Any]:
        path = urlsplit(req.path).path.rstrip("/")
        if req.method == "POST" and path in (f"/api/{self.project_id}/envelope", f"/api/{self.project_id}/store"):
            self._record(req)
            event_id = None
            try:
                parsed = self._parse(req)
                event_id = (parsed["header"] or {}).get("event_id")
            except Exception:
                pass
            return 200, {"id": event_id or uuid.uuid4().hex}
        return 404, {"detail": f"알 수 없는 경로: {req.method} {req.path}"}

    @staticmethod
    def _parse(req: Received) -> dict[str, Any]:
        body = req.decoded()
        if urlsplit(req.path).path.rstrip("/").endswith("/store"):
            event = json.loads(body)
            return {"header": {"event_id": event.get("event_id")},
                    "items": [{"header": {"type": event.get("type", "event")}, "payload": event}]}
        return parse_envelope(body)

    def envelopes(self) -> list[dict[str, Any]]:
        """Every received envelope, parsed (a /store/ event becomes an envelope with one item)."""
        out = []
        for req in self.raw():
            try:
                out.append(self._parse(req))
            except Exception as exc:
                out.append({"header": {}, "items": [], "error": f"{type(exc).__name__}: {exc}"})
        return out

    def items(self, type: str | None = None) -> list[dict[str, Any]]:
        """Every item of every envelope ({"header", "payload"}), optionally only of `type`
        ("event", "transaction", "session", "client_report", ...)."""
        return [i for e in self.envelopes() for i in e["items"]
                if type is None or i["header"].get("type") == type]

    def events(self) -> list[dict[str, Any]]:
        """The error events (items of type "event"), parsed JSON, oldest first."""
        return [i["payload"] for i in self.items("event") if isinstance(i["payload"], dict)]

    def wait_for_events(self, n: int = 1, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Wait until at least `n` error events arrived (the SDK sends from a background thread)."""
        self._wait(lambda: len(self.events()), n, timeout)
        return self.events()


# --------------------------------------------------------------------------- LangSmith
_RUN_FIELDS_IN_PARTS = ("inputs", "outputs", "events", "extra", "error", "serialized")


def _multipart(content_type: str, body: bytes) -> list[tuple[str, dict[str, str], bytes]]:
    """(name, headers, payload bytes) of each part of a multipart/form-data body."""
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body)
    parts = []
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition") or ""
        parts.append((name, {k.lower(): str(v) for k, v in part.items()}, part.get_payload(decode=True) or b""))
    return parts


class LangSmithReceiver(_Receiver):
    """Receives what the `langsmith` client (and LangChain tracing) sends to `LANGSMITH_ENDPOINT`:
    `GET /info`, `POST /runs`, `POST /runs/batch`, `POST /runs/multipart` (plain or zstd),
    `PATCH /runs/<id>`. `runs()` merges each run's post and patches by id; `raw()` keeps
    every request exactly as sent. `env()` switches a process's tracing to this receiver.

    `multipart=False` makes `GET /info` tell the client to use `/runs/batch` instead;
    `compression=False` makes it send multipart bodies uncompressed (by default zstd, as the
    hosted service allows).
    """

    name = "langsmith-receiver"

    def __init__(self, *, multipart: bool = True, compression: bool = True) -> None:
        super().__init__()
        self.multipart, self.compression = multipart, compression

    @property
    def endpoint(self) -> str:
        return self.url

    def env(self, project: str = "llm-chat", api_key: str = "lsv2-course-receiver") -> dict[str, str]:
        """LangSmith's documented environment variables pointing at this receiver."""
        return {"LANGSMITH_TRACING": "true", "LANGSMITH_ENDPOINT": self.endpoint,
                "LANGSMITH_API_KEY": api_key, "LANGSMITH_PROJECT": project}

    def info(self) -> dict[str, Any]:
        """What `GET /info` answers (the client's LangSmithInfo)."""
        return {"version": "0.0.0-course-receiver", "license_expiration_time": None,
                "batch_ingest_config": {"use_multipart_endpoint": self.multipart,
                                        "scale_up_qsize_trigger": 1000, "scale_up_nthreads_limit": 16,
                                        "scale_down_nempty_trigger": 4, "size_limit": 100,
                                        "size_limit_bytes": 20_971_520},
                "instance_flags": {"zstd_compression_enabled": self.compression}}

    def _route(self, req: Received) -> tuple[int, Any]:
        path = urlsplit(req.path).path.rstrip("/")
        if req.method == "GET" and path == "/info":
            return 200, self.info()
        if req.method == "POST" and path in ("/runs", "/runs/batch"):
            self._record(req)
            return 202, {}
        if req.method == "POST" and path == "/runs/multipart":
            self._record(req)
            return 202, {}
        if req.method == "PATCH" and path.startswith("/runs/") and path.count("/") == 2:
            self._record(req)
            return 202, {}
        return 404, {"detail": f"알 수 없는 경로: {req.method} {req.path}"}

    def operations(self) -> list[tuple[str, dict[str, Any]]]:
        """Every run operation received, in order: ("post" | "patch", fields)."""
        ops: list[tuple[str, dict[str, Any]]] = []
        for req in self.raw():
            path = urlsplit(req.path).path.rstrip("/")
            body = req.decoded()
            if req.method == "PATCH":
                ops.append(("patch", {**json.loads(body or b"{}"), "id": path.rsplit("/", 1)[1]}))
            elif path == "/runs":
                ops.append(("post", json.loads(body)))
            elif path == "/runs/batch":
                data = json.loads(body)
                ops += [("post", r) for r in data.get("post") or []]
                ops += [("patch", r) for r in data.get("patch") or []]
            elif path == "/runs/multipart":
                ops += self._multipart_ops(req.headers.get("content-type", ""), body)
        return ops

    @staticmethod
    def _multipart_ops(content_type: str, body: bytes) -> list[tuple[str, dict[str, Any]]]:
        ops: dict[tuple[str, str], dict[str, Any]] = {}
        order: list[tuple[str, str]] = []
        for name, _headers, payload in _multipart(content_type, body):
            bits = name.split(".")
            if len(bits) < 2 or bits[0] not in ("post", "patch"):
                continue  # attachments, feedback
            key = (bits[0], bits[1])
            if key not in ops:
                ops[key] = {"id": bits[1]}
                order.append(key)
            value = json.loads(payload) if payload else None
            if len(bits) == 2:
                ops[key].update(value or {})
            elif bits[2] in _RUN_FIELDS_IN_PARTS:
                ops[key][bits[2]] = value
        return [(k[0], ops[k]) for k in order]

    def runs(self) -> list[dict[str, Any]]:
        """Every run, post and patches merged by id (later values win), in order of first appearance."""
        runs: dict[str, dict[str, Any]] = {}
        for _kind, fields in self.operations():
            rid = str(fields.get("id"))
            runs.setdefault(rid, {}).update(fields)
        return list(runs.values())

    def wait_for_runs(self, n: int = 1, timeout: float = 10.0, ended: bool = True) -> list[dict[str, Any]]:
        """Wait until at least `n` runs arrived (with an `end_time` when `ended`)."""
        def count() -> int:
            return sum(1 for r in self.runs() if not ended or r.get("end_time"))

        self._wait(count, n, timeout)
        return self.runs()
