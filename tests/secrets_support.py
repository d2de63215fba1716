"""The secrets scan of the reliability suite (issue 17): what counts as a key, where it is looked for.

Three passes, each usable on files and on texts:

* detect-secrets (Yelp) for the generic shapes, with two plugins of ours loaded the tool's way
  (`plugins_used` with a `file://` path): Google API keys (`AIza` + 35 characters, which the tool has no
  plugin for) and Authorization / Bearer values. The repository gets every plugin (entropy and keyword ones
  too) with an allowlist of the documented fake values; what a graded run wrote gets the shape plugins only
  (trace ids, request ids and Fernet tokens are high-entropy by design).
* a byte pass over every file (binary ones too: sqlite, DuckDB, Redis dumps, image layers): Google key
  shapes, PEM private keys, and the exact needles;
* the needles: the keys the test planted in the graded run (and any real key of the machine's environment),
  as they are and base64-encoded at the three alignments (Basic auth, base64 payloads).

It is also a pytest plugin for a grading subprocess (`pytest grader -p secrets_support`, with tests/ on
PYTHONPATH and `SECRETS_SCAN_DUMP` set): it plants a Google-shaped key in the selected grader modules'
`GOOGLE_KEY`, writes every key those modules use into <dump>.needles.json, and before each kit object of a fixture is torn down
(MLflow, the Sentry and LangSmith receivers, Redis, nginx, a service) copies what it holds into the dump.

detect-secrets imports this file a second time by path (its custom plugin loader): keep the top level free
of side effects and heavy imports.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import re
import shutil
import tarfile
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any

from detect_secrets.plugins.base import RegexBasedDetector

THIS = Path(__file__).resolve()

GOOGLE_API_KEY_RE = re.compile(r"AIza[0-9A-Za-z_\-]{35}")
# A PEM private key: the header AND a base64 body (also JSON-escaped, \\n), so code that only names the markers
# (google-auth, cryptography, Node's TLS) is not one; optional RFC 1421 headers (Proc-Type, DEK-Info) in between.
PRIVATE_KEY_RE = re.compile(r"-----BEGIN[ A-Z0-9]*PRIVATE KEY(?: BLOCK)?-----(?:\\[rn]|\s)+"
                            r"(?:[\w-]+: [^\n\\]*(?:\\[rn]|\s)+)*[A-Za-z0-9+/=]{40,}")
# A credential after "Authorization:" / "Authorization=" / "Bearer " (header dumps, curl lines, repr of headers).
AUTH_VALUE_RE = re.compile(
    r"""(?i)(?:\bauthorization["']?\s*[:=]\s*["']?(?:bearer|basic|token)\s+|\bbearer\s+)([A-Za-z0-9._~+/\-]{12,}=*)""")

GOOGLE_KIND = "Google API Key"
PEM_KIND = "Private Key"
AUTH_KIND = "Authorization/Bearer value"


class GoogleApiKeyDetector(RegexBasedDetector):
    """Google API keys (Gemini, Maps, Firebase): `AIza` and 35 more characters."""

    secret_type = GOOGLE_KIND
    denylist = (GOOGLE_API_KEY_RE,)


class AuthorizationValueDetector(RegexBasedDetector):
    """The credential of an Authorization header or a Bearer token written out."""

    secret_type = AUTH_KIND
    denylist = (AUTH_VALUE_RE,)


CUSTOM_PLUGINS = [{"name": "GoogleApiKeyDetector", "path": f"file://{THIS}"},
                  {"name": "AuthorizationValueDetector", "path": f"file://{THIS}"}]
# Plugins that measure randomness or look for the word "key": right for source code (with the allowlist),
# wrong for what a service writes (trace ids, request ids, Fernet tokens are random by design).
# detect-secrets' PrivateKeyDetector looks at the header line only: in the repository (noisy mode) that is right;
# elsewhere the byte pass's PRIVATE_KEY_RE (header and body) replaces it.
NOISY_PLUGINS = {"Base64HighEntropyString", "HexHighEntropyString", "KeywordDetector", "IPPublicDetector",
                 "PrivateKeyDetector"}

# Fake values the repository documents or tests with, each with why it is allowed. A finding whose value is
# one of these (or, for the graders' key prefixes, starts a random key made at run time) is not a leak.
ALLOWED_VALUES: dict[str, str] = {
    "lab-service-key": "코스 공통 서비스 키 (README, .env.example, make lab)",
    "sim-any-key": "시뮬레이터용 GOOGLE_API_KEY 자리 표시 (README, .env.example)",
    "docs-build-dummy-key": "문서 빌드가 쓰는 가짜 키 (docs/hooks/course.py)",
    "test-gemini-key": "단계 테스트(tests/conftest.py)의 가짜 키",
    "test-service-key": "단계 테스트(tests/conftest.py)의 가짜 키",
    "YOUR_GEMINI_API_KEY": "문서의 자리 표시",
    "real-key": "tests/test_cli.py 의 가짜 '실제 키' (쓰이지 않아야 함을 검사)",
    "users-real-key": "tests/test_documented_commands.py 의 가짜 '실제 키'",
    "users-real-key-must-not-be-used": "tests/test_cli.py 의 가짜 '실제 키'",
    "grader-service-key-3": "step 03 채점기의 고정 가짜 키",
    "settings.google_api_key": "코드 참조 (값 아님)",
    "AIzaSyD-not-a-real-key-grader-mutant-0000": "step 01 변이(tests/mutants/step01.toml)가 일부러 이미지에 넣는 가짜 키",
    "svc-": "채점기 키의 접두어 (뒤는 실행할 때 만드는 난수)",
    "svc-a-": "채점기 키의 접두어",
    "svc-x-": "채점기 키의 접두어",
    "dotenv-svc-": "채점기 키의 접두어",
    "lab-service-key locust -f locustfile.py": "문서의 명령 (SERVICE_API_KEY=lab-service-key locust ...)",
    "0123456789abcdef0123456789abcdef01234567": "순서대로 늘어놓은 가짜 커밋 해시",
    "1c2d3e4f5a6b": "가짜 도커 이미지 id (tests/test_docker_base.py)",
    "e634109e8c44238c695b70d071dc5dc6ec7de68d370c6725c6b497d2ab8b102e": "프롬프트 파일의 sha256 (tests/test_simulator_prompts.py)",
    "sk-live-7d1f0c": "step 05 레슨이 로그에 남지 않아야 함을 보여 주는 가짜 Bearer 값",
    "ADMIN_TOKEN=from-dotenv\\\\nSUMMARY_MAX_CHARS=500\\\\n\\": "step 02 레슨이 보여 주는 .env 예시 출력",
}
# Placeholders a text may carry in clear (never needles).
PLACEHOLDERS = frozenset({"lab-service-key", "sim-any-key", "docs-build-dummy-key", "lsv2-course-receiver"})
# Environment variables whose value, when set on this machine, must appear in nothing the course builds.
ENV_KEYS = ("GOOGLE_API_KEY", "GEMINI_API_KEY", "SERVICE_API_KEY", "LANGSMITH_API_KEY", "LANGCHAIN_API_KEY",
            "SENTRY_DSN", "OPENAI_API_KEY")
MIN_NEEDLE = 12


@dataclass(frozen=True)
class Finding:
    where: str
    line: int | None
    kind: str
    value: str

    def __str__(self) -> str:
        at = f"{self.where}:{self.line}" if self.line else self.where
        return f"{at}: {self.kind} ({mask(self.value)})"


def mask(value: str) -> str:
    """A finding's value shown without giving it away: its first 6 characters and its length."""
    return f"{value[:6]}… {len(value)}자" if len(value) > 8 else f"{value[:2]}… {len(value)}자"


@dataclass
class Report:
    """What one scan looked at and found."""

    files: int = 0
    bytes: int = 0
    findings: list[Finding] = None  # type: ignore[assignment]
    kinds: dict[str, int] = None  # type: ignore[assignment]  # files by kind of place (e.g. "nginx log")

    def __post_init__(self):
        self.findings = [] if self.findings is None else self.findings
        self.kinds = {} if self.kinds is None else self.kinds

    def add(self, other: Report) -> Report:
        self.files += other.files
        self.bytes += other.bytes
        self.findings += other.findings
        for k, v in other.kinds.items():
            self.kinds[k] = self.kinds.get(k, 0) + v
        return self

    def summary(self) -> str:
        return f"파일 {self.files}개, {self.bytes / 1e6:.1f} MB, 발견 {len(self.findings)}개"

    def message(self, n: int = 30) -> str:
        shown = sorted(set(map(str, self.findings)))
        return "\n".join(shown[:n]) + (f"\n... 외 {len(shown) - n}개" if len(shown) > n else "")


# --------------------------------------------------------------------------- needles
def needle_forms(needle: str) -> dict[str, bytes]:
    """The needle as bytes, and the part of its base64 encoding that does not depend on its neighbours at
    each of the three byte alignments (standard and URL-safe alphabets)."""
    raw = needle.encode()
    forms = {"": raw}
    for k in range(3):
        enc = base64.b64encode(b"\0" * k + raw)
        start, end = -(-8 * k // 6), 8 * (k + len(raw)) // 6
        core = enc[start:end]
        if len(core) >= MIN_NEEDLE:
            forms[f" base64@{k}"] = core
            forms[f" base64url@{k}"] = core.replace(b"+", b"-").replace(b"/", b"_")
    return forms


def env_needles(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The machine's own keys (when set and not a documented placeholder): they must be nowhere either."""
    environ = os.environ if environ is None else environ
    return {f"환경 변수 {k}": v for k in ENV_KEYS if (v := environ.get(k, "").strip())
            and v not in PLACEHOLDERS and len(v) >= MIN_NEEDLE}


def check_needles(needles: dict[str, str]) -> None:
    short = [k for k, v in needles.items() if len(v) < MIN_NEEDLE or v in PLACEHOLDERS]
    if short:
        raise ValueError(f"바늘이 너무 짧거나 자리 표시입니다 (찾으면 오탐): {short}")


# --------------------------------------------------------------------------- byte pass
def _line_of(text: str, index: int) -> int:
    return text.count("\n", 0, index) + 1


def allowed(value: str) -> bool:
    """An allowlisted value, also when the keyword plugin took the rest of a one-line string with it
    (`KEY=value\\nUSER 10001` in a TOML string holding a Dockerfile)."""
    v = value.strip("'\"")
    if value in ALLOWED_VALUES or v in ALLOWED_VALUES or v.split("\\n", 1)[0] in ALLOWED_VALUES:
        return True
    # The same value escaped once more (this file's own allowlist literal, a JSON string inside a notebook):
    # compare with runs of backslashes collapsed to one.
    return _unescaped(v) in {_unescaped(k) for k in ALLOWED_VALUES}


def _unescaped(text: str) -> str:
    return re.sub(r"\\+", r"\\", text)


def scan_bytes(where: str, data: bytes, needles: dict[str, str], *, shapes: bool = True,
               allow_pem: bool = False) -> list[Finding]:
    """Needles (as is and base64), Google key shapes and PEM private keys in `data` (any bytes; gzip and
    zlib streams are also looked into)."""
    out: list[Finding] = []
    blobs = [("", data)]
    if data[:2] == b"\x1f\x8b":
        try:
            blobs.append((" (gzip 풀어서)", gzip.decompress(data)))
        except (OSError, EOFError):
            pass
    elif data[:1] == b"\x78" and len(data) > 2 and (data[0] * 256 + data[1]) % 31 == 0:
        try:
            blobs.append((" (zlib 풀어서)", zlib.decompress(data)))
        except zlib.error:
            pass
    for label, blob in blobs:
        text = blob.decode("latin-1")
        for what, needle in needles.items():
            for form, pattern in needle_forms(needle).items():
                i = blob.find(pattern)
                if i >= 0:
                    out.append(Finding(where + label, _line_of(text, i), f"심은 키 '{what}'{form}", needle))
        if shapes:
            for m in GOOGLE_API_KEY_RE.finditer(text):
                if not allowed(m.group(0)) and not any(allowed(m.group(0) + t) for t in ("", "-", "0000")):
                    out.append(Finding(where + label, _line_of(text, m.start()), GOOGLE_KIND, m.group(0)))
            if not allow_pem:
                for m in PRIVATE_KEY_RE.finditer(text):
                    out.append(Finding(where + label, _line_of(text, m.start()), PEM_KIND, m.group(0)[:60]))
    return [f for f in out if not _allowed_google(f)]


def _allowed_google(f: Finding) -> bool:
    """The step 01 mutant's fake key is longer than the shape: its 39-character prefix is what matches."""
    return f.kind == GOOGLE_KIND and any(v.startswith(f.value) for v in ALLOWED_VALUES if v.startswith("AIza"))


# --------------------------------------------------------------------------- detect-secrets pass
def plugin_config(noisy: bool) -> list[dict[str, Any]]:
    from detect_secrets.core.plugins.util import get_mapping_from_secret_type_to_class

    builtin = [{"name": cls.__name__} for cls in get_mapping_from_secret_type_to_class().values()
               if cls.__module__.startswith("detect_secrets.") and (noisy or cls.__name__ not in NOISY_PLUGINS)]
    return builtin + CUSTOM_PLUGINS


@contextmanager
def detect_secrets_settings(noisy: bool) -> Iterator[None]:
    """detect-secrets configured with our plugin set (its plugin table is cached: cleared on the way in and
    out, so the custom plugins of this file are found and do not stay behind)."""
    from detect_secrets.core.plugins.util import get_mapping_from_secret_type_to_class
    from detect_secrets.settings import get_plugins, transient_settings

    config = plugin_config(noisy)
    with transient_settings({"plugins_used": config}):
        get_mapping_from_secret_type_to_class.cache_clear()
        get_plugins.cache_clear()
        try:
            yield
        finally:
            get_mapping_from_secret_type_to_class.cache_clear()
            get_plugins.cache_clear()


def detect(paths: Iterable[Path], root: Path | None = None, *, noisy: bool = False) -> Report:
    """detect-secrets over text files (`noisy`: the entropy and keyword plugins too). Allowed values dropped."""
    from detect_secrets.core.scan import scan_file

    rep = Report()
    with detect_secrets_settings(noisy):
        for p in paths:
            rep.files += 1
            rep.bytes += p.stat().st_size
            name = str(p.relative_to(root)) if root else str(p)
            for s in scan_file(str(p)):
                value = s.secret_value or ""
                f = Finding(name, s.line_number, s.type, value)
                if not allowed(value) and not _allowed_google(f):
                    rep.findings.append(f)
    return rep


def detect_text(where: str, text: str) -> list[Finding]:
    """detect-secrets' shape plugins (and ours) over a text that is not a file (an HTTP body, headers)."""
    from detect_secrets.core.scan import scan_line

    out = []
    with detect_secrets_settings(False):
        for n, line in enumerate(text.splitlines(), 1):
            for s in scan_line(line):
                value = s.secret_value or ""
                if not allowed(value):
                    out.append(Finding(where, n, s.type, value))
    return out


# --------------------------------------------------------------------------- trees
TEXT_SUFFIXES = {".json", ".jsonl", ".log", ".txt", ".html", ".js", ".css", ".xml", ".svg", ".ipynb", ".md",
                 ".py", ".toml", ".yaml", ".yml", ".conf", ".csv", ".template", ".ini", ".cfg", ".env", ""}


def is_text(data: bytes) -> bool:
    if b"\0" in data[:8192]:
        return False
    try:
        data[:65536].decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.start > 65000  # a multi-byte character cut at the sample's end
    return True


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in Path(root).rglob("*") if p.is_file() and not p.is_symlink())


def repository_hashes(root: Path) -> set[str]:
    """sha256 of every file `git ls-files` lists (a copy of one is covered by the repository scan)."""
    import hashlib
    import subprocess

    out = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, check=True).stdout.decode()
    return {hashlib.sha256((root / n).read_bytes()).hexdigest() for n in out.split("\0") if n and (root / n).is_file()}


def scan_tree(root: Path, needles: dict[str, str], *, generic: bool = True, label: str | None = None,
              known: set[str] | None = None) -> Report:
    """Every file under `root`: the byte pass on all of them, detect-secrets' shape plugins on the text ones
    (except copies of repository files, `known` sha256 values: the repository scan covers those)."""
    import hashlib

    root = Path(root)
    rep = Report()
    texts = []
    for p in files_under(root):
        data = p.read_bytes()
        rel = f"{label or root.name}/{p.relative_to(root)}"
        rep.files += 1
        rep.bytes += len(data)
        rep.findings += scan_bytes(rel, data, needles)
        if generic and is_text(data) and not (known and hashlib.sha256(data).hexdigest() in known):
            texts.append(p)
    if generic and texts:
        found = detect(texts, root)
        rep.findings += [Finding(f"{label or root.name}/{f.where}", f.line, f.kind, f.value) for f in found.findings]
    rep.findings = dedupe(rep.findings)
    return rep


def dedupe(findings: list[Finding]) -> list[Finding]:
    seen, out = set(), []
    for f in findings:
        key = (f.where, f.line, f.kind, f.value)
        if key not in seen:
            seen.add(key)
            out.append(f)
    return out


# --------------------------------------------------------------------------- docker images
@dataclass
class ImageScan:
    report: Report
    layers: int
    env_files: list[str]      # paths named .env (or .env.*) inside any layer


def scan_image_tar(tar_path: Path, needles: dict[str, str], max_file: int = 64 << 20,
                   skip_diff_ids: frozenset[str] = frozenset()) -> ImageScan:
    """Every regular file of every layer of a `docker save` archive (docker and OCI layouts): the byte
    pass (needles, Google key shapes, PEM private keys) and the names of any .env files. Layers whose diff id
    is in `skip_diff_ids` (the base image's own layers, e.g. Debian's libgnutls with its self-test RSA keys)
    are not read: the scan is about what the project's Dockerfile and build context put in."""
    rep, envs, layers = Report(), [], 0
    with tarfile.open(tar_path) as outer:
        names = outer.getnames()
        layer_names: list[str] = []
        if "manifest.json" in names:
            manifest = json.load(outer.extractfile("manifest.json"))
            for entry in manifest:
                diff_ids: list[str] = []
                if entry.get("Config") in names:
                    diff_ids = (json.load(outer.extractfile(entry["Config"])).get("rootfs") or {}).get("diff_ids") or []
                for i, lname in enumerate(entry.get("Layers") or []):
                    if i < len(diff_ids) and diff_ids[i] in skip_diff_ids:
                        continue
                    layer_names.append(lname)
        layer_names = list(dict.fromkeys(layer_names))
        for lname in layer_names:
            member = outer.extractfile(lname)
            if member is None:
                continue
            layers += 1
            with tarfile.open(fileobj=member, mode="r|*") as layer:   # streamed: a layer can be large
                for m in layer:
                    base = m.name.rsplit("/", 1)[-1]
                    if base == ".env" or base.startswith(".env.") and base != ".env.example":
                        envs.append(f"{lname[:19]}:/{m.name}")
                    if not m.isfile() or m.size > max_file:
                        continue
                    data = layer.extractfile(m).read()
                    rep.files += 1
                    rep.bytes += len(data)
                    rep.findings += scan_bytes(f"{lname[:19]}:/{m.name}", data, needles, shapes=True,
                                               allow_pem=_test_key_path(m.name))
    return ImageScan(rep, layers, envs)


def _test_key_path(name: str) -> bool:
    """Private keys that Python packages ship as test fixtures (not ours, never a course key)."""
    return bool(re.search(r"/(tests?|testing|test_data|testdata)/", "/" + name))


# --------------------------------------------------------------------------- pytest plugin (grading subprocess)
DUMP_ENV = "SECRETS_SCAN_DUMP"
PLANT_ENV = "SECRETS_SCAN_GOOGLE_KEY"
GRADER_KEY_NAMES = ("SERVICE_KEY", "OTHER_KEYS", "GOOGLE_KEY", "LANGSMITH_KEY", "BEARER", "COOKIE")
# Headers an SDK sends to its own backend to authenticate: expected there, so not dumped.
SDK_AUTH_HEADERS = {"x-api-key", "authorization", "x-sentry-auth"}
KIT_CLASSES = {"MLflowServer", "SentryReceiver", "LangSmithReceiver", "Balancer", "Service", "ReplicaSet"}


def needles_file(dump: Path) -> Path:
    """Next to the dump, not in it (the dump is scanned for these very values)."""
    return dump.parent / (dump.name + ".needles.json")


def _dump_dir() -> Path | None:
    raw = os.environ.get(DUMP_ENV)
    return Path(raw) if raw else None


def pytest_collection_finish(session) -> None:
    dump = _dump_dir()
    if dump is None:
        return
    dump.mkdir(parents=True, exist_ok=True)
    planted = os.environ.get(PLANT_ENV)
    needles: dict[str, str] = {}
    graded = {item.module.__name__: item.module for item in session.items if getattr(item, "module", None)}
    for name, mod in sorted(graded.items()):
        short = name.rsplit(".", 1)[-1]
        if planted and isinstance(getattr(mod, "GOOGLE_KEY", None), str):
            mod.GOOGLE_KEY = planted
        for attr in GRADER_KEY_NAMES:
            value = getattr(mod, attr, None)
            values = list(value) if isinstance(value, (list, tuple)) else [value]
            for i, v in enumerate(values):
                if isinstance(v, str) and v:
                    needles[f"{short}.{attr}" + (f"[{i}]" if len(values) > 1 else "")] = v
    needles_file(dump).write_text(json.dumps(needles, indent=1), encoding="utf-8")
    _wrap_redis_stop()
    _wrap_simulator()


def _kit_objects(value: Any, depth: int = 0) -> Iterator[Any]:
    if depth > 3 or value is None or isinstance(value, (str, bytes, int, float, Path)):
        return
    if type(value).__name__ in KIT_CLASSES:
        yield value
    if isinstance(value, (list, tuple, set)):
        items = list(value)
    elif isinstance(value, dict):
        items = list(value.values())
    elif is_dataclass(value) and not isinstance(value, type):
        items = [getattr(value, f.name, None) for f in fields(value)]
    else:
        items = []
    for item in items:
        yield from _kit_objects(item, depth + 1)


_counter = [0]


def _hook_fixture_setup(fixturedef, request):
    outcome = yield
    dump = _dump_dir()
    if dump is None or outcome.excinfo is not None:
        return
    objs = list({id(o): o for o in _kit_objects(outcome.get_result())}.values())
    if not objs:
        return
    _counter[0] += 1
    folder = dump / f"{_counter[0]:02d}-{fixturedef.argname}"
    # Added after the fixture's own teardown was registered: runs first (finalizers are LIFO), while the
    # servers still run and their temporary folders still exist.
    fixturedef.addfinalizer(lambda: dump_objects(folder, objs))


def dump_objects(folder: Path, objs: list[Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, obj in enumerate(objs):
        kind = type(obj).__name__
        try:
            _dump_one(folder, f"{i:02d}-{kind}", kind, obj)
        except Exception as exc:  # noqa: BLE001 - a dump must never break the grading run; the test sees the inventory
            (folder / f"{i:02d}-{kind}.dump-error.txt").write_text(f"{type(exc).__name__}: {exc}", encoding="utf-8")


def _dump_one(folder: Path, stem: str, kind: str, obj: Any) -> None:
    if kind == "MLflowServer":
        infos = obj.traces()
        full = [obj.trace(t.get("trace_id")) for t in infos if t.get("trace_id")]
        (folder / f"{stem}-traces.json").write_text(json.dumps({"infos": infos, "traces": full}, default=str),
                                                    encoding="utf-8")
        if obj.folder is not None and Path(obj.folder).is_dir():
            shutil.copytree(obj.folder, folder / f"{stem}-store", ignore_dangling_symlinks=True)
    elif kind in ("SentryReceiver", "LangSmithReceiver"):
        rows = []
        for rec in obj.raw():
            headers = {k: v for k, v in rec.headers.items() if k.lower() not in SDK_AUTH_HEADERS}
            rows.append({"method": rec.method, "path": rec.path, "headers": headers, "body": rec.text()})
        (folder / f"{stem}-requests.jsonl").write_text(
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    elif kind == "ReplicaSet":
        if Path(obj.log_dir).is_dir():
            shutil.copytree(obj.log_dir, folder / f"{stem}-logs")
    elif kind == "Balancer":
        if obj.prefix is not None and (Path(obj.prefix) / "logs").is_dir():
            shutil.copytree(Path(obj.prefix) / "logs", folder / f"{stem}-logs")
    elif kind == "Service":
        shutil.copyfile(obj.log_path, folder / f"{stem}-stdout.log")


_redis_snapshots = [0]


def _snapshot_redis(server) -> None:
    """What a Redis server holds, on disk: SAVE while it still runs, then its folder (dump.rdb, log) into the
    dump. Called before every stop (a check may stop Redis itself, e.g. step 06's cache check)."""
    dump = _dump_dir()
    if dump is None or not server.alive:
        return
    try:
        server.client().save()
    except Exception as exc:  # noqa: BLE001 - recorded: the test counts the dumps it expects
        (dump / f"redis-{_redis_snapshots[0]:02d}.dump-error.txt").write_text(f"{type(exc).__name__}: {exc}")
    if server.folder is not None and Path(server.folder).is_dir():
        _redis_snapshots[0] += 1
        shutil.copytree(server.folder, dump / "redis" / f"{_redis_snapshots[0]:02d}-port{server.port}")


def _wrap_redis_stop() -> None:
    from coursekit.redis_server import RedisServer

    original = RedisServer.stop
    if getattr(original, "_secrets_scan", False):
        return

    def stop(self, *args, **kwargs):
        _snapshot_redis(self)
        return original(self, *args, **kwargs)

    stop._secrets_scan = True
    RedisServer.stop = stop


_planted_calls = [0]


def _count_planted(sim) -> None:
    planted = os.environ.get(PLANT_ENV)
    proc = getattr(sim, "proc", None)
    if planted and proc is not None and proc.poll() is None:
        try:
            _planted_calls[0] += int((sim.stats().get("by_key") or {}).get(planted, 0))
        except Exception as exc:  # noqa: BLE001 - never break the grading run; a count of 0 fails the test
            print(f"secrets_support: simulator stats unreadable: {exc}", file=__import__("sys").stderr)


def _wrap_simulator() -> None:
    """Count the upstream calls that carried the planted Gemini key (before every counter reset and stop):
    proof that the graded services really used it."""
    from coursekit.simulator.process import SimulatorProcess

    for name in ("reset", "stop"):
        original = getattr(SimulatorProcess, name)
        if getattr(original, "_secrets_scan", False):
            continue

        def wrapper(self, *args, _original=original, **kwargs):
            _count_planted(self)
            return _original(self, *args, **kwargs)

        wrapper._secrets_scan = True
        setattr(SimulatorProcess, name, wrapper)


def planted_calls_file(dump: Path) -> Path:
    return dump.parent / (dump.name + ".planted-calls.json")


def _hook_sessionfinish(session, exitstatus) -> None:
    """The stdout logs of every service the grader started (it deletes them at exit)."""
    dump = _dump_dir()
    if dump is None:
        return
    from grader import harness

    out = dump / "service-stdout"
    out.mkdir(parents=True, exist_ok=True)
    for i, p in enumerate(list(harness._log_files)):
        if Path(p).is_file():
            shutil.copyfile(p, out / f"{i:02d}-{Path(p).name}")
    planted_calls_file(dump).write_text(json.dumps({"upstream_calls_with_planted_key": _planted_calls[0]}))


def _register_hooks() -> None:
    """Hook implementations only when this module is a pytest plugin (not when detect-secrets loads it)."""
    import pytest

    g = globals()
    g["pytest_fixture_setup"] = pytest.hookimpl(hookwrapper=True)(_hook_fixture_setup)
    g["pytest_sessionfinish"] = pytest.hookimpl(tryfirst=True)(_hook_sessionfinish)


if __name__ == "secrets_support":
    _register_hooks()
