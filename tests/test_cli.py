"""The `course` CLI: help texts, progress display, lab environment, and a real `course lab`
whose notebook kernel gets a Korean answer from the simulator with no key of the user's."""

from __future__ import annotations

import asyncio
import json
import re
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from coursekit import REPO_ROOT, cli, manifest
from grader.harness import free_port

COURSE = [sys.executable, "-m", "coursekit.cli"]


def run(*args, **kw):
    return subprocess.run([*COURSE, *args], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120, **kw)


@pytest.mark.parametrize("cmd", [[], ["sim"], ["lab"], ["grade"], ["starters"]])
def test_help_is_korean(cmd):
    r = run(*cmd, "--help")
    assert r.returncode == 0, r.stderr
    assert any("\uac00" <= ch <= "\ud7a3" for ch in r.stdout), r.stdout


def test_unknown_step_is_a_clear_error():
    r = run("grade", "99")
    assert r.returncode == 2
    assert "알 수 없는 단계" in r.stderr and "Traceback" not in r.stderr


def test_unexpected_key_error_is_not_hidden(monkeypatch):
    """Only an unknown step/check name becomes a one-line Korean error; any other KeyError is a bug
    and keeps its traceback (it used to print `오류: latency` for the simulator's crash)."""
    def boom(args):
        raise KeyError("latency")
    monkeypatch.setattr(cli, "_cmd_starters", boom)
    with pytest.raises(KeyError):
        cli.main(["starters"])


@pytest.mark.parametrize("args,env", [
    (["sim", "--port", "0"], {"GOOGLE_API_KEY": "아무-문자열"}),
    (["sim", "--port", "0", "--valid-keys", "sim-any-key,키"], {}),
    (["sim", "--port", "0"], {"SIM_VALID_KEYS": "한글키"}),
    (["lab", "--no-browser"], {"SERVICE_API_KEY": "서비스-키"}),
    (["lab", "--real", "--no-browser"], {"GOOGLE_API_KEY": "실제-키"}),
])
def test_non_ascii_keys_are_refused_in_korean(args, env):
    """Keys travel in HTTP headers: a Korean placeholder must stop the command with a clear Korean
    message, not break every request later with UnicodeEncodeError."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("SIM_")} | env
    r = run(*args, env=full)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "ASCII" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_starters_check_reports_in_sync():
    r = run("starters")
    assert r.returncode == 0, r.stdout + r.stderr


def test_lab_environment_uses_simulator_and_hides_real_key():
    env = cli.lab_environment({"GOOGLE_API_KEY": "real-key", "GEMINI_API_KEY": "x", "PATH": "/bin"}, "http://127.0.0.1:9")
    assert env["GOOGLE_GEMINI_BASE_URL"] == "http://127.0.0.1:9"
    assert env["GOOGLE_API_KEY"] == cli.LOCAL_KEY == "sim-any-key" and "GEMINI_API_KEY" not in env
    assert env["SERVICE_API_KEY"] == cli.LAB_SERVICE_KEY == "lab-service-key"
    real = cli.lab_environment({"GOOGLE_API_KEY": "real-key", "GOOGLE_GEMINI_BASE_URL": "http://x"}, None)
    assert real["GOOGLE_API_KEY"] == "real-key" and "GOOGLE_GEMINI_BASE_URL" not in real


def test_lab_real_mode_without_key_refuses():
    env = {k: v for k, v in os.environ.items() if k not in ("GOOGLE_API_KEY", "GEMINI_API_KEY")}
    r = run("lab", "--real", env=env)
    assert r.returncode == 2 and "GOOGLE_API_KEY" in r.stderr


def test_progress_and_next_todo(capsys):
    m = manifest.load()
    s2 = m.step("step02")
    state = {"step02": {"passed": 1, "total": len(s2.checks),
                        "checks": {c.id: ("passed" if i == 0 else "failed") for i, c in enumerate(s2.checks)}}}
    cli.print_progress(state, m)
    out = capsys.readouterr().out
    assert "진행 상황" in out and f"1/{len(s2.checks)}" in out
    # A planned step (no checks yet) is listed as 준비 중; a ready one with its count of checks.
    for step in m.steps:
        line = next(ln for ln in out.splitlines() if ln.strip().startswith(step.id))
        assert ("준비 중" in line) == (step.status != "ready"), line
    todo = cli.next_todo(state, m)
    # step01 not graded yet -> it is the next thing to do
    assert "step01" in todo
    state["step01"] = {"passed": len(m.step("step01").checks), "checks": {c.id: "passed" for c in m.step("step01").checks}}
    assert s2.checks[1].id in cli.next_todo(state, m) and "힌트" in cli.next_todo(state, m)


# --------------------------------------------------------------------------- real lab

async def _execute(port: int, token: str, kernel_id: str, code: str, timeout: float = 60) -> str:
    from tornado.websocket import websocket_connect

    ws = await websocket_connect(f"ws://127.0.0.1:{port}/api/kernels/{kernel_id}/channels?token={token}")
    msg_id = uuid.uuid4().hex
    ws.write_message(json.dumps({
        "header": {"msg_id": msg_id, "username": "test", "session": uuid.uuid4().hex,
                   "msg_type": "execute_request", "version": "5.3"},
        "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
        "content": {"code": code, "silent": False, "store_history": False, "user_expressions": {},
                    "allow_stdin": False, "stop_on_error": True},
    }))
    out = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        raw = await asyncio.wait_for(ws.read_message(), timeout=deadline - time.monotonic())
        if raw is None:
            break
        msg = json.loads(raw)
        if msg.get("parent_header", {}).get("msg_id") != msg_id:
            continue
        kind = msg["header"]["msg_type"]
        if kind == "stream":
            out.append(msg["content"]["text"])
        elif kind == "error":
            out.append("ERROR: " + "\n".join(msg["content"]["traceback"]))
        elif kind == "status" and msg["content"]["execution_state"] == "idle":
            break
    ws.close()
    return "".join(out)


def test_course_lab_notebook_gets_korean_answer_without_user_key(tmp_path):
    port, token = free_port(), uuid.uuid4().hex
    env = {**os.environ, "JUPYTER_TOKEN": token, "GOOGLE_API_KEY": "users-real-key-must-not-be-used",
           "JUPYTER_CONFIG_DIR": str(tmp_path / "cfg"), "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt")}
    env.pop("GOOGLE_GEMINI_BASE_URL", None)
    env.pop("SERVICE_API_KEY", None)
    log = open(tmp_path / "lab.log", "wb")
    proc = subprocess.Popen([*COURSE, "lab", "--no-browser", "--port", str(port), "--latency", "zero"],
                            cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        headers = {"Authorization": f"token {token}"}
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "lab.log").read_text()
            try:
                if httpx.get(f"{base}/api/status", headers=headers, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        else:
            pytest.fail("JupyterLab 이 90초 안에 뜨지 않았습니다:\n" + (tmp_path / "lab.log").read_text())
        kernel = httpx.post(f"{base}/api/kernels", headers=headers, json={"name": "python3"}, timeout=30).json()
        code = (
            "import os\n"
            "from langchain_google_genai import ChatGoogleGenerativeAI\n"
            "print('KEY', os.environ['GOOGLE_API_KEY'])\n"
            "print('URL', os.environ['GOOGLE_GEMINI_BASE_URL'])\n"
            "print('SERVICE', os.environ['SERVICE_API_KEY'])\n"
            "print('ANSWER', ChatGoogleGenerativeAI(model='gemini-3.5-flash').invoke('하늘클라우드 요금제는 어떻게 되나요?').content)\n"
        )
        out = asyncio.run(_execute(port, token, kernel["id"], code))
        assert "ERROR" not in out, out
        assert f"KEY {cli.LOCAL_KEY}" in out
        assert "URL http://127.0.0.1:" in out
        assert "SERVICE lab-service-key" in out
        answer = out.split("ANSWER", 1)[1]
        assert any("\uac00" <= ch <= "\ud7a3" for ch in answer), out
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def test_docker_base_flags_reach_its_own_parser():
    r = run("docker-base", "--help")
    assert r.returncode == 0 and "usage" in r.stdout.lower(), r.stdout + r.stderr


# --------------------------------------------------------------------------- course grade
def _grade_args(*argv):
    parser = cli.build_parser()
    args, extra = parser.parse_known_args(["grade", *argv])
    args.pytest_args = [a for a in extra if a != "--"]
    return args


def test_grade_k_narrows_the_step_and_passes_checks_and_extra_args(tmp_path):
    m = manifest.load()
    cmd = cli.grade_command(_grade_args("02", "-k", "auth or health", "--checks", "step02.auth", "-x"),
                            tmp_path / "r.json", m)
    assert cmd[cmd.index("-k") + 1] == "step02 and (auth or health)" and cmd.count("-k") == 1
    assert cmd[cmd.index("--checks") + 1] == "step02.auth" and cmd[-1] == "-x"
    cmd = cli.grade_command(_grade_args("-k", "auth", "--target", "x"), tmp_path / "r.json", m)
    assert cmd[cmd.index("-k") + 1] == "auth" and cmd[cmd.index("--target") + 1] == str(Path("x").resolve())


@pytest.mark.parametrize("argv,needle", [
    (["02", "--checks", "step01.build"], "step01 의 채점 항목"),
    (["02", "--checks", "step02.nope"], "매니페스트에 없는 채점 항목"),
])
def test_grade_bad_checks_are_a_korean_error(argv, needle):
    r = run("grade", *argv)
    assert r.returncode == 2 and needle in r.stderr and "Traceback" not in r.stderr, r.stdout + r.stderr


def test_grade_report_is_kept_and_k_stays_inside_the_step():
    """`course grade 02 -k health` grades only step 02's health check (a bare -k used to replace the
    step filter, so step01.healthcheck ran too), and the report it names exists afterwards."""
    r = run("grade", "02", "-k", "health", "--target", str(REPO_ROOT / "solutions"))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    m = re.search(r"채점 보고서\(JSON\): (\S+)", r.stdout)
    assert m, r.stdout[-2000:]
    path = REPO_ROOT / m.group(1)
    assert path.is_file() and path.parent == REPO_ROOT / ".course" / "reports"
    report = json.loads(path.read_text(encoding="utf-8"))
    assert set(report["steps"]) == {"step02"}, report["steps"].keys()
    assert set(report["steps"]["step02"]["checks"]) == {"step02.health"}
    r = run("grade", "02", "--checks", "step02.auth", "--target", str(REPO_ROOT / "solutions"))
    assert r.returncode == 0, r.stdout[-3000:]
    report = json.loads(path.read_text(encoding="utf-8"))
    assert set(report["steps"]["step02"]["checks"]) == {"step02.auth"}


def test_partial_grading_merges_into_progress():
    m = manifest.load()
    ids = [c.id for c in m.step("step02").checks]
    state = {"step02": {"passed": 2, "checks": {ids[0]: "passed", ids[1]: "passed", ids[2]: "failed"}}}
    report = {"steps": {"step02": {"checks": {ids[1]: {"outcome": "failed"}, ids[2]: {"outcome": "passed"}}}}}
    merged = cli._merge_progress(state, report, m)["step02"]
    assert merged["checks"] == {ids[0]: "passed", ids[1]: "failed", ids[2]: "passed"}
    assert merged["passed"] == 2 and merged["total"] == len(ids)


# --------------------------------------------------------------------------- install (Makefile)
def test_test_tools_are_an_extra_that_only_make_test_installs(tmp_path):
    import tomllib

    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    base = " ".join(project["dependencies"])
    # check-jsonschema is a learner's tool since step 03 (the grader validates workflows with it)
    assert "playwright" not in base and "check-jsonschema" in base
    assert {d.split(">")[0] for d in project["optional-dependencies"]["test"]} >= {"playwright"}

    def dry(target: str, venv) -> str:
        r = subprocess.run(["make", "-n", f"VENV={venv}", target], cwd=REPO_ROOT, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        return r.stdout

    fresh = tmp_path / "fresh"
    assert "[test]" not in dry("lab", fresh) and "pip install --quiet -e ." in dry("lab", fresh)
    assert "-e '.[test]'" in dry("test", fresh)
    # a venv made by `make lab` (base stamp newer than pyproject.toml): make test adds only the extra
    lab_venv = tmp_path / "lab"
    lab_venv.mkdir()
    (lab_venv / ".installed").touch()
    out = dry("test", lab_venv)
    assert "-e '.[test]'" in out and "install --quiet -e .\n" not in out
    # both stamps current: nothing to install
    (lab_venv / ".installed-test").touch()
    assert "pip install" not in dry("test", lab_venv)
    # pyproject.toml changed after the test install: both are redone
    os.utime(lab_venv / ".installed", (1, 1))
    os.utime(lab_venv / ".installed-test", (1, 1))
    out = dry("test", lab_venv)
    assert "install --quiet -e .\n" in out and "-e '.[test]'" in out


def test_sim_port_zero_prints_the_port_it_really_listens_on():
    """`course sim --port 0` lets the OS pick a free port; the printed address must be that port
    (it used to print http://127.0.0.1:0, which nothing can reach)."""
    proc = subprocess.Popen([*COURSE, "sim", "--port", "0", "--latency", "zero"], cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        line = proc.stdout.readline()
        match = re.search(r"http://127\.0\.0\.1:(\d+)", line)
        assert match and match.group(1) != "0", line
        deadline = time.monotonic() + 30
        while True:
            try:
                stats = httpx.get(f"http://127.0.0.1:{match.group(1)}/_sim/stats", timeout=2).json()
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline and proc.poll() is None, line
                time.sleep(0.2)
        assert stats["requests_total"] == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
