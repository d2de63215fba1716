"""A local stand-in for the official `python:3.11-slim` base image.

Where the public image registry cannot be reached (CI here, an offline classroom),
`docker pull python:3.11-slim` fails and no learner Dockerfile can build. This module
builds an equivalent base image locally instead:

* `debootstrap --variant=minbase` of Debian bookworm (whose python3 is 3.11, like
  `python:3.11-slim`, which is also bookworm based) from the mirror apt already uses,
* python3 + venv, and a virtual environment first on PATH, so `python` and `pip` work as
  in the official image (pip installs as root into it, any user can run it),
* the host's CA trust store and pip's index settings copied in at build time, so that
  `pip install` inside a `docker build` reaches the same package index as the host.
  Nothing of this is committed: it exists only in the local image.

The result is tagged with the name the Dockerfile uses (e.g. `python:3.11-slim`) and
cached: nothing is done when the tag already exists.

Also here: the choice of docker client (`docker_command()`), shared with the grader.
Set `COURSE_DOCKER=/path/to/docker` to choose one yourself; otherwise the first client
that can build is taken (one with buildx, or an older client whose default builder is
the classic one; Debian's /usr/bin/docker from `docker.io` is such a client).

Usage: `course docker-base [IMAGE ...]` or `python -m coursekit.dockerbase [IMAGE ...]`.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import functools
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .dockerfile import parse_dockerfile

__all__ = [
    "DEFAULT_IMAGE",
    "SUPPORTED_IMAGES",
    "DockerClient",
    "docker_command",
    "engine_running",
    "image_exists",
    "ensure_base_image",
    "build_local_base",
    "debian_mirror",
    "base_images_of",
    "main",
]

DEFAULT_IMAGE = "python:3.11-slim"
# Tags the bookworm-based stand-in can honestly replace (Debian bookworm ships Python 3.11).
SUPPORTED_IMAGES = (
    "python:3.11-slim",
    "python:3.11-slim-bookworm",
    "python:3.11",
    "python:3.11-bookworm",
)
SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
LOCAL_TAG = "coursekit/python-local:3.11-bookworm"
LABEL = "io.github.mlops-llm-course.local-base"
VENV = "/opt/python"
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
LOCK_FILE = Path(tempfile.gettempdir()) / "coursekit-dockerbase.lock"


def _log(msg: str) -> None:
    print(f"[docker-base] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# docker client
# ---------------------------------------------------------------------------
class DockerClient:
    """The docker CLI to use, and how its builder behaves."""

    def __init__(self, path: str, buildkit: bool):
        self.path = path
        self.buildkit = buildkit

    def env(self, extra: dict | None = None) -> dict:
        env = dict(os.environ)
        env["DOCKER_BUILDKIT"] = "1" if self.buildkit else "0"
        env.setdefault("DOCKER_CLI_HINTS", "false")
        if extra:
            env.update(extra)
        return env

    def run(self, *args: str, timeout: float = 120, check: bool = False, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(
            [self.path, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
            env=self.env(kw.pop("env", None)),
            **kw,
        )

    def build_args(self) -> list[str]:
        """Options for `docker build` that make its output readable step by step."""
        return ["build", "--progress=plain"] if self.buildkit else ["build"]

    def __repr__(self) -> str:
        return f"DockerClient({self.path!r}, buildkit={self.buildkit})"


def _candidates() -> list[str]:
    seen: list[str] = []
    for directory in os.environ.get("PATH", "").split(os.pathsep) + ["/usr/bin", "/usr/local/bin"]:
        path = os.path.join(directory or ".", "docker")
        if os.path.isfile(path) and os.access(path, os.X_OK):
            real = os.path.realpath(path)
            if real not in [os.path.realpath(s) for s in seen]:
                seen.append(path)
    return seen


def _client_major(path: str) -> int | None:
    try:
        out = subprocess.run(
            [path, "version", "--format", "{{.Client.Version}}"], capture_output=True, text=True, timeout=15
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.match(r"\s*(\d+)\.", out)
    return int(m.group(1)) if m else None


def _has_buildx(path: str) -> bool:
    try:
        return subprocess.run([path, "buildx", "version"], capture_output=True, timeout=15).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@functools.lru_cache(maxsize=None)
def docker_command() -> DockerClient | None:
    """The docker client to use, or None when there is none.

    `COURSE_DOCKER` wins. Otherwise: a client with buildx (BuildKit), else a client older
    than 23 (classic builder by default, e.g. Debian's docker.io), else any client with
    the classic builder (DOCKER_BUILDKIT=0).
    """
    chosen = os.environ.get("COURSE_DOCKER")
    if chosen:
        path = shutil.which(chosen) or chosen
        return DockerClient(path, buildkit=_has_buildx(path))
    candidates = _candidates()
    for path in candidates:
        if _has_buildx(path):
            return DockerClient(path, buildkit=True)
    for path in candidates:
        major = _client_major(path)
        if major is not None and major < 23:
            return DockerClient(path, buildkit=False)
    if candidates:
        return DockerClient(candidates[0], buildkit=False)
    return None


def engine_running(client: DockerClient | None = None, timeout: float = 10) -> bool:
    client = client or docker_command()
    if client is None:
        return False
    try:
        return client.run("info", "--format", "{{.ServerVersion}}", timeout=timeout).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def image_exists(image: str, client: DockerClient | None = None) -> bool:
    client = client or docker_command()
    return client is not None and client.run("image", "inspect", image, timeout=30).returncode == 0


def base_images_of(dockerfile: Path) -> list[str]:
    """External base images named by FROM lines (stage names and `scratch` left out)."""
    return parse_dockerfile(Path(dockerfile).read_text(encoding="utf-8")).external_images()


# ---------------------------------------------------------------------------
# host facts
# ---------------------------------------------------------------------------
def debian_mirror(suite: str = SUITE, root: Path = Path("/")) -> str:
    """The Debian mirror apt on this host uses (deb822 .sources or one-line .list)."""
    files = [root / "etc/apt/sources.list"]
    d = root / "etc/apt/sources.list.d"
    if d.is_dir():
        files += sorted(p for p in d.iterdir() if p.suffix in (".list", ".sources"))
    for f in files:
        try:
            text = f.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        if f.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields: dict[str, str] = {}
                for line in stanza.splitlines():
                    if line.startswith("#") or ":" not in line:
                        continue
                    key, _, value = line.partition(":")
                    fields[key.strip().lower()] = value.strip()
                if fields.get("enabled", "yes").lower() == "no":
                    continue
                if "deb" not in fields.get("types", "").split():
                    continue
                if suite in fields.get("suites", "").split():
                    for uri in fields.get("uris", "").split():
                        if "security" not in uri:
                            return uri.rstrip("/")
        else:
            for line in text.splitlines():
                line = re.sub(r"\[[^\]]*\]", " ", line.split("#", 1)[0])  # drop [arch=... signed-by=...]
                parts = line.split()
                if len(parts) >= 3 and parts[0] == "deb" and parts[2] == suite and "security" not in parts[1]:
                    return parts[1].rstrip("/")
    return DEFAULT_MIRROR


def _host_pip_index() -> dict[str, str]:
    """Index settings of the host's pip that a container can use too (http/https only)."""
    settings: dict[str, str] = {}
    try:
        out = subprocess.run(
            [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, timeout=60
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        out = ""
    for line in out.splitlines():
        key, _, value = line.partition("=")
        name = key.split(".", 1)[-1].strip()
        value = value.strip().strip("'\"")
        if name in ("index-url", "extra-index-url", "trusted-host"):
            settings[name] = value
    for env, name in (
        ("PIP_INDEX_URL", "index-url"),
        ("PIP_EXTRA_INDEX_URL", "extra-index-url"),
        ("PIP_TRUSTED_HOST", "trusted-host"),
    ):
        if os.environ.get(env):
            settings[name] = os.environ[env]
    result = {}
    for name, value in settings.items():
        if name == "trusted-host":
            result[name] = value
            continue
        urls = [u for u in value.split() if u.startswith(("http://", "https://"))]
        if urls:
            result[name] = " ".join(urls)
    return result


def _host_ca_bundle() -> Path | None:
    for env in ("PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"):
        value = os.environ.get(env)
        if value and Path(value).is_file():
            return Path(value)
    p = Path(CA_BUNDLE)
    return p if p.is_file() else None


# ---------------------------------------------------------------------------
# building
# ---------------------------------------------------------------------------
@contextlib.contextmanager
def _lock():
    LOCK_FILE.parent.mkdir(parents=True, exist_ok=True)
    with open(LOCK_FILE, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


_BASE_DOCKERFILE = f"""\
FROM {{rootfs_image}}
# Trust store and pip settings of the host that built this LOCAL image (not committed anywhere).
COPY ca-certificates.crt {CA_BUNDLE}
COPY pip.conf /etc/pip.conf
RUN python3 -m venv {VENV} \\
 && {VENV}/bin/python -m pip --version \\
 && find / -xdev -name __pycache__ -type d -prune -exec rm -rf {{{{}}}} + \\
 && rm -rf /root/.cache
ENV PATH={VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \\
    LANG=C.UTF-8 \\
    PYTHON_VERSION=3.11
LABEL {LABEL}="debootstrap {SUITE} minbase + python3 venv (stand-in for python:3.11-slim)"
CMD ["python3"]
"""


def build_local_base(client: DockerClient, mirror: str | None = None, workdir: Path | None = None) -> str:
    """Build LOCAL_TAG with debootstrap; return its tag. Needs root and debootstrap."""
    if shutil.which("debootstrap") is None:
        raise RuntimeError("debootstrap 이 없습니다: `apt-get install -y debootstrap` 후 다시 실행하세요.")
    if os.geteuid() != 0:
        raise RuntimeError("debootstrap 은 root 권한이 필요합니다 (sudo 로 실행하세요).")
    mirror = mirror or debian_mirror()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="coursekit-base-", dir=workdir) as tmp:
        root = Path(tmp) / "rootfs"
        _log(f"debootstrap --variant=minbase {SUITE} ({mirror}) ...")
        subprocess.run(
            [
                "debootstrap",
                "--variant=minbase",
                "--include=python3,python3-venv,ca-certificates",
                SUITE,
                str(root),
                mirror,
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=900,
        )
        # Slim it like the official image: no package cache, lists, docs or man pages.
        for pattern in ("var/cache/apt/archives/*.deb", "var/lib/apt/lists/*", "usr/share/doc/*",
                        "usr/share/man/*", "usr/share/info/*", "var/log/*.log", "var/cache/debconf/*-old"):
            for p in root.glob(pattern):
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
        # The image's apt must use the same mirror (apt-get inside a learner's build).
        (root / "etc/apt/sources.list").write_text(
            f"deb {mirror} {SUITE} main\ndeb {mirror} {SUITE}-updates main\n", encoding="utf-8"
        )
        _log(f"rootfs ready in {time.monotonic() - started:.0f} s; docker import ...")
        rootfs_image = LOCAL_TAG + "-rootfs"
        tar = subprocess.Popen(["tar", "-C", str(root), "--numeric-owner", "-c", "."], stdout=subprocess.PIPE)
        imported = subprocess.run(
            [client.path, "import", "-", rootfs_image], stdin=tar.stdout, capture_output=True, text=True,
            timeout=600, env=client.env(),
        )
        tar.stdout.close()
        tar.wait()
        if imported.returncode != 0:
            raise RuntimeError(f"docker import 실패: {imported.stderr.strip()}")

        ctx = Path(tmp) / "context"
        ctx.mkdir()
        ca = _host_ca_bundle()
        shutil.copyfile(ca if ca else root / CA_BUNDLE.lstrip("/"), ctx / "ca-certificates.crt")
        conf = ["[global]", f"cert = {CA_BUNDLE}", "disable-pip-version-check = true"]
        conf += [f"{k} = {v}" for k, v in _host_pip_index().items()]
        (ctx / "pip.conf").write_text("\n".join(conf) + "\n", encoding="utf-8")
        (ctx / "Dockerfile").write_text(_BASE_DOCKERFILE.format(rootfs_image=rootfs_image), encoding="utf-8")
        built = client.run(*client.build_args(), "-t", LOCAL_TAG, str(ctx), timeout=600)
        if built.returncode != 0:
            raise RuntimeError(f"기반 이미지 빌드 실패:\n{built.stdout[-2000:]}\n{built.stderr[-2000:]}")
        client.run("image", "rm", rootfs_image, timeout=120)
    _log(f"{LOCAL_TAG} built in {time.monotonic() - started:.0f} s")
    return LOCAL_TAG


def _try_pull(client: DockerClient, image: str, timeout: float) -> bool:
    try:
        return client.run("pull", "--quiet", image, timeout=timeout).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def ensure_base_image(
    image: str = DEFAULT_IMAGE,
    client: DockerClient | None = None,
    pull: bool = True,
    pull_timeout: float = 60,
    force: bool = False,
) -> str:
    """Make `image` exist locally. Returns 'present', 'pulled' or 'built'.

    Raises RuntimeError (Korean message) when it can neither be pulled nor built here.
    """
    client = client or docker_command()
    if client is None:
        raise RuntimeError("docker 클라이언트를 찾을 수 없습니다.")
    if not force and image_exists(image, client):
        return "present"
    if not force and pull and _try_pull(client, image, pull_timeout):
        return "pulled"
    if image not in SUPPORTED_IMAGES:
        raise RuntimeError(
            f"'{image}' 을(를) 레지스트리에서 받을 수 없고, 로컬로 대신 만들 수 있는 이미지도 아닙니다 "
            f"(가능: {', '.join(SUPPORTED_IMAGES)})."
        )
    with _lock():
        if not force and image_exists(image, client):  # built meanwhile by another process
            return "present"
        if force or not image_exists(LOCAL_TAG, client):
            build_local_base(client)
        tagged = client.run("tag", LOCAL_TAG, image, timeout=60)
        if tagged.returncode != 0:
            raise RuntimeError(f"docker tag 실패: {tagged.stderr.strip()}")
    return "built"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="course docker-base",
        description=(
            "Dockerfile 의 베이스 이미지(예: python:3.11-slim)를 준비합니다. 이미 있으면 아무것도 하지 않고, "
            "레지스트리에서 받을 수 없으면 debootstrap 으로 Debian bookworm + Python 3.11 의 같은 역할을 하는 "
            "이미지를 로컬에서 만들어 그 이름으로 태그합니다 (root, debootstrap, 실행 중인 Docker 엔진 필요)."
        ),
    )
    parser.add_argument("images", nargs="*", help=f"베이스 이미지 이름 (기본: {DEFAULT_IMAGE})")
    parser.add_argument("--dockerfile", type=Path, help="이 Dockerfile 의 FROM 이미지들을 준비합니다")
    parser.add_argument("--no-pull", action="store_true", help="docker pull 을 시도하지 않고 바로 로컬로 만듭니다")
    parser.add_argument("--force", action="store_true", help="있어도 다시 만듭니다")
    args = parser.parse_args(argv)

    client = docker_command()
    if client is None:
        print("docker 클라이언트가 없습니다. Docker 를 설치하세요 (Debian: apt-get install docker.io).", file=sys.stderr)
        return 2
    if not engine_running(client):
        print(f"Docker 엔진이 응답하지 않습니다 ({client.path} info 실패). dockerd 를 먼저 시작하세요.", file=sys.stderr)
        return 2
    images = list(args.images)
    if args.dockerfile:
        images += base_images_of(args.dockerfile)
    images = images or [DEFAULT_IMAGE]
    rc = 0
    for image in images:
        started = time.monotonic()
        try:
            how = ensure_base_image(image, client, pull=not args.no_pull, force=args.force)
        except (RuntimeError, subprocess.SubprocessError) as exc:
            print(f"{image}: 실패 — {exc}", file=sys.stderr)
            rc = 1
            continue
        word = {"present": "이미 있음", "pulled": "레지스트리에서 받음", "built": "로컬에서 만듦"}[how]
        print(f"{image}: {word} ({time.monotonic() - started:.1f} 초)")
    return rc


if __name__ == "__main__":
    sys.exit(main())
