"""Offline tests of the step-01 Docker helpers: the Dockerfile parser, the .dockerignore
matcher, secret detection, build-output parsing (cache hits) and the local base image's
mirror discovery. The real builds run in the grader (grader/test_step01_docker.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from coursekit import REPO_ROOT, dockerbase
from coursekit.dockerbase import DockerClient
from coursekit import dockerfile as dockerfile_parser
from grader import docker_support as ds

SOLUTION = REPO_ROOT / "solutions" / "01-docker"


def test_parser_handles_continuations_stages_and_args():
    df = dockerfile_parser.parse_dockerfile(
        "# escape=\\\n"
        "ARG BASE=python:3.11-slim\n"
        "FROM ${BASE} AS build\n"
        "RUN pip install \\\n"
        "    # a comment inside a continuation\n"
        "    --no-cache-dir -r requirements.txt\n"
        "\n"
        "FROM build AS test\n"
        "FROM --platform=linux/amd64 $BASE\n"
        "COPY --from=build --chown=app:app /opt/venv /opt/venv\n"
        'CMD ["uvicorn", "main:app"]\n'
    )
    assert [s.image for s in df.stages] == ["python:3.11-slim", "build", "python:3.11-slim"]
    assert [s.name for s in df.stages] == ["build", "test", None]
    run = df.stages[0].instructions[0]
    assert run.keyword == "RUN" and "--no-cache-dir -r requirements.txt" in run.value and run.line == 4
    copy = df.final.instructions[0]
    assert copy.flags == {"from": "build", "chown": "app:app"}
    assert df.final.last("CMD").json_args == ["uvicorn", "main:app"]
    assert df.external_images() == ["python:3.11-slim"]


def test_backtick_escape_directive():
    df = dockerfile_parser.parse_dockerfile("# escape=`\nFROM python:3.11-slim\nRUN echo a `\n    b\n")
    assert df.final.instructions[0].value == "echo a b"


def test_shell_form_is_not_json():
    df = dockerfile_parser.parse_dockerfile("FROM x:1\nCMD uvicorn main:app\nENTRYPOINT [\"a\", 1]\n")
    assert df.final.last("CMD").json_args is None
    assert df.final.last("ENTRYPOINT").json_args is None  # not all strings


@pytest.mark.parametrize("ref, expected", [
    ("python:3.11-slim", ("python", "3.11-slim", None)),
    ("python", ("python", None, None)),
    ("localhost:5000/python", ("localhost:5000/python", None, None)),
    ("localhost:5000/python:3.11", ("localhost:5000/python", "3.11", None)),
    ("python@sha256:abc", ("python", None, "sha256:abc")),
])
def test_image_reference(ref, expected):
    assert ds.image_reference(ref) == expected


def test_env_and_arg_pairs():
    df = dockerfile_parser.parse_dockerfile('FROM x:1\nENV A=1 B="two words"\nENV OLD some value\nARG TOKEN\nARG X=1\n')
    env = [dockerfile_parser.env_pairs(i) for i in df.final.instructions if i.keyword == "ENV"]
    assert env == [[("A", "1"), ("B", "two words")], [("OLD", "some value")]]
    args = [dockerfile_parser.arg_pairs(i) for i in df.final.instructions if i.keyword == "ARG"]
    assert args == [[("TOKEN", None)], [("X", "1")]]


@pytest.mark.parametrize("name, secret", [
    ("GOOGLE_API_KEY", True), ("OPENAI_APIKEY", True), ("GITHUB_TOKEN", True), ("DB_PASSWORD", True),
    ("AWS_SECRET_ACCESS_KEY", True), ("PATH", False), ("PYTHONUNBUFFERED", False), ("KEYBOARD_LAYOUT", False),
    ("GOOGLE_GEMINI_BASE_URL", False),
])
def test_secret_like(name, secret):
    assert ds.secret_like(name) is secret


def test_dockerignore_matching_follows_docker_rules():
    ig = ds.DockerIgnore("# c\n.env\n/.git\n**/__pycache__\n*.pyc\nvenv/\ndocs\n!docs/keep.md\n")
    assert ig.excluded(".env")
    assert not ig.excluded(".env.example")
    assert ig.excluded(".git/HEAD")               # a directory pattern excludes what is inside
    assert ig.excluded("a/b/__pycache__/x.pyc")
    assert ig.excluded("main.pyc") and not ig.excluded("sub/main.pyc")  # '*' does not cross '/'
    assert ig.excluded("venv/bin/python")
    assert ig.excluded("docs/a.md") and not ig.excluded("docs/keep.md")  # last match wins
    assert not ig.excluded("main.py")


def test_solution_dockerignore_and_starter_rendering():
    from coursekit.starters import render

    ig = ds.DockerIgnore((SOLUTION / ".dockerignore").read_text(encoding="utf-8"))
    for path in (".env", ".git/HEAD", ".venv/x", "venv/x", "__pycache__/m.pyc"):
        assert ig.excluded(path), path
    assert not ig.excluded("main.py") and not ig.excluded("requirements.txt")
    starter = ds.DockerIgnore(render((SOLUTION / ".dockerignore").read_text(encoding="utf-8")))
    assert not starter.excluded(".env")
    naive = dockerfile_parser.parse_dockerfile(render((SOLUTION / "Dockerfile").read_text(encoding="utf-8")))
    assert naive.stages[0].image == "python:latest" and naive.final.last("CMD").json_args is None
    assert naive.final.last("USER") is None and naive.final.last("HEALTHCHECK") is None


LEGACY_REBUILD = """\
Step 5/16 : COPY requirements.txt .
 ---> Using cache
 ---> 37ab4c2e1f0a
Step 6/16 : RUN pip install --no-cache-dir -r requirements.txt
 ---> Using cache
 ---> 8f0e3c9d2b11
Step 12/16 : COPY main.py .
 ---> 1c2d3e4f5a6b
"""
LEGACY_BROKEN = """\
Step 3/6 : COPY . .
 ---> 9a8b7c6d5e4f
Step 4/6 : RUN pip install -r requirements.txt
 ---> Running in 0a1b2c3d4e5f
Collecting fastapi==0.165.0
"""
BUILDKIT_REBUILD = """\
#7 [build 3/4] COPY requirements.txt .
#7 CACHED

#8 [build 4/4] RUN pip install --no-cache-dir -r requirements.txt
#8 CACHED

#11 [stage-1 5/5] COPY main.py .
#11 DONE 0.0s
"""
BUILDKIT_BROKEN = """\
#8 [2/3] RUN pip install -r requirements.txt
#8 1.234 Collecting fastapi
#8 DONE 40.1s
"""


def test_install_step_cache_detection():
    legacy, buildkit = DockerClient("docker", buildkit=False), DockerClient("docker", buildkit=True)
    assert ds.install_steps_cached(legacy, LEGACY_REBUILD) == (
        ["RUN pip install --no-cache-dir -r requirements.txt"], [])
    assert ds.install_steps_cached(legacy, LEGACY_BROKEN) == ([], ["RUN pip install -r requirements.txt"])
    assert ds.install_steps_cached(buildkit, BUILDKIT_REBUILD) == (
        ["RUN pip install --no-cache-dir -r requirements.txt"], [])
    assert ds.install_steps_cached(buildkit, BUILDKIT_BROKEN) == ([], ["RUN pip install -r requirements.txt"])
    assert ds.install_steps_cached(legacy, LEGACY_REBUILD.replace("Step 6/16 : RUN pip", "Step 6/16 : RUN echo"))[0] == []


def test_debian_mirror_from_deb822_and_list(tmp_path: Path):
    d = tmp_path / "etc/apt/sources.list.d"
    d.mkdir(parents=True)
    (d / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n\n"
        "Types: deb\n# comment\nURIs: http://mirror.example/debian/\nSuites: bookworm bookworm-updates\n"
        "Components: main\n", encoding="utf-8")
    assert dockerbase.debian_mirror(root=tmp_path) == "http://mirror.example/debian"
    (d / "debian.sources").unlink()
    (tmp_path / "etc/apt/sources.list").write_text(
        "deb [signed-by=/k.gpg] http://other.example/debian bookworm main\n", encoding="utf-8")
    assert dockerbase.debian_mirror(root=tmp_path) == "http://other.example/debian"
    (tmp_path / "etc/apt/sources.list").write_text("", encoding="utf-8")
    assert dockerbase.debian_mirror(root=tmp_path) == dockerbase.DEFAULT_MIRROR


def test_base_images_of_solution():
    assert dockerbase.base_images_of(SOLUTION / "Dockerfile") == ["python:3.11-slim"]
    assert set(dockerbase.base_images_of(SOLUTION / "Dockerfile")) <= set(dockerbase.SUPPORTED_IMAGES)


def test_docker_client_choice_respects_env(monkeypatch):
    dockerbase.docker_command.cache_clear()
    monkeypatch.setenv("COURSE_DOCKER", "/nonexistent/docker")
    try:
        client = dockerbase.docker_command()
        assert client.path == "/nonexistent/docker" and client.buildkit is False
    finally:
        dockerbase.docker_command.cache_clear()


# --------------------------------------------------------------------------- end-of-line comments
def test_end_of_line_comments_are_found_where_docker_reads_them_as_arguments():
    df = dockerfile_parser.parse_dockerfile(
        "FROM python:3.11-slim AS build\n"
        "WORKDIR /app   # w\n"
        "USER 10001   # root 가 아닌 사용자\n"
        'CMD ["uvicorn", "main:app"]  # exec\n'
        'HEALTHCHECK --interval=5s CMD ["python", "-V"] # probe\n'
        "RUN pip install x  # a shell comment: /bin/sh reads it\n"
        'ENV A="x # y" B=1\n'
        "CMD uvicorn main:app # shell form, also a shell comment\n"
        "COPY a#b .\n"
    )
    found = [(i.keyword, dockerfile_parser.end_of_line_comment(i)) for i in df.instructions]
    assert found == [("FROM", None), ("WORKDIR", "# w"), ("USER", "# root 가 아닌 사용자"), ("CMD", "# exec"),
                     ("HEALTHCHECK", "# probe"), ("RUN", None), ("ENV", None), ("CMD", None), ("COPY", None)]


def test_solution_and_starter_dockerfiles_have_no_end_of_line_comments():
    from coursekit.starters import render

    text = (SOLUTION / "Dockerfile").read_text(encoding="utf-8")
    starter = REPO_ROOT / "steps" / "01-docker" / "Dockerfile"
    for source in (text, render(text), starter.read_text(encoding="utf-8")):
        df = dockerfile_parser.parse_dockerfile(source)
        assert [i.line for i in df.instructions if dockerfile_parser.end_of_line_comment(i)] == []


def test_key_placeholders_are_ascii():
    """Keys travel in HTTP headers: a Korean placeholder copied into `docker run -e` breaks /chat."""
    import re

    files = [REPO_ROOT / "grader" / "test_step01_docker.py", SOLUTION / "Dockerfile", SOLUTION / "main.py",
             REPO_ROOT / "steps" / "01-docker" / "Dockerfile", REPO_ROOT / "tests" / "mutants" / "step01.toml"]
    for path in files:
        for value in re.findall(r"(?:GOOGLE_API_KEY|SERVICE_API_KEY)=([^\s\"'`\\]+)", path.read_text(encoding="utf-8")):
            assert value.isascii(), (path.name, value)


# --------------------------------------------------------------------------- run-time settings, build output
@pytest.mark.parametrize("name, config", [
    ("GOOGLE_GEMINI_BASE_URL", True), ("DATABASE_URL", True), ("LLM_ENDPOINT", True),
    ("GOOGLE_CLOUD_PROJECT", True), ("PIP_INDEX_URL", False), ("PYTHON_GET_PIP_URL", False),
    ("PATH", False), ("PYTHONUNBUFFERED", False), ("LLM_MODEL", False),
])
def test_runtime_config_like(name, config):
    assert ds.runtime_config_like(name) is config


LEGACY_MULTI_STAGE = """\
Step 1/6 : FROM python:3.11-slim AS build
 ---> 43cac99248ed
Step 2/6 : WORKDIR /app
 ---> Using cache
 ---> 7afd4713ef70
Step 3/6 : COPY requirements.txt .
 ---> a0138708c9aa
Step 4/6 : RUN pip install --no-cache-dir -r requirements.txt
 ---> Running in 0a1b2c3d4e5f
Removing intermediate container 0a1b2c3d4e5f
 ---> 6d306b055242
Step 5/6 : FROM python:3.11-slim
 ---> 43cac99248ed
Step 6/6 : RUN exit 3
 ---> Running in 1b2c3d4e5f6a
The command '/bin/sh -c exit 3' returned a non-zero code: 3
"""


def test_created_images_are_the_steps_not_from_cache():
    assert ds.created_images(LEGACY_MULTI_STAGE) == ["a0138708c9aa", "6d306b055242"]
    assert ds.created_images(LEGACY_REBUILD) == ["1c2d3e4f5a6b"]


def test_listening_sockets_from_proc_net():
    text = (
        "  sl  local_address rem_address   st tx_queue\n"
        "   0: 0100007F:1F40 00000000:0000 0A 00000000:00000000\n"
        "   1: 00000000:1F90 00000000:0000 0A 00000000:00000000\n"
        "   2: 0100007F:1F40 0100007F:D431 01 00000000:00000000\n"
        "  sl  local_address                         remote_address                        st\n"
        "   0: 00000000000000000000000000000000:1F40 00000000000000000000000000000000:0000 0A\n"
        "   1: 00000000000000000000000001000000:1F41 00000000000000000000000000000000:0000 0A\n"
    )
    assert ds.parse_listeners(text) == [("0.0.0.0", 8080), ("127.0.0.1", 8000), ("::", 8000), ("::1", 8001)]
    assert [ds.reachable_from_outside(a) for a in ("0.0.0.0", "::", "172.17.0.2", "127.0.0.1", "::1")] == [
        True, True, True, False, False]


# --------------------------------------------------------------------------- gradings with a Docker engine
def _engine() -> DockerClient:
    from grader.harness import require_tool

    client = dockerbase.docker_command()
    require_tool("docker", "Docker 엔진이 필요한 테스트입니다",
                 available=client is not None and dockerbase.engine_running(client))
    return client


def _grade(tmp_path: Path, target: Path, *args: str) -> tuple[dict, float]:
    import json
    import subprocess
    import sys
    import time

    report = tmp_path / "report.json"
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "pytest", str(REPO_ROOT / "grader"), "-p", "no:cacheprovider",
                           "-q", "--grade-report", str(report), "--target", str(target), *args],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL)
    seconds = time.monotonic() - started
    print(proc.stdout[-4000:], proc.stderr[-2000:], f"({seconds:.1f}s)")
    return json.loads(report.read_text(encoding="utf-8"))["steps"]["step01"]["checks"], seconds


def _labelled_leftovers(client: DockerClient, label: str) -> tuple[list[str], list[str]]:
    images = client.run("images", "-a", "-q", "--filter", f"label={label}", timeout=60).stdout.split()
    containers = client.run("ps", "-a", "-q", "--filter", f"label={label}", timeout=60).stdout.split()
    return images, containers


def _labelled_solution(tmp_path: Path, token: str, old: str = "", new: str = "") -> Path:
    """A copy of the solution whose every image carries the label `coursekit-test=<token>`
    (a LABEL right after each FROM is inherited by every later image of the stage), so the
    test sees what the grading left behind even while other builds run on the engine."""
    import shutil

    target = tmp_path / "target"
    shutil.copytree(SOLUTION, target / SOLUTION.name)
    path = target / SOLUTION.name / "Dockerfile"
    text = path.read_text(encoding="utf-8")
    if old:
        assert text.count(old) == 1
        text = text.replace(old, new)
    lines = []
    for line in text.splitlines():
        lines.append(line)
        if line.startswith("FROM "):
            lines.append(f'LABEL coursekit-test="{token}"')
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return target


def test_failed_build_blocks_the_dynamic_checks_and_leaves_nothing(tmp_path):
    """A multi-stage build that fails in its last stage: every check that needs the image names
    step01.build as the one to fix, and no stage image or build container is left behind."""
    import secrets

    client = _engine()
    token = secrets.token_hex(6)
    all_before = len(client.run("images", "-a", "-q", timeout=60).stdout.split())
    target = _labelled_solution(tmp_path, token, "USER 10001\n", "RUN exit 3\nUSER 10001\n")
    checks, seconds = _grade(tmp_path, target, "-k", "step01")
    assert checks["step01.build"]["outcome"] == "failed" and not checks["step01.build"]["blocked_by"]
    for cid in ("step01.starts", "step01.healthy", "step01.runs_non_root", "step01.runtime_config",
                "step01.image_size", "step01.rebuild_cache", "step01.graceful_stop"):
        assert checks[cid]["outcome"] == "failed" and checks[cid]["blocked_by"] == ["step01.build"], (cid, checks[cid])
        assert checks[cid]["hint"].startswith("`step01.build`"), checks[cid]["hint"]
    print(f"이미지 수(-a): 채점 전 {all_before}, 후 {len(client.run('images', '-a', '-q', timeout=60).stdout.split())}")
    assert _labelled_leftovers(client, f"coursekit-test={token}") == ([], [])


def test_unreachable_container_fails_fast_and_grading_leaves_nothing(tmp_path):
    """uvicorn on the container's loopback: step01.starts says so without waiting 60 s, the
    checks that need /health are blocked by it, the uid is still measured; the build stage,
    the rebuild's images and the containers are all removed."""
    import secrets

    client = _engine()
    token = secrets.token_hex(6)
    all_before = len(client.run("images", "-a", "-q", timeout=60).stdout.split())
    target = _labelled_solution(tmp_path, token, '"--host", "0.0.0.0"', '"--host", "127.0.0.1"')
    checks, seconds = _grade(tmp_path, target, "-k", "step01")
    starts = checks["step01.starts"]
    assert starts["outcome"] == "failed" and any("127.0.0.1" in m for m in starts["messages"]), starts
    assert starts["measured"]["startup_seconds"] < 20, starts["measured"]
    for cid in ("step01.healthy", "step01.runtime_config", "step01.graceful_stop"):
        assert checks[cid]["blocked_by"] == ["step01.starts"], (cid, checks[cid])
    assert checks["step01.runs_non_root"]["outcome"] == "passed", checks["step01.runs_non_root"]
    assert checks["step01.rebuild_cache"]["outcome"] == "passed", checks["step01.rebuild_cache"]
    print(f"채점 {seconds:.1f}초; 이미지 수(-a): 채점 전 {all_before}, "
          f"후 {len(client.run('images', '-a', '-q', timeout=60).stdout.split())}")
    assert _labelled_leftovers(client, f"coursekit-test={token}") == ([], [])
