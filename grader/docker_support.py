"""Helpers of the step-01 (Docker) grader: Dockerfile facts on top of the kit's parser
(coursekit.dockerfile), the .dockerignore matcher Docker uses, and running docker
builds/containers that are cleaned up by id.

Kept separate from the test module so the maintainers' tests can exercise the parsers
without a Docker engine (tests/test_docker_base.py).
"""

from __future__ import annotations

import ipaddress
import json
import re
import shlex
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from coursekit.dockerbase import DockerClient
from coursekit.dockerfile import Instruction

# --------------------------------------------------------------------------- Dockerfile
def image_reference(image: str) -> tuple[str, str | None, str | None]:
    """(name, tag, digest) of an image reference such as registry:5000/python:3.11-slim@sha256:..."""
    digest = None
    if "@" in image:
        image, digest = image.split("@", 1)
    last = image.rsplit("/", 1)[-1]
    tag = None
    if ":" in last:
        name_part, tag = last.rsplit(":", 1)
        image = image[: len(image) - len(tag) - 1]
    return image, tag, digest


SECRET_WORDS = {"KEY", "APIKEY", "TOKEN", "SECRET", "SECRETS", "PASSWORD", "PASSWD", "PASS", "PWD",
                "CREDENTIAL", "CREDENTIALS", "PRIVATE"}
GOOGLE_KEY_RE = re.compile(r"AIza[0-9A-Za-z_\-]{30,}")


def secret_like(name: str) -> bool:
    parts = re.split(r"[_\-.]", name.upper())
    return any(p in SECRET_WORDS for p in parts) or name.upper().endswith(("APIKEY", "_KEY", "TOKEN", "SECRET"))


# Configuration that is given when the container runs (`docker run -e`), never baked into the
# image: the simulator's or Google's address, the Vertex AI switch, the project. Secrets are
# caught by `secret_like` (GOOGLE_API_KEY, SERVICE_API_KEY, *_TOKEN, *_SECRET ...).
RUNTIME_CONFIG_NAMES = {"GOOGLE_GEMINI_BASE_URL", "GEMINI_BASE_URL", "GOOGLE_GENAI_USE_VERTEXAI",
                        "GOOGLE_CLOUD_PROJECT", "GOOGLE_CLOUD_LOCATION", "GOOGLE_APPLICATION_CREDENTIALS"}
RUNTIME_CONFIG_SUFFIXES = ("_BASE_URL", "_URL", "_URI", "_ENDPOINT", "_API_BASE", "_DSN")
BUILD_TOOL_PREFIXES = ("PIP_", "UV_", "POETRY_", "PIPENV_", "PYTHON_", "CONDA_")  # build-time settings


def runtime_config_like(name: str) -> bool:
    """A setting the task gives at run time (an address, a project), not the image."""
    upper = name.upper()
    if upper in RUNTIME_CONFIG_NAMES:
        return True
    return upper.endswith(RUNTIME_CONFIG_SUFFIXES) and not upper.startswith(BUILD_TOOL_PREFIXES)


INSTALL_RE = re.compile(r"\b(pip3?|pip3\.\d+)\s+install\b|\buv\s+(pip\s+install|sync)\b|\bpoetry\s+install\b"
                        r"|\bpipenv\s+(install|sync)\b|\bconda\s+install\b")
DEPENDENCY_FILES = re.compile(
    r"^(requirements[\w.\-]*\.(txt|in)|constraints[\w.\-]*\.txt|pyproject\.toml|poetry\.lock|uv\.lock"
    r"|Pipfile(\.lock)?|setup\.cfg)$"
)


def copy_sources(ins: Instruction) -> list[str]:
    args = ins.json_args
    if args is None:
        try:
            args = shlex.split(ins.rest)
        except ValueError:
            args = ins.rest.split()
    return args[:-1] if len(args) >= 2 else args


def is_dependency_copy(ins: Instruction) -> bool:
    sources = copy_sources(ins)
    return bool(sources) and all(DEPENDENCY_FILES.match(Path(s).name) for s in sources)


# --------------------------------------------------------------------------- .dockerignore
def _pattern_regex(pattern: str) -> re.Pattern:
    """Go filepath.Match plus `**`, as Docker's patternmatcher does."""
    out = "^"
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "*":
            if pattern[i:i + 2] == "**":
                i += 2
                if pattern[i:i + 1] == "/":
                    out += "(.*/)?"
                    i += 1
                else:
                    out += ".*"
                continue
            out += "[^/]*"
        elif c == "?":
            out += "[^/]"
        elif c == "[":
            j = pattern.find("]", i + 1)
            if j == -1:
                out += re.escape(c)
            else:
                cls = pattern[i + 1:j]
                if cls.startswith("^") or cls.startswith("!"):
                    cls = "^" + cls[1:]
                out += "[" + cls.replace("\\", "\\\\") + "]"
                i = j
        elif c == "\\" and i + 1 < len(pattern):
            i += 1
            out += re.escape(pattern[i])
        else:
            out += re.escape(c)
        i += 1
    return re.compile(out + "$")


def _clean(path: str) -> str:
    parts: list[str] = []
    for p in path.replace("\\", "/").split("/"):
        if p in ("", "."):
            continue
        if p == "..":
            if parts:
                parts.pop()
            continue
        parts.append(p)
    return "/".join(parts)


class DockerIgnore:
    def __init__(self, text: str):
        self.rules: list[tuple[bool, re.Pattern, str]] = []
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            negate = line.startswith("!")
            if negate:
                line = line[1:].strip()
            pattern = _clean(line)
            if pattern:
                self.rules.append((negate, _pattern_regex(pattern), pattern))

    def excluded(self, path: str) -> bool:
        """Is `path` (relative to the context) left out of the build context?"""
        path = _clean(path)
        parents = path.split("/")
        candidates = ["/".join(parents[: i + 1]) for i in range(len(parents))]
        result = False
        for negate, rx, _ in self.rules:
            if any(rx.match(c) for c in candidates):
                result = not negate
        return result


# --------------------------------------------------------------------------- docker runs
@dataclass
class BuildResult:
    ok: bool
    seconds: float
    output: str
    image: str | None        # our tag (unique per run), when the build succeeded
    image_id: str | None
    layer_ids: list[str]     # intermediate images the classic builder printed
    created: list[str] = field(default_factory=list)  # of those, the ones this build made (not cache)

    def tail(self, n: int = 30) -> str:
        return "\n".join(self.output.splitlines()[-n:])


def docker_build(client: DockerClient, context: Path, tag: str, timeout: float = 900,
                 labels: dict[str, str] | None = None) -> BuildResult:
    cmd = [*client.build_args(), "-t", tag]
    if not client.buildkit:
        cmd.append("--force-rm")  # the classic builder keeps a failed step's container otherwise
    for k, v in (labels or {}).items():
        cmd += ["--label", f"{k}={v}"]
    cmd.append(str(context))
    started = time.monotonic()
    try:
        proc = client.run(*cmd, timeout=timeout)
        output = (proc.stdout or "") + (proc.stderr or "")
        ok = proc.returncode == 0
    except subprocess.TimeoutExpired as exc:
        output = f"{exc.stdout or ''}{exc.stderr or ''}\n(시간 초과: {timeout:.0f}초)"
        ok = False
    seconds = time.monotonic() - started
    image_id = None
    if ok:
        r = client.run("image", "inspect", "--format", "{{.Id}}", tag, timeout=30)
        image_id = r.stdout.strip() or None
    output = output if isinstance(output, str) else str(output)
    layers = re.findall(r"^ ---> ([0-9a-f]{12})\s*$", output, flags=re.M)
    return BuildResult(ok, seconds, output, tag if ok else None, image_id, layers,
                       [] if client.buildkit else created_images(output))


def created_images(output: str) -> list[str]:
    """Images the classic builder made in this build, in order: the result of every step that
    was not `FROM` and not `Using cache`. (Multi-stage builds leave the earlier stages' images
    behind as dangling images; a failed build leaves the steps before the failure.)"""
    made = []
    parts = re.split(r"^Step \d+/\d+ : (.*)$", output, flags=re.M)
    for head, body in zip(parts[1::2], parts[2::2]):
        if head.split(None, 1)[0].upper() == "FROM" or "---> Using cache" in body:
            continue
        ids = re.findall(r"^ ---> ([0-9a-f]{12})\s*$", body, flags=re.M)
        if ids:
            made.append(ids[-1])
    return made


def install_steps_cached(client: DockerClient, output: str) -> tuple[list[str], list[str]]:
    """(cached, rebuilt) dependency-install steps found in a build's output."""
    cached, rebuilt = [], []
    if client.buildkit:
        # "#8 [build 4/4] RUN pip install ..." ... "#8 CACHED"
        steps: dict[str, str] = {}
        for m in re.finditer(r"^#(\d+) \[[^\]]*\] (RUN .*)$", output, flags=re.M):
            if INSTALL_RE.search(m.group(2)):
                steps[m.group(1)] = m.group(2)
        for num, text in steps.items():
            (cached if re.search(rf"^#{num} CACHED\s*$", output, flags=re.M) else rebuilt).append(text)
    else:
        # "Step 5/16 : RUN pip install ..." then " ---> Using cache" or " ---> Running in ..."
        parts = re.split(r"^(Step \d+/\d+ : .*)$", output, flags=re.M)
        for head, body in zip(parts[1::2], parts[2::2]):
            text = head.split(" : ", 1)[1]
            if text.upper().startswith("RUN") and INSTALL_RE.search(text):
                (cached if "---> Using cache" in body else rebuilt).append(text)
    return cached, rebuilt


def image_ids(client: DockerClient) -> set[str]:
    """Short ids of every image, intermediate ones included."""
    r = client.run("images", "-a", "-q", timeout=60)
    return set(r.stdout.split())


def remove_images(client: DockerClient, refs: list[str], keep: set[str] | frozenset = frozenset()) -> None:
    """Remove images by our unique tag or by id, in the order given (leaves first).

    An id is removed only when no tag names it and it is not in `keep` (the images that
    existed before the grading), so a base image, the layer cache of the learner's own
    builds or their tagged images are never touched."""
    ids = [r for r in refs if r and (":" not in r or r.startswith("sha256:"))]
    tags = [r for r in refs if r and r not in ids]
    if tags:
        client.run("image", "rm", *tags, timeout=120)
    untagged = []
    for ref in dict.fromkeys(ids):
        if ref[:12] in keep:
            continue
        r = client.run("image", "inspect", "--format", "{{len .RepoTags}}", ref, timeout=30)
        if r.returncode == 0 and r.stdout.strip() == "0":
            untagged.append(ref)
    if untagged:
        # one call; an image that is already gone (removed with its child) is only reported
        client.run("image", "rm", *untagged, timeout=120)


def bridge_gateway(client: DockerClient) -> str | None:
    """The host's address on the default bridge (docker0). Docker 20.10 does not list the
    gateway of the default bridge; it is then the first address of the subnet."""
    r = client.run("network", "inspect", "bridge", "--format", "{{json .IPAM.Config}}", timeout=30)
    try:
        configs = json.loads(r.stdout or "null") or []
    except ValueError:
        configs = []
    for cfg in configs:
        if cfg.get("Gateway"):
            return cfg["Gateway"]
        try:
            net = ipaddress.ip_network(cfg.get("Subnet", ""), strict=False)
        except ValueError:
            continue
        if net.version == 4:
            return str(next(net.hosts()))
    return None


def can_bind(host: str) -> bool:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
        return True
    except OSError:
        return False


def simulator_host_for_containers(client: DockerClient) -> str:
    """Where to run the simulator so a container can reach it as host.docker.internal.

    On a Linux engine the gateway of the default bridge is a local interface of the host
    (not reachable from outside the machine); Docker Desktop forwards host.docker.internal
    to the host's loopback instead."""
    gw = bridge_gateway(client)
    if gw and can_bind(gw):
        return gw
    return "127.0.0.1"


def inspect(client: DockerClient, ref: str, kind: str = "container") -> dict:
    r = client.run(kind, "inspect", ref, timeout=30)
    try:
        data = json.loads(r.stdout)
        return data[0] if data else {}
    except ValueError:
        return {}


def health(client: DockerClient, cid: str) -> dict:
    """The container's health record (Status, FailingStreak, Log of the last 5 probes), or {}."""
    r = client.run("inspect", "--format", "{{json .State.Health}}", cid, timeout=30)
    try:
        return json.loads(r.stdout or "null") or {}
    except ValueError:
        return {}


def _proc_net_address(hex_addr: str) -> tuple[str, int]:
    addr, port = hex_addr.split(":")
    raw = bytes.fromhex(addr)
    if len(raw) == 4:
        ip = ipaddress.IPv4Address(raw[::-1])
    else:  # IPv6: four little-endian 32-bit words
        ip = ipaddress.IPv6Address(b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4)))
        if ip.ipv4_mapped:
            ip = ip.ipv4_mapped
    return str(ip), int(port, 16)


def parse_listeners(proc_net_text: str) -> list[tuple[str, int]]:
    """(address, port) of the LISTEN sockets in /proc/net/tcp and /proc/net/tcp6 text."""
    found = []
    for line in proc_net_text.splitlines():
        fields = line.split()
        if len(fields) > 3 and fields[3] == "0A" and ":" in fields[1]:  # 0A = TCP_LISTEN
            try:
                found.append(_proc_net_address(fields[1]))
            except ValueError:
                continue
    return sorted(set(found))


def listeners(client: DockerClient, cid: str) -> list[tuple[str, int]] | None:
    """The container's listening TCP sockets (read inside it), or None if they cannot be read."""
    r = client.run("exec", cid, "cat", "/proc/net/tcp", "/proc/net/tcp6", timeout=15)
    if r.returncode != 0 and not r.stdout.strip():
        return None
    return parse_listeners(r.stdout)


def reachable_from_outside(address: str) -> bool:
    """Does a socket bound to this address accept connections forwarded by `docker run -p`?"""
    return ipaddress.ip_address(address).is_unspecified or not ipaddress.ip_address(address).is_loopback
