"""비밀 스캔 (issue 17 의 신뢰성 묶음): 저장소, 빌드된 사이트, 채점 실행이 남긴 모든 것, 오류 응답, 빌드된
이미지에서 키가 하나도 나오지 않아야 합니다.

무엇을 키로 보는가 (tests/secrets_support.py):
* detect-secrets (Yelp) 의 모양 플러그인 + 우리 플러그인 두 개 (Google API 키 `AIza`+35자, Authorization/Bearer 값).
  저장소에는 엔트로피·키워드 플러그인까지 모두 돌리고, 문서에 적힌 가짜 값(lab-service-key, sim-any-key ...)만
  허용 목록으로 뺍니다.
* 바이트 검사: 모든 파일(sqlite, DuckDB, Redis 덤프, 이미지 레이어 같은 이진 파일 포함)에서 Google 키 모양, PEM
  개인 키, 그리고 이 테스트가 심은 키 (그대로, base64 로 세 가지 정렬).
* 기계의 환경 변수에 진짜 키(GOOGLE_API_KEY ...)가 있으면 그것도 바늘입니다.

정한 규칙: 오류 응답(4xx, 5xx)의 본문과 헤더에는 키도, 사용자가 보낸 질문(프롬프트)도 없어야 합니다.

검사마다 심은 누출을 잡는다는 것을 먼저 보입니다 (test_scanner_catches_planted_leaks, test_image_scanner_...).
"""

from __future__ import annotations

import gzip
import io
import json
import os
import secrets
import shutil
import string
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import httpx
import pytest
import secrets_support as ss

from grader import logging_support as ls

ROOT = Path(__file__).resolve().parents[1]
STEP06 = ROOT / "solutions" / "06-optimization"
ALNUM = string.ascii_letters + string.digits


def google_shaped(tag: str = "SECRETSCAN") -> str:
    """A fake Google API key of the real shape (AIza + 35), distinctive, made at run time (never in the repo)."""
    rest = "Sy" + tag + "".join(secrets.choice(ALNUM) for _ in range(35 - 2 - len(tag)))
    return "AIza" + rest


def pem_key() -> str:
    """A fake PEM private key (header and a random base64 body), built at run time: this file holds no key."""
    body = __import__("base64").b64encode(secrets.token_bytes(96)).decode()
    return "-----BEGIN " + "RSA PRIVATE KEY-----\n" + body[:64] + "\n" + body[64:] + "\n-----END RSA PRIVATE KEY-----\n"


def took(started: float) -> str:
    return f"{time.monotonic() - started:.1f}초"


# =========================================================================== every scan can fail
def test_scanner_catches_planted_leaks(tmp_path):
    """Every kind of leak the scans look for, planted in files of the kinds a run writes, is reported with its
    file and line; a clean file next to them is not."""
    google = google_shaped()
    needle = "svc-planted-" + secrets.token_hex(12)
    bearer = "planted-bearer-" + secrets.token_hex(10)
    machine_key = "machine-real-" + secrets.token_hex(12)
    needles = {"서비스 키": needle, **ss.env_needles({"GOOGLE_API_KEY": machine_key, "SERVICE_API_KEY": "lab-service-key"})}
    assert list(needles) == ["서비스 키", "환경 변수 GOOGLE_API_KEY"]   # the documented placeholder is no needle
    (tmp_path / "page.html").write_text(f"<html><pre><code>export GOOGLE_API_KEY={machine_key}</code></pre></html>\n",
                                        encoding="utf-8")
    (tmp_path / "app.jsonl").write_text(
        json.dumps({"event": "request", "status": 200}) + "\n"
        + json.dumps({"event": "request", "headers": {"x-goog-api-key": google}}) + "\n", encoding="utf-8")
    (tmp_path / "app.jsonl.1.gz").write_bytes(gzip.compress(f'{{"key": "{needle}"}}\n'.encode()))
    basic = __import__("base64").b64encode(f"user:{needle}".encode()).decode()
    (tmp_path / "access.log").write_text(f'127.0.0.1 - "GET / HTTP/1.1" 200\nAuthorization: Basic {basic}\n',
                                         encoding="utf-8")
    (tmp_path / "headers.txt").write_text(f"host: x\nAuthorization: Bearer {bearer}\n", encoding="utf-8")
    (tmp_path / "store.db").write_bytes(b"SQLite format 3\0" + b"\0" * 500 + needle.encode() + b"\0" * 100)
    (tmp_path / "key.pem").write_text(pem_key(), encoding="utf-8")
    (tmp_path / "pem_markers.py").write_text('BEGIN = "-----BEGIN ' + 'PRIVATE KEY-----"\n', encoding="utf-8")
    (tmp_path / "clean.json").write_text(json.dumps({"service_key": "lab-service-key", "google": "sim-any-key",
                                                     "trace_id": secrets.token_hex(16)}), encoding="utf-8")
    rep = ss.scan_tree(tmp_path, needles, label="planted")
    got = {(f.where, f.line, f.kind.split(" base64")[0].rstrip("'") if "심은" in f.kind else f.kind) for f in rep.findings}
    print("\n심은 누출과 찾은 것:\n" + rep.message())
    want = {
        ("planted/app.jsonl", 2, ss.GOOGLE_KIND),
        ("planted/app.jsonl.1.gz (gzip 풀어서)", 1, "심은 키 '서비스 키"),
        ("planted/access.log", 2, "심은 키 '서비스 키"),
        ("planted/headers.txt", 2, ss.AUTH_KIND),
        ("planted/store.db", 1, "심은 키 '서비스 키"),
        ("planted/key.pem", 1, ss.PEM_KIND),
        ("planted/page.html", 1, "심은 키 '환경 변수 GOOGLE_API_KEY"),
    }
    assert want <= got, f"심은 누출을 놓쳤습니다: {sorted(want - got)}\n찾은 것: {sorted(got)}"
    assert not [f for f in rep.findings if f.where.endswith(("clean.json", "pem_markers.py"))], \
        "깨끗한 파일(자리 표시 키, 추적 id, PEM 표시만 있는 코드)을 누출로 보고했습니다: " + rep.message()
    # An HTTP body (not a file): detect-secrets' shapes and ours.
    body_findings = ss.detect_text("body", json.dumps({"detail": f"bad key {google}", "auth": f"Bearer {bearer}"}))
    assert {f.kind for f in body_findings} >= {ss.GOOGLE_KIND, ss.AUTH_KIND}, body_findings
    assert ls.scan({"본문": json.dumps({"detail": f"키 {needle} 거절"})}, needles) == ["본문: 서비스 키 (1번)"]
    # The repository mode also reports a keyword assignment of a real-looking value, not a documented placeholder.
    (tmp_path / "settings.py").write_text(
        f'api_key = "{secrets.token_hex(4)}-real-looking-{secrets.token_hex(6)}"\nservice_key = "lab-service-key"\n',
        encoding="utf-8")
    repo_mode = ss.detect([tmp_path / "settings.py"], tmp_path, noisy=True)
    assert [(f.line, f.kind) for f in repo_mode.findings] == [(1, "Secret Keyword")], repo_mode.findings


def fake_docker_save(path: Path, layers: dict[str, dict[str, bytes]]) -> None:
    """A `docker save` archive (OCI layout: manifest.json naming blobs/sha256/<digest> layer tars)."""
    with tarfile.open(path, "w") as outer:
        names = []
        for digest, files in layers.items():
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w:gz") as layer:
                for name, data in files.items():
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    layer.addfile(info, io.BytesIO(data))
            blob = buf.getvalue()
            name = f"blobs/sha256/{digest}"
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            outer.addfile(info, io.BytesIO(blob))
            names.append(name)
        manifest = json.dumps([{"Config": "blobs/sha256/cfg", "RepoTags": ["x:y"], "Layers": names}]).encode()
        info = tarfile.TarInfo("manifest.json")
        info.size = len(manifest)
        outer.addfile(info, io.BytesIO(manifest))


def test_image_scanner_catches_planted_leaks(tmp_path):
    """The image scan (layers of a `docker save` archive) reports a planted key in a layer's file and a .env file,
    and nothing in a clean layer; a package's own test key (site-packages/*/tests/) is not ours."""
    needle = "svc-planted-" + secrets.token_hex(12)
    google = google_shaped("IMAGESCAN")
    fake_docker_save(tmp_path / "image.tar", {
        "a" * 64: {"usr/lib/python3.11/os.py": b"import sys\n" * 50},
        "b" * 64: {"app/main.py": b"KEY = None\n", "app/config.json": f'{{"k": "{needle}"}}'.encode(),
                   "app/.env": f"GOOGLE_API_KEY={google}\n".encode(),
                   "opt/venv/lib/site-packages/pkg/tests/key.pem": pem_key().encode(),
                   "app/leaked.pem": pem_key().encode()},
    })
    scan = ss.scan_image_tar(tmp_path / "image.tar", {"서비스 키": needle})
    print(f"\n가짜 이미지: 레이어 {scan.layers}개, {scan.report.summary()}, .env {scan.env_files}\n{scan.report.message()}")
    kinds = {(f.where.split(":/", 1)[1], f.kind) for f in scan.report.findings}
    assert scan.layers == 2 and scan.report.files == 6
    assert {("app/config.json", "심은 키 '서비스 키'"), ("app/.env", ss.GOOGLE_KIND), ("app/leaked.pem", ss.PEM_KIND)} <= kinds, \
        kinds
    assert not any(w.startswith("usr/") or w.endswith("key.pem") for w, _ in kinds), kinds
    assert [e.split(":/", 1)[1] for e in scan.env_files] == ["app/.env"]


# =========================================================================== the repository
def tracked_files() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    return [ROOT / n for n in out.decode().split("\0") if n and (ROOT / n).is_file()]


def test_repository_has_no_key():
    """Every file `git ls-files` lists: detect-secrets with every plugin (the documented fake values allowed,
    tests/secrets_support.ALLOWED_VALUES) and the byte pass (Google key shapes, PEM private keys, this machine's
    own keys from its environment) on all of them, binary ones too."""
    started = time.monotonic()
    files = tracked_files()
    needles = ss.env_needles()
    rep = ss.Report()
    texts = []
    for p in files:
        data = p.read_bytes()
        rel = str(p.relative_to(ROOT))
        rep.files += 1
        rep.bytes += len(data)
        rep.findings += ss.scan_bytes(rel, data, needles)
        if ss.is_text(data):
            texts.append(p)
    rep.findings += ss.detect(texts, ROOT, noisy=True).findings
    rep.findings = ss.dedupe(rep.findings)
    print(f"\n저장소: git ls-files {len(files)}개 (텍스트 {len(texts)}개), {rep.bytes / 1e6:.1f} MB, "
          f"환경 변수의 키 {len(needles)}개, {took(started)}")
    assert files and len(texts) > len(files) // 2
    assert not rep.findings, "저장소에 키로 보이는 값이 있습니다 (파일:줄: 종류):\n" + rep.message()


# =========================================================================== the built site
def test_built_site_has_no_key(site):
    """Every file of the built site (the `site` fixture of tests/conftest.py: the executed, solution-less lessons, as
    instructors host it; HTML, JS, search index, notebook outputs): the byte pass and detect-secrets' shape
    plugins, the machine's own keys as needles."""
    started = time.monotonic()
    rep = ss.scan_tree(site, ss.env_needles(), label="site")
    print(f"\n사이트 (실행된 레슨으로 빌드): {rep.summary()}, {took(started)}")
    assert rep.files > 20 and any(site.rglob("*.html"))
    assert not rep.findings, "빌드된 사이트에 키로 보이는 값이 있습니다:\n" + rep.message()


# =========================================================================== a graded run's outputs
GRADED_CHECKS = ("step05.log_line,step05.secrets,step05.sentry,step05.langsmith,step05.traces,step05.log_store,"
                 "step05.encryption,step06.no_retry,step06.rate_limit,step06.cache")


def test_graded_run_leaves_no_key(request, tmp_path):
    """The step 05 and 06 graders on the solutions (one pytest subprocess, only the checks whose runs write
    something: step 05's whole logged run, step 06's error handling, the nginx + Redis fleet, the cache fleet),
    with a Google-shaped key planted as the graders' GOOGLE_KEY; tests/secrets_support.py (a plugin of that
    subprocess) copies what each kit object holds before it is torn down. Then everything is scanned: the
    pytest temp folders (service LOG_DIRs with rotated JSON logs, the prompt store, DuckDB files, copies of
    the step folders), service stdout, Sentry envelopes and LangSmith runs as received, MLflow traces (API and
    its sqlite store), nginx logs, Redis dumps, the grade report. Needles: every key the graders used."""
    started = time.monotonic()
    dump, base, report = tmp_path / "dump", tmp_path / "basetemp", tmp_path / "grade-report.json"
    planted = google_shaped("GRADEDRUN")
    env = dict(os.environ)
    env.update({ss.DUMP_ENV: str(dump), ss.PLANT_ENV: planted,
                "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)})
    shared = request.getfixturevalue("shared_trace_backend")
    if shared is not None:
        from coursekit import tracing

        env[tracing.SHARED_URL_ENV] = shared.url
    cmd = [sys.executable, "-m", "pytest", "grader", "--target", "solutions", "--checks", GRADED_CHECKS,
           "-p", "secrets_support", "-p", "no:cacheprovider", "--basetemp", str(base), "--grade-report", str(report),
           "-q", "-rs"]
    proc = subprocess.run(cmd, check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=420)
    out = proc.stdout + proc.stderr
    graded = time.monotonic() - started
    if proc.returncode == 0 and "skipped" in out.splitlines()[-1] and " passed" not in out.splitlines()[-1]:
        pytest.skip("채점 도구(MLflow, nginx, redis-server)가 없어 채점이 모두 건너뛰어졌습니다:\n" + out[-1500:])
    assert proc.returncode == 0, f"채점 실행이 실패했습니다 (종료 코드 {proc.returncode}):\n{out[-4000:]}"
    needles_path = ss.needles_file(dump)
    assert needles_path.is_file(), "secrets_support 플러그인이 채점기의 키를 기록하지 않았습니다:\n" + out[-2000:]
    needles = {**json.loads(needles_path.read_text(encoding="utf-8")), "심은 Google 키": planted, **ss.env_needles()}
    ss.check_needles(needles)
    assert any(v == planted for k, v in needles.items() if k.endswith("GOOGLE_KEY")), \
        "채점기의 GOOGLE_KEY 에 심은 키가 들어가지 않았습니다"
    # What the run wrote must be there: a scan of nothing proves nothing.
    inventory = {
        "JSON 로그 (LOG_DIR/app.jsonl*)": list(base.rglob("app.jsonl*")),
        "서비스 표준 출력": list((dump / "service-stdout").glob("*")),
        "Sentry 봉투": [p for p in dump.rglob("*SentryReceiver-requests.jsonl") if p.stat().st_size],
        "LangSmith 실행": [p for p in dump.rglob("*LangSmithReceiver-requests.jsonl") if p.stat().st_size],
        "MLflow 추적 (API)": [p for p in dump.rglob("*MLflowServer-traces.json") if '"spans"' in p.read_text()],
        "nginx 로그": list(dump.rglob("*Balancer-logs/access.log")),
        "복제본 로그": list(dump.rglob("*ReplicaSet-logs/replica-*.log")),
        "Redis 덤프 (공유 한도, 캐시)": [p for p in dump.rglob("dump.rdb")][:2] if len(list(dump.rglob("dump.rdb"))) >= 2
        else [],
        "채점 보고서": [report] if report.is_file() else [],
    }
    missing = [k for k, v in inventory.items() if not v]
    errors = [p.read_text() for p in dump.rglob("*.dump-error.txt")]
    assert not missing and not errors, f"채점 실행이 남겼어야 할 것이 없습니다: {missing} {errors}"
    planted_calls = json.loads(ss.planted_calls_file(dump).read_text())["upstream_calls_with_planted_key"]
    assert planted_calls > 0, "채점한 서비스가 심은 Gemini 키로 시뮬레이터를 부르지 않았습니다 (심기가 닿지 않음)"
    known = ss.repository_hashes(ROOT)
    rep = ss.Report()
    rep.add(ss.scan_tree(base, needles, label="basetemp", known=known))
    rep.add(ss.scan_tree(dump, needles, label="dump", known=known))
    rep.add(ss.Report(1, report.stat().st_size, ss.scan_bytes(report.name, report.read_bytes(), needles)))
    if shared is not None and shared.folder is not None:
        rep.add(ss.scan_tree(Path(shared.folder), needles, generic=False, label="shared-mlflow"))
    counts = ", ".join(f"{k} {len(v)}" for k, v in inventory.items())
    print(f"\n채점 실행 {graded:.1f}초 ({GRADED_CHECKS.count(',') + 1}개 항목), 스캔: {rep.summary()} "
          f"[{counts}], 바늘 {len(needles)}개, 심은 Gemini 키로 간 업스트림 호출 {planted_calls}번, 전체 {took(started)}")
    assert not rep.findings, "채점 실행이 남긴 것에 키가 있습니다:\n" + rep.message()


# =========================================================================== error bodies
RATE_LIMIT = 30   # per key and minute: the main key's ~20 requests stay under it, the second key goes over
# Decided (lead): FastAPI's default 422 document repeats the rejected value ("input"), so a too-long question comes
# back in the 422 body. That is the sender's own text, returned to the same client on the same connection, not a
# leak: the prompt rule is about what the service stores, logs and sends to third parties (step 05's scans). Keys
# are still checked in these bodies.
PROMPT_ECHO_422 = ("너무 긴 메시지 (422)", "배치의 너무 긴 질문 (422)")
@pytest.fixture
def step06_service(sim, tmp_path):
    """The step 06 solution (a copy, uvicorn on loopback) behind the session simulator, with planted keys: a
    second client key for the rate limit, a small message limit, fast circuit and deadline."""
    from grader.harness import copy_step, run_service

    keys = {"서비스 키": "svc-errors-" + secrets.token_hex(12), "두 번째 서비스 키": "svc-errors-b-" + secrets.token_hex(10),
            "Gemini 키": google_shaped("ERRBODIES")}
    graded = copy_step(STEP06, tmp_path)
    env = {"SERVICE_API_KEY": keys["서비스 키"], "SERVICE_API_KEYS": keys["두 번째 서비스 키"],
           "GOOGLE_API_KEY": keys["Gemini 키"], "GOOGLE_GEMINI_BASE_URL": sim.base_url,
           "LLM_MODEL": "gemini-3.5-flash-lite", "FALLBACK_MODEL": "gemini-2.0-flash-lite", "LLM_TIMEOUT_SECONDS": "3",
           "LLM_MAX_ATTEMPTS": "2", "REQUEST_DEADLINE_SECONDS": "2", "MAX_MESSAGE_CHARS": "300",
           "RATE_LIMIT": f"{RATE_LIMIT}/minute", "MAX_IN_FLIGHT": "50", "CIRCUIT_FAIL_MAX": "100", "JUDGE_SAMPLE_RATE": "0",
           "LOG_DIR": str(tmp_path / "service-logs"), "LOG_LEVEL": "WARNING", "CACHE_TTL_SECONDS": "0"}
    with run_service(graded, env=env, name="06 (오류 응답 비밀 스캔)") as svc:
        yield svc, keys


def test_error_bodies_have_no_key_or_prompt(step06_service, sim):
    """Step 06's error answers, provoked one by one: 401 (no key, a wrong key the client sent), 404, 405, 413,
    422 (empty, too long, not JSON, batch), 429 (the key's limit), the upstream's 400 (the service's Gemini key
    refused), 429 and 503 (retries and fallback exhausted), a malformed upstream answer, a safety block, and a
    failing stream. No body and no header may hold a key (the service's, the client's wrong one, the Gemini one,
    the Authorization and Cookie values the client sent) or the question the client asked."""
    svc, keys = step06_service
    bearer, cookie = "err-bearer-" + secrets.token_hex(12), "err-cookie-" + secrets.token_hex(12)
    wrong = "wrong-client-key-" + secrets.token_hex(10)
    needles = {**keys, "틀린 클라이언트 키": wrong, "Authorization 값": bearer, "Cookie 값": cookie, **ss.env_needles()}
    ss.check_needles(needles)
    seen: list[tuple[str, int, str, str]] = []   # (what, status, headers text, body text)

    def ask(what: str, method: str = "POST", path: str = "/chat", key: str | None = keys["서비스 키"],
            message: str | None = None, **kw) -> tuple[str, httpx.Response]:
        marker = "PQ" + secrets.token_hex(6).upper()
        headers = {"Authorization": f"Bearer {bearer}", "Cookie": f"session={cookie}", **kw.pop("headers", {})}
        if key is not None:
            headers["X-API-Key"] = key
        if message is not None:
            kw.setdefault("json", {"message": message.replace("{m}", marker)})
        r = httpx.request(method, svc.base_url + path, headers=headers, timeout=15, **kw)
        seen.append((what, r.status_code, "\n".join(f"{k}: {v}" for k, v in r.headers.items()), r.text))
        return marker, r

    markers: dict[str, str] = {}

    def chat(what: str, **kw) -> httpx.Response:
        m, r = ask(what, message="하늘클라우드 환불 규정 알려 주세요 (문의 {m})", **kw)
        markers[what] = m
        return r

    chat("키 없음 (401)", key=None)
    chat("틀린 키 (401)", key=wrong)
    ask("없는 경로 (404)", "GET", "/nope-" + secrets.token_hex(3))
    ask("허용되지 않은 메서드 (405)", "DELETE", "/chat")
    big = "문의 {m} " + "가" * 40_000
    m, _ = ask("너무 큰 본문 (413)", content=json.dumps({"message": big}).encode(),
               headers={"Content-Type": "application/json"})
    ask("빈 메시지 (422)", json={"message": ""})
    m, _ = ask("너무 긴 메시지 (422)", message="문의 {m} " + "나" * 400)
    markers["너무 긴 메시지 (422)"] = m
    ask("JSON 이 아님 (422)", content=b"message=hi", headers={"Content-Type": "application/json"})
    m, _ = ask("배치의 너무 긴 질문 (422)", path="/chat/batch",
               json={"messages": ["짧은 질문", "문의 MARK " + "다" * 400]})
    sim.configure(valid_keys=["only-this-key-" + secrets.token_hex(6)])
    try:
        chat("업스트림이 서비스의 Gemini 키를 거절 (400)")
    finally:
        sim.configure(valid_keys=None)
    for what, fault in (("업스트림 503 (재시도, Fallback 끝)", {"error_503_rate": 1.0}),
                        ("업스트림 429 (재시도, Fallback 끝)", {"error_429_rate": 1.0}),
                        ("업스트림의 깨진 본문", {"malformed_rate": 1.0}),
                        ("안전 필터 차단", {"safety_block_rate": 1.0})):
        sim.configure(**fault)
        try:
            chat(what)
            m, _ = ask(what + " (스트림)", path="/chat/stream", message="스트림 문의 {m}")
            markers[what + " (스트림)"] = m
        finally:
            sim.configure(**{k: 0.0 for k in fault})
    for i in range(RATE_LIMIT + 2):
        r = chat(f"키별 한도 ({i + 1})", key=keys["두 번째 서비스 키"])
        if r.status_code == 429:
            break
    statuses = {what: status for what, status, _, _ in seen}
    limited = [w for w in statuses if w.startswith("키별 한도")]
    shown = {w: st for w, st in statuses.items() if w not in limited}
    shown[f"키별 한도 ({RATE_LIMIT}/분) 요청 {len(limited)}개"] = statuses[limited[-1]]
    print("\n오류 응답: " + ", ".join(f"{w} -> {st}" for w, st in shown.items()))
    errors = [x for x in seen if x[1] >= 400 or "(스트림)" in x[0]]
    # Each provoked case must have produced its error, or the scan saw no error body of that kind.
    for what in ("키 없음 (401)", "틀린 키 (401)", "없는 경로 (404)", "너무 큰 본문 (413)", "빈 메시지 (422)"):
        assert statuses[what] == int(what[-4:-1]), f"{what}: {statuses[what]}"
    assert statuses["업스트림이 서비스의 Gemini 키를 거절 (400)"] >= 500
    assert 429 in {s for w, s, _, _ in seen if w.startswith("키별 한도")}
    assert all(statuses[w] >= 400 for w in ("업스트림 503 (재시도, Fallback 끝)", "업스트림 429 (재시도, Fallback 끝)",
                                             "업스트림의 깨진 본문", "안전 필터 차단"))
    findings = []
    for what, status, head, body in errors:
        where = f"{what} -> {status}"
        findings += [f"{where} 헤더: {x}" for x in ls.scan({"": head}, needles)]
        findings += [f"{where} 본문: {x}" for x in ls.scan({"": body}, needles)]
        findings += [f"{where}: {f.kind} ({ss.mask(f.value)})" for f in ss.detect_text(where, head + "\n" + body)]
        prompt = {"질문 (문의 번호)": markers[what]} if what in markers else {}
        if what.startswith("배치"):
            prompt = {"질문 (문의 번호)": "문의 MARK"}
        if what in PROMPT_ECHO_422:
            continue   # the sender's own question in FastAPI's 422 "input" (decided above)
        findings += [f"{where} 본문: {x}" for x in ls.scan({"": body}, prompt)]
    print(f"오류 응답 {len(errors)}개 (본문 {sum(len(b) for *_, b in errors)} B) 를 검사, 발견 {len(findings)}개")
    assert not findings, "오류 응답에 키나 사용자의 질문이 있습니다:\n" + "\n".join(findings)


# =========================================================================== built images
def test_image_has_no_key(tmp_path):
    """The step 06 solution image, built the way step 01's grader builds (offline base image when the registry is
    out of reach), from a build context holding a .env, a .env.production and a log with planted keys next to the
    code: `docker save`, then every file of every layer the Dockerfile added is scanned (the base image's own
    layers are skipped: Debian's libgnutls carries self-test RSA keys); no .env may be in it. The image is removed."""
    from coursekit import dockerbase
    from grader import docker_support as ds
    from grader.harness import require_tool

    client = dockerbase.docker_command()
    require_tool("docker", "이미지 비밀 스캔에는 Docker 엔진이 필요합니다",
                 available=client is not None and dockerbase.engine_running(client))
    started = time.monotonic()
    planted = {"Gemini 키 (.env)": google_shaped("DOTENV"), "서비스 키 (.env)": "svc-dotenv-" + secrets.token_hex(12),
               "서비스 키 (.env.production)": "svc-dotenv-prod-" + secrets.token_hex(10),
               "로그의 키 (logs/)": "svc-logged-" + secrets.token_hex(12)}
    ctx = tmp_path / "context"
    shutil.copytree(STEP06, ctx, ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache", "logs"))
    (ctx / ".env").write_text(f"GOOGLE_API_KEY={planted['Gemini 키 (.env)']}\n"
                              f"SERVICE_API_KEY={planted['서비스 키 (.env)']}\n", encoding="utf-8")
    (ctx / ".env.production").write_text(f"SERVICE_API_KEY={planted['서비스 키 (.env.production)']}\n", encoding="utf-8")
    (ctx / "logs").mkdir()
    (ctx / "logs" / "app.jsonl").write_text(json.dumps({"key": planted["로그의 키 (logs/)"]}) + "\n", encoding="utf-8")
    for image in dockerbase.base_images_of(ctx / "Dockerfile"):
        dockerbase.ensure_base_image(image, client)
    before = ds.image_ids(client)
    tag = f"course-secrets-scan:{secrets.token_hex(4)}"
    result = ds.docker_build(client, ctx, tag, timeout=600, labels={"course.test": "secrets-scan"})
    try:
        assert result.ok, "이미지 빌드 실패:\n" + result.tail(40)
        archive = tmp_path / "image.tar"
        saved = client.run("save", "-o", str(archive), tag, timeout=300)
        assert saved.returncode == 0, saved.stderr
        base_layers = set()
        for image in dockerbase.base_images_of(ctx / "Dockerfile"):
            got = client.run("image", "inspect", "--format", "{{json .RootFS.Layers}}", image, timeout=60)
            base_layers |= set(json.loads(got.stdout or "[]") or [])
        scan = ss.scan_image_tar(archive, {**planted, **ss.env_needles()}, skip_diff_ids=frozenset(base_layers))
    finally:
        ds.remove_images(client, [tag, *result.created], keep=before)
    print(f"\n이미지 ({result.seconds:.0f}초 빌드): 레이어 {scan.layers}개, {scan.report.summary()}, "
          f"archive {archive.stat().st_size / 1e6:.0f} MB, 전체 {took(started)}")
    assert base_layers and scan.layers >= 2 and scan.report.files > 1000
    assert not scan.env_files, f"이미지에 .env 파일이 있습니다: {scan.env_files}"
    assert not scan.report.findings, "이미지에 키가 있습니다:\n" + scan.report.message()
