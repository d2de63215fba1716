"""Helpers of the step 05 grader: reading JSON log lines, W3C traceparent values, MLflow spans,
Sentry events and LangSmith runs, scanning what a service wrote for secrets and prompts, Fernet.

Nothing here reads the learner's folder by itself: the grader passes the texts in.
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import re
import secrets
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._-]{8,64}$")
HEX32 = re.compile(r"^[0-9a-f]{32}$")
HEX16 = re.compile(r"^[0-9a-f]{16}$")
# uvicorn's plain access log line: 127.0.0.1:5555 - "POST /chat HTTP/1.1" 200
ACCESS_LINE = re.compile(r'"(GET|POST|PUT|PATCH|DELETE|HEAD|OPTIONS) \S+ HTTP/\d(\.\d)?" \d{3}')

# Fields every request line has (contract), and what /chat adds when known.
REQUIRED = ("timestamp", "level", "request_id", "trace_id", "span_id", "method", "route", "status", "latency_ms")
CHAT_FIELDS = ("model", "prompt_version", "input_tokens", "output_tokens", "cost_usd", "attempts")


# --------------------------------------------------------------------------- log lines
@dataclass
class LogText:
    lines: list[dict] = field(default_factory=list)   # parsed JSON objects
    bad: list[str] = field(default_factory=list)      # non-empty lines that are not JSON objects
    text: str = ""

    def requests(self) -> list[dict]:
        return [d for d in self.lines if d.get("event") == "request"]

    def for_id(self, rid: str | None) -> list[dict]:
        return [d for d in self.requests() if rid is not None and d.get("request_id") == rid]


def parse_lines(text: str) -> LogText:
    out = LogText(text=text)
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            out.bad.append(line)
            continue
        if isinstance(obj, dict):
            out.lines.append(obj)
        else:
            out.bad.append(line)
    return out


def read_dir(folder: Path, pattern: str) -> str:
    """Every file of `folder` matching `pattern` (rotated ones too), oldest rotation first."""
    if not folder.is_dir():
        return ""
    files = sorted(folder.glob(pattern), key=lambda p: (-len(p.suffixes), p.name), reverse=False)
    return "".join(p.read_text(encoding="utf-8", errors="replace") for p in files if p.is_file())


def iso_utc(value: Any) -> bool:
    """An ISO 8601 timestamp with a UTC offset (Z or +00:00)."""
    if not isinstance(value, str):
        return False
    try:
        t = dt.datetime.fromisoformat(value)
    except ValueError:
        return False
    return t.utcoffset() == dt.timedelta(0)


def short_line(d: dict, n: int = 300) -> str:
    s = json.dumps(d, ensure_ascii=False)
    return s if len(s) <= n else s[:n] + "…"


# --------------------------------------------------------------------------- traceparent
def new_traceparent() -> tuple[str, str, str]:
    """(trace id, parent span id, header value) of a sampled W3C traceparent."""
    tid, sid = secrets.token_hex(16), secrets.token_hex(8)
    return tid, sid, f"00-{tid}-{sid}-01"


def parse_traceparent(value: Any) -> tuple[str, str] | None:
    m = re.match(r"^[0-9a-f]{2}-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}$", str(value or "").strip())
    return (m.group(1), m.group(2)) if m else None


# --------------------------------------------------------------------------- spans
@dataclass
class Span:
    name: str
    span_id: str
    parent_id: str | None
    attributes: dict[str, Any]
    status: str = ""


def _plain(v: Any) -> Any:
    """MLflow stores span attributes JSON-encoded ('"chat"', '12'): decode when it is JSON."""
    if isinstance(v, str):
        try:
            return json.loads(v)
        except ValueError:
            return v
    if isinstance(v, dict) and len(v) == 1:  # OTLP AnyValue {"stringValue": ...}
        (k, inner), = v.items()
        if k.endswith("Value"):
            return int(inner) if k == "intValue" else inner
    return v


def _hex_id(v: Any) -> str | None:
    if v in (None, "", b""):
        return None
    s = str(v)
    if re.fullmatch(r"[0-9a-fA-F]{16}", s):
        return s.lower()
    try:  # OTLP JSON / MLflow may give base64 bytes
        import base64

        raw = base64.b64decode(s, validate=True)
        if len(raw) == 8:
            return raw.hex()
    except (ValueError, TypeError):
        pass
    return s.lower().removeprefix("0x")


def to_span(d: dict) -> Span:
    attrs = d.get("attributes") or {}
    if isinstance(attrs, list):  # OTLP list of {"key", "value"}
        attrs = {a.get("key"): a.get("value") for a in attrs if isinstance(a, dict)}
    attrs = {k: _plain(v) for k, v in attrs.items()}
    status = d.get("status") or ""
    if isinstance(status, dict):
        status = status.get("code") or status.get("status_code") or ""
    return Span(
        name=str(d.get("name", "")),
        span_id=_hex_id(d.get("span_id") or d.get("spanId") or d.get("context", {}).get("span_id")) or "",
        parent_id=_hex_id(d.get("parent_span_id") or d.get("parentSpanId") or d.get("parent_id")),
        attributes=attrs,
        status=str(status),
    )


def llm_spans(spans: Iterable[Span]) -> list[Span]:
    return [s for s in spans if s.name.startswith("chat ") or s.attributes.get("gen_ai.operation.name") == "chat"]


def server_spans(spans: list[Span]) -> list[Span]:
    """Spans whose parent is not a span of this trace (the roots of what the service sent)."""
    ids = {s.span_id for s in spans}
    return [s for s in spans if not s.parent_id or s.parent_id not in ids]


# --------------------------------------------------------------------------- sentry / langsmith
def sentry_tag(event: dict, name: str) -> Any:
    tags = event.get("tags") or {}
    if isinstance(tags, dict):
        return tags.get(name)
    for t in tags:
        if isinstance(t, (list, tuple)) and len(t) == 2 and t[0] == name:
            return t[1]
    return None


def decoded(raw: Any) -> str:
    """Text of bytes as sent by an SDK: gzip / deflate undone, else UTF-8 (replacement chars)."""
    if isinstance(raw, str):
        return raw
    if isinstance(raw, (list, tuple)):
        return "\n".join(decoded(r) for r in raw)
    if not isinstance(raw, (bytes, bytearray)):
        return json.dumps(raw, ensure_ascii=False, default=str)
    data = bytes(raw)
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except OSError:
            pass
    elif data[:1] == b"\x78":
        try:
            data = zlib.decompress(data)
        except zlib.error:
            pass
    return data.decode("utf-8", errors="replace")


# --------------------------------------------------------------------------- scanning
def unescaped(text: str) -> str:
    r"""The text with JSON string escapes undone where possible (\uXXXX, \"), so a value logged by
    json.dumps(ensure_ascii=True) is found as well."""
    if "\\u" not in text and '\\"' not in text:
        return text
    return re.sub(r"\\u([0-9a-fA-F]{4})", lambda m: chr(int(m.group(1), 16)), text).replace('\\"', '"')


def scan(places: dict[str, str], needles: dict[str, str]) -> list[str]:
    """Korean findings 'where: what' for every needle found in a place (as is or JSON-escaped)."""
    found = []
    for where, text in places.items():
        if not text:
            continue
        alt = unescaped(text)
        for what, needle in needles.items():
            if needle and (needle in text or needle in alt):
                n = text.count(needle) or alt.count(needle)
                found.append(f"{where}: {what} ({n}번)")
    return found


# --------------------------------------------------------------------------- fernet
def fernet_keys(n: int) -> list[str]:
    from cryptography.fernet import Fernet

    return [Fernet.generate_key().decode() for _ in range(n)]


def decrypt(token: str, keys: list[str]) -> dict | None:
    """The JSON object in a Fernet token decrypted with any of `keys`, else None."""
    from cryptography.fernet import Fernet, InvalidToken, MultiFernet

    try:
        plain = MultiFernet([Fernet(k.encode()) for k in keys]).decrypt(str(token).encode())
        obj = json.loads(plain)
    except (InvalidToken, ValueError, TypeError):
        return None
    return obj if isinstance(obj, dict) else None


def encrypt(obj: dict, key: str) -> str:
    from cryptography.fernet import Fernet

    return Fernet(key.encode()).encrypt(json.dumps(obj, ensure_ascii=False).encode()).decode()
