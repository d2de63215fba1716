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
