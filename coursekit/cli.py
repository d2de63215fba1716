"""`course`: the learner's and instructor's command line.

    course sim                 Gemini API 시뮬레이터 실행
    course lab                 시뮬레이터 + JupyterLab (steps/)
    course grade [STEP]        채점하고 진행 상황과 다음 할 일 보기
    course starters --write    solutions/ 에서 steps/ 스타터 다시 만들기 (유지보수자)
    course docker-base         로컬 Docker 베이스 이미지 만들기 (레지스트리에 닿지 않을 때)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from . import REPO_ROOT, manifest

LOCAL_KEY = "sim-any-key"          # GOOGLE_API_KEY with the simulator (any ASCII string works)
LAB_SERVICE_KEY = "lab-service-key"  # the one documented SERVICE_API_KEY (READMEs, curl, locustfiles)
STATE_FILE = REPO_ROOT / ".course" / "progress.json"


# --------------------------------------------------------------------------- sim
def _cmd_sim(args) -> int:
    from . import simulator

    return simulator.serve_from_args(args) or 0  # refuses non-ASCII keys and --valid-keys itself


# --------------------------------------------------------------------------- lab
def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def lab_environment(base_env: dict[str, str], sim_url: str | None) -> dict[str, str]:
    """Environment for JupyterLab and the services learners start from it."""
    env = dict(base_env)
    if sim_url is None:  # real Gemini: leave the base URL alone (unset -> Google)
        env.pop("GOOGLE_GEMINI_BASE_URL", None)
        return env
    env["GOOGLE_GEMINI_BASE_URL"] = sim_url
    # Any non-empty key works with the simulator; never send the learner's real key to it.
    env["GOOGLE_API_KEY"] = LOCAL_KEY
    env.pop("GEMINI_API_KEY", None)
    # the key the READMEs' curl examples and the locustfiles send (X-API-Key: lab-service-key)
    env["SERVICE_API_KEY"] = env.get("SERVICE_API_KEY") or LAB_SERVICE_KEY
    return env


def _refuse_non_ascii_keys(names: tuple[str, ...]) -> bool:
    """Print a Korean error and return True when a key in the environment is not ASCII."""
    from .simulator import ConfigError
    from .simulator.cli import check_key_environment

    try:
        check_key_environment(names=names)
    except ConfigError as exc:
        print(f"오류: {exc}", file=sys.stderr)
        return True
    return False


def _cmd_lab(args) -> int:
    real = args.real or _truthy(os.environ.get("COURSE_USE_REAL_GEMINI"))
    if real and not os.environ.get("GOOGLE_API_KEY"):
        print("실제 Gemini 를 쓰려면 GOOGLE_API_KEY 환경 변수가 필요합니다.", file=sys.stderr)
        return 2
    # with the simulator the lab replaces GOOGLE_API_KEY, so only the real key must be checked
    if _refuse_non_ascii_keys(("GOOGLE_API_KEY", "SERVICE_API_KEY") if real else ("SERVICE_API_KEY",)):
        return 2
    jupyter = shutil.which("jupyter", path=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""))
    if jupyter is None:
        print("jupyter 를 찾을 수 없습니다. `make lab` 으로 설치하세요.", file=sys.stderr)
        return 2
    cmd = [jupyter, "lab", f"--notebook-dir={args.notebook_dir}", "--ServerApp.ip=127.0.0.1"]
    if args.port is not None:  # otherwise JupyterLab's own default: $JUPYTER_PORT or 8888 (next free one if busy)
        cmd.append(f"--port={args.port}")
    if args.no_browser:
        cmd.append("--no-browser")
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # containers and CI run as root
        cmd.append("--allow-root")
    cmd += args.jupyter_args

    if real:
        env = lab_environment(dict(os.environ), None)
        env["SERVICE_API_KEY"] = env.get("SERVICE_API_KEY") or LAB_SERVICE_KEY
        print("실제 Gemini API 를 사용합니다 (COURSE_USE_REAL_GEMINI). 호출마다 비용이 들 수 있습니다.")
        print(f"  SERVICE_API_KEY={env['SERVICE_API_KEY']}    # 서비스의 X-API-Key")
        return subprocess.call(cmd, env=env)

    from .simulator import SimulatorProcess

    with SimulatorProcess(latency=args.latency) as sim:
        env = lab_environment(dict(os.environ), sim.base_url)
        print(f"Gemini 시뮬레이터: {sim.base_url}  (지연 시간 {args.latency})\n"
              "JupyterLab 의 노트북과 터미널에 설정된 환경 변수:\n"
              f"  GOOGLE_GEMINI_BASE_URL={sim.base_url}\n"
              f"  GOOGLE_API_KEY={env['GOOGLE_API_KEY']}    # 시뮬레이터는 아무 ASCII 키나 받습니다\n"
              f"  SERVICE_API_KEY={env['SERVICE_API_KEY']}    # 서비스의 X-API-Key (README 의 curl, locustfile)",
              flush=True)
        print(f"JupyterLab 을 시작합니다: {args.notebook_dir}  (끝내려면 Ctrl+C)", flush=True)
        proc = subprocess.Popen(cmd, env=env)
        try:
            return proc.wait()
        except KeyboardInterrupt:
            proc.send_signal(signal.SIGINT)
            try:
                return proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                return proc.wait()


# --------------------------------------------------------------------------- grade
def _load_state() -> dict:
    try:
        return json.loads(STATE_FILE.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return {}


def _save_state(state: dict) -> None:
    STATE_FILE.parent.mkdir(parents=True, exist_ok=True)
    STATE_FILE.write_text(json.dumps(state, ensure_ascii=False, indent=2), encoding="utf-8")


def pad(text: str, width: int) -> str:
    """Left-justify by display width (Korean syllables take two terminal columns)."""
    import unicodedata

    cols = sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)
    return text + " " * max(0, width - cols)


def _bar(done: int, total: int, width: int = 20) -> str:
    filled = round(width * done / total) if total else 0
    return "█" * filled + "░" * (width - filled)


def print_progress(state: dict, m: manifest.Manifest | None = None) -> None:
    m = m or manifest.load()
    total_checks = sum(len(s.checks) for s in m.steps)
    done_checks = 0
    print("\n진행 상황")
    for s in m.steps:
        st = state.get(s.id)
        if s.status != "ready":
            print(f"  {s.id}  {pad(s.title, 32)} 준비 중")
            continue
        passed = st["passed"] if st else 0
        done_checks += passed
        mark = "✅" if st and passed == len(s.checks) else ("▶ " if st else "  ")
        print(f"  {s.id}  {pad(s.title, 32)} {_bar(passed, len(s.checks), 10)} {passed}/{len(s.checks)} {mark}")
    print(f"  전체 {_bar(done_checks, total_checks)} {done_checks}/{total_checks} 항목")


def next_todo(state: dict, m: manifest.Manifest | None = None) -> str:
    m = m or manifest.load()
    for s in m.steps:
        if s.status != "ready":
            continue
        st = state.get(s.id)
        if st is None:
            return f"다음 할 일: {s.id} {s.title} — steps/{s.folder}/{s.notebook} 을 열고 `course grade {s.number:02d}` 로 채점하세요."
        for cid, outcome in st.get("checks", {}).items():
            if outcome != "passed":
                c = m.check(cid)
                return f"다음 할 일: [{cid}] {c.title}\n  힌트: {c.hint}"
    return "다음 할 일: 준비된 단계를 모두 통과했습니다. 🎉 다음 단계가 공개되면 이어서 진행하세요."


REPORTS_DIR = REPO_ROOT / ".course" / "reports"


def grade_command(args, report_path: Path, m: manifest.Manifest) -> list[str]:
    """The pytest command `course grade` runs: the step filter and the user's -k are combined
    (`-k "step02 and (EXPR)"`), so a -k narrows the step instead of replacing it."""
    cmd = [sys.executable, "-m", "pytest", str(REPO_ROOT / "grader"), "-p", "no:cacheprovider",
           "--grade-report", str(report_path), "-q", "--no-header"]
    step = m.step(args.step) if args.step else None
    if step and args.k:
        cmd += ["-k", f"{step.id} and ({args.k})"]
    elif step:
        cmd += ["-k", step.id]
    elif args.k:
        cmd += ["-k", args.k]
    if args.checks:
        cmd += ["--checks", args.checks]
    if args.target:
        cmd += ["--target", str(Path(args.target).resolve())]
    return cmd + list(args.pytest_args)


def _check_ids(args, m: manifest.Manifest) -> str | None:
    """Validate --checks against the manifest (and the step, if given); Korean error or None."""
    if not args.checks:
        return None
    step = m.step(args.step) if args.step else None
    for cid in (c.strip() for c in args.checks.split(",") if c.strip()):
        check = m.check(cid)  # unknown ids raise manifest.UnknownName
        if step and check.step != step.id:
            return f"--checks {cid} 는 {check.step} 의 채점 항목입니다 ({step.id} 를 채점 중). 단계를 빼거나 맞추세요."
    return None


def _merge_progress(state: dict, report: dict, m: manifest.Manifest) -> dict:
    """Progress after a (possibly partial: -k, --checks) grading: checks that ran replace their old
    outcome, the others keep theirs."""
    for sid, s in report["steps"].items():
        old = state.get(sid, {}).get("checks", {})
        checks = {**old, **{cid: c["outcome"] for cid, c in s["checks"].items()}}
        order = [c.id for c in m.step(sid).checks]
        checks = {cid: checks[cid] for cid in order if cid in checks}
        state[sid] = {"passed": sum(1 for o in checks.values() if o == "passed"), "total": len(order),
                      "checks": checks}
    return state


def _cmd_grade(args) -> int:
    m = manifest.load()
    problem = _check_ids(args, m)
    if problem:
        print(f"오류: {problem}", file=sys.stderr)
        return 2
    name = m.step(args.step).id if args.step else "all"
    # kept after the command, where the learner can open it (the grader prints this path)
    REPORTS_DIR.mkdir(parents=True, exist_ok=True)
    report_path = REPORTS_DIR / f"last-{name}.json"
    report_path.unlink(missing_ok=True)  # never show an older grading as this one
    rc = subprocess.call(grade_command(args, report_path, m), cwd=REPO_ROOT)
    report = json.loads(report_path.read_text(encoding="utf-8")) if report_path.exists() else {"steps": {}}
    if not args.target:
        state = _merge_progress(_load_state(), report, m)
        _save_state(state)
    else:
        state = _merge_progress({}, report, m)
    print_progress(state, m)
    print()
    print(next_todo(state, m))
    if report_path.exists():
        print(f"\n채점 보고서(JSON): {report_path.relative_to(REPO_ROOT)}")
    return rc


# --------------------------------------------------------------------------- maintainers
def _cmd_starters(args) -> int:
    from . import starters

    if args.write:
        written = starters.write_all()
        for p in written:
            print(f"생성: {p.relative_to(REPO_ROOT)}")
        print(f"스타터 {len(written)}개 파일을 갱신했습니다." if written else "스타터가 이미 최신입니다.")
        return 0
    problems = starters.check_all()
    for p in problems:
        print(p)
    if problems:
        print("`course starters --write` 로 다시 생성하세요.", file=sys.stderr)
    return 1 if problems else 0


def _cmd_docker_base(args) -> int:
    from . import dockerbase

    return dockerbase.main(args.rest) or 0


# --------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="course",
        description="MLOps 기초 코스 도구: Gemini 시뮬레이터, JupyterLab, 채점기",
    )
    sub = parser.add_subparsers(dest="command", metavar="명령")
    sub.required = True

    p_sim = sub.add_parser("sim", help="로컬 Gemini API 시뮬레이터 실행", description="로컬 Gemini API 시뮬레이터를 실행합니다.")
    try:
        from . import simulator

        simulator.add_arguments(p_sim)
    except (ImportError, AttributeError):  # pragma: no cover - only while the simulator is missing
        pass
    p_sim.set_defaults(func=_cmd_sim)

    p_lab = sub.add_parser("lab", help="시뮬레이터를 띄우고 JupyterLab 시작",
                           description="시뮬레이터를 백그라운드에서 띄우고 steps/ 에서 JupyterLab 을 엽니다. "
                                       "노트북과 서비스는 GOOGLE_GEMINI_BASE_URL 로 시뮬레이터에 연결됩니다.")
    p_lab.add_argument("--port", type=int, default=None,
                       help="JupyterLab 포트 (기본: 환경 변수 JUPYTER_PORT, 없으면 8888, 쓰는 중이면 다음 빈 포트)")
    p_lab.add_argument("--latency", choices=["zero", "realistic"], default="realistic",
                       help="시뮬레이터 지연 모델 (기본 realistic)")
    p_lab.add_argument("--notebook-dir", default=str(REPO_ROOT / "steps"), help="노트북 폴더 (기본 steps/)")
    p_lab.add_argument("--no-browser", action="store_true", help="브라우저를 열지 않음")
    p_lab.add_argument("--real", action="store_true",
                       help="시뮬레이터 대신 실제 Gemini 사용 (GOOGLE_API_KEY 필요, COURSE_USE_REAL_GEMINI=1 과 같음)")
    p_lab.add_argument("jupyter_args", nargs=argparse.REMAINDER, help="jupyter lab 에 그대로 넘길 인자")
    p_lab.set_defaults(func=_cmd_lab)

    p_grade = sub.add_parser("grade", help="채점하고 진행 상황 보기",
                             description="pytest grader 로 단계를 채점하고, 여섯 단계의 진행 상황과 다음 할 일을 보여 줍니다.")
    p_grade.add_argument("step", nargs="?", help="단계 (예: 02, step02, 02-fastapi). 없으면 준비된 모든 단계")
    p_grade.add_argument("--target", help="채점할 폴더 (기본: steps/)")
    p_grade.add_argument("-k", metavar="EXPR",
                         help="pytest -k 식으로 좁히기. 단계와 함께 쓰면 그 단계 안에서만 (\"stepNN and (EXPR)\")")
    p_grade.add_argument("--checks", metavar="ID[,ID...]",
                         help="이 채점 항목만 실행 (예: step02.auth,step02.validation)")
    p_grade.epilog = "그 밖의 인자(예: -x, --lf)는 pytest 에 그대로 넘깁니다. 보고서: .course/reports/last-<단계>.json"
    p_grade.set_defaults(pytest_args=[])
    p_grade.set_defaults(func=_cmd_grade)

    p_st = sub.add_parser("starters", help="(유지보수자) solutions/ 에서 steps/ 스타터 생성/확인")
    p_st.add_argument("--write", action="store_true", help="스타터 파일을 다시 씀 (없으면 확인만)")
    p_st.set_defaults(func=_cmd_starters)

    p_db = sub.add_parser("docker-base", help="로컬 Docker 베이스 이미지 만들기 (레지스트리에 닿지 않을 때)",
                          add_help=False)
    p_db.add_argument("rest", nargs=argparse.REMAINDER)
    p_db.set_defaults(func=_cmd_docker_base)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["docker-base"]:  # its own parser, flags included
        from . import dockerbase

        return int(dockerbase.main(argv[1:]) or 0)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        if args.command == "grade":
            args.pytest_args = [a for a in extra if a != "--"]  # the rest goes to pytest as it is
        elif args.command == "lab":
            args.jupyter_args = extra + list(args.jupyter_args)  # e.g. --ServerApp.x=1 to jupyter lab
        else:
            parser.error(f"알 수 없는 인자: {' '.join(extra)}")
    try:
        return int(args.func(args) or 0)
    except manifest.UnknownName as exc:  # an unknown step or check name typed by the user
        print(f"오류: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
