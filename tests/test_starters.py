"""The starter generator (coursekit.starters) and the committed starters being in sync."""

import textwrap

import pytest

from coursekit import manifest, starters

SOLUTION = textwrap.dedent(
    """\
    import os

    async def chat(req):
        # BEGIN SOLUTION
        response = await llm.ainvoke(req.message)
        # STARTER
        # # TODO(1): 비동기 호출로 바꾸세요.
        # response = llm.invoke(req.message)
        #
        # return response
        # END SOLUTION
        return response
    """
)


def test_render_keeps_starter_lines_and_drops_solution():
    out = starters.render(SOLUTION)
    assert "ainvoke" not in out
    assert "    # TODO(1): 비동기 호출로 바꾸세요.\n    response = llm.invoke(req.message)\n" in out
    assert "SOLUTION" not in out and "# STARTER" not in out
    assert out.startswith("import os\n")
    compile(out, "<starter>", "exec")


def test_file_without_markers_is_unchanged():
    assert starters.render("a = 1\n# comment\n") == "a = 1\n# comment\n"


@pytest.mark.parametrize(
    "bad, why",
    [
        ("# BEGIN SOLUTION\nx = 1\n# END SOLUTION\n", "STARTER"),
        ("# BEGIN SOLUTION\nx = 1\n# STARTER\n# x = 2\n# END SOLUTION\n", "TODO"),
        ("# BEGIN SOLUTION\nx = 1\n# STARTER\n# TODO: y\n", "닫히지"),
        ("x = 1\n# END SOLUTION\n", "짝이"),
        ("# BEGIN SOLUTION\n# STARTER\nx = 2  # TODO\n# END SOLUTION\n", "시작해야"),
        ("# BEGIN SOLUTION\n# BEGIN SOLUTION\n", "다시"),
    ],
)
def test_malformed_markers_fail_loudly(bad, why):
    with pytest.raises(starters.MarkerError, match=why):
        starters.render(bad, source="f.py")


def test_generate_step_copies_plain_files_and_skips_caches(tmp_path):
    sol, step = tmp_path / "solutions" / "09-x", tmp_path / "steps" / "09-x"
    (sol / "__pycache__").mkdir(parents=True)
    (sol / "__pycache__" / "m.cpython-311.pyc").write_bytes(b"\0")
    (sol / "main.py").write_text(SOLUTION, encoding="utf-8")
    (sol / "requirements.txt").write_text("fastapi\n", encoding="utf-8")
    (sol / ".env").write_text("SECRET=1\n", encoding="utf-8")
    starters.generate_step(sol, step)
    assert sorted(p.name for p in step.iterdir()) == ["main.py", "requirements.txt"]
    assert "ainvoke" not in (step / "main.py").read_text(encoding="utf-8")
    assert starters.check_all(tmp_path) == []
    (step / "main.py").write_text("changed\n", encoding="utf-8")
    (step / "extra.py").write_text("x\n", encoding="utf-8")
    problems = starters.check_all(tmp_path)
    assert any("main.py" in p for p in problems) and any("extra.py" in p for p in problems)


def test_committed_starters_equal_generated_ones():
    problems = starters.check_all()
    assert not problems, "스타터가 솔루션과 어긋납니다. `make starters` 를 실행하세요:\n" + "\n".join(problems)


# --------------------------------------------------------------------------- carry-forward (DESIGN.md 8.2)
STEP1_MAIN = textwrap.dedent(
    """\
    import os

    # BEGIN SOLUTION
    LIMIT = 10
    # STARTER
    # # TODO 1: 상한을 정하세요.
    # LIMIT = None
    # END SOLUTION


    def handler(x):
        return x + 1
    """
)


def _course(root, builds_on='["step01"]'):
    (root / "coursekit").mkdir(parents=True, exist_ok=True)
    (root / "coursekit" / "course.toml").write_text(
        '[[steps]]\nid = "step01"\nfolder = "01-a"\n\n'
        f'[[steps]]\nid = "step02"\nfolder = "02-b"\nbuilds_on = {builds_on}\n', encoding="utf-8")
    sol1 = root / "solutions" / "01-a"
    sol1.mkdir(parents=True)
    (sol1 / "main.py").write_text(STEP1_MAIN, encoding="utf-8")
    (sol1 / "util.py").write_text("VALUE = 1\n", encoding="utf-8")
    (sol1 / "README.md").write_text("# 단계 1\n", encoding="utf-8")
    (root / "solutions" / "02-b").mkdir(parents=True)
    return sol1, root / "solutions" / "02-b"


def test_finished_and_base_views():
    text = STEP1_MAIN
    assert "LIMIT = 10" in starters.finished(text) and "TODO" not in starters.finished(text)
    assert "LIMIT = None" in starters.base(text) and "LIMIT = 10" not in starters.base(text)
    assert "TODO" not in starters.base(text)


def test_carry_forward_copies_finished_files_and_catches_drift(tmp_path):
    sol1, sol2 = _course(tmp_path)
    problems = starters.check_carry(tmp_path)
    assert len(problems) == 2 and all("없음" in p for p in problems)  # main.py, util.py (README.md is the step's own)
    written, conflicts = starters.write_carry(tmp_path)
    assert conflicts == [] and {p.name for p in written} == {"main.py", "util.py"}
    assert (sol2 / "main.py").read_text(encoding="utf-8") == starters.finished(STEP1_MAIN)  # finished code, no markers
    assert not (sol2 / "README.md").exists()
    assert starters.check_carry(tmp_path) == []
    # An unmarked carried file edited by hand in the later step: drift.
    (sol2 / "util.py").write_text("VALUE = 2\n", encoding="utf-8")
    assert any("util.py" in p and "바이트" in p for p in starters.check_carry(tmp_path))
    starters.write_carry(tmp_path)
    assert (sol2 / "util.py").read_text(encoding="utf-8") == "VALUE = 1\n"


def test_a_later_step_changes_only_inside_its_own_solution_regions(tmp_path):
    sol1, sol2 = _course(tmp_path)
    starters.write_carry(tmp_path)
    main2 = sol2 / "main.py"
    changed = main2.read_text(encoding="utf-8").replace(
        "    return x + 1\n",
        "    # BEGIN SOLUTION\n    return x + 2\n    # STARTER\n    # # TODO 1: 2를 더하세요.\n"
        "    # return x + 1\n    # END SOLUTION\n")
    assert changed.count("BEGIN SOLUTION") == 1
    main2.write_text(changed, encoding="utf-8")
    assert starters.check_carry(tmp_path) == []
    # ... but a change of the earlier step's code outside them is drift, named with the differing line.
    main2.write_text(changed.replace("import os", "import sys"), encoding="utf-8")
    (problem,) = starters.check_carry(tmp_path)
    assert "main.py" in problem and "-import os" in problem and "+import sys" in problem
    main2.write_text(changed, encoding="utf-8")
    # The earlier step changes: the change is merged into the later step's marked file (git merge-file).
    (sol1 / "main.py").write_text(STEP1_MAIN.replace("import os", "import os\nimport json"), encoding="utf-8")
    assert any("main.py" in p for p in starters.check_carry(tmp_path))
    written, conflicts = starters.write_carry(tmp_path)
    assert conflicts == [] and main2 in written
    merged = main2.read_text(encoding="utf-8")
    assert "import json" in merged and "return x + 2" in merged and starters.check_carry(tmp_path) == []
    # A change that collides with the later step's own region is reported, never guessed.
    (sol1 / "main.py").write_text(STEP1_MAIN.replace("return x + 1", "return x + 100"), encoding="utf-8")
    before = main2.read_bytes()
    written, conflicts = starters.write_carry(tmp_path)
    assert main2 not in written and len(conflicts) == 1 and "main.py" in conflicts[0]
    assert main2.read_bytes() == before
    with pytest.raises(starters.MarkerError):
        starters.write_all(tmp_path)


def test_step03_carries_steps_02_and_01():
    targets = {c.target.relative_to(c.target.parents[1]).as_posix(): c.source.parent.name for c in starters.carry_plan()}
    assert targets.get("03-cicd/main.py") == "02-fastapi"
    assert targets.get("03-cicd/Dockerfile") == "01-docker"
    assert "03-cicd/README.md" not in targets


# The later step's service still does everything the earlier step's grader checks (load checks left
# out for time: the same async code path is graded under load in the earlier step itself).
STILL_HOLDS = [("step03", "step02", ["step02.contract", "step02.health", "step02.validation", "step02.auth",
                                      "step02.settings", "step02.upstream_errors", "step02.retry_bound"]),
               ("step04", "step02", ["step02.contract", "step02.health", "step02.validation", "step02.auth",
                                     "step02.settings", "step02.upstream_errors", "step02.retry_bound"]),
               ("step04", "step03", [c.id for c in manifest.load().step("step03").checks]),
               ("step05", "step02", ["step02.contract", "step02.validation", "step02.auth", "step02.upstream_errors",
                                     "step02.retry_bound"]),
               ("step05", "step03", ["step03.versions", "step03.eval_report", "step03.ci_commands"]),
               ("step05", "step04", [c.id for c in manifest.load().step("step04").checks]),
               # step02.upstream_errors is left out on purpose: step 06 answers a malformed upstream body with
               # 502 upstream_malformed (after a retry) where step 02 taught 500 internal_error.
               ("step06", "step02", ["step02.contract", "step02.validation", "step02.auth", "step02.retry_bound"]),
               ("step06", "step04", [c.id for c in manifest.load().step("step04").checks]),
               ("step06", "step05", [c.id for c in manifest.load().step("step05").checks])]

# Step 06 adds behaviour the earlier graders do not know about and that their own loads would trip:
# a per-key rate limit (their load runs from one key), a circuit breaker (their injected 5xx open it),
# load shedding (their loads), a response cache (their repeated questions would be answered without the
# upstream call and the tokens they count), a fallback model (their injected 5xx would be
# answered by it) and a total deadline (step 04's quality check uses the slow thinking model). The
# earlier contract must still hold with those switched off by configuration, as an operator would.
STILL_HOLDS_ENV = {"step06": {"RATE_LIMIT": "100000/minute", "FALLBACK_MODEL": "", "REQUEST_DEADLINE_SECONDS": "60",
                               "CIRCUIT_FAIL_MAX": "100000", "MAX_IN_FLIGHT": "1000", "CACHE_TTL_SECONDS": "0"}}


@pytest.mark.parametrize("later, earlier, checks", STILL_HOLDS, ids=[f"{a}-keeps-{b}" for a, b, _ in STILL_HOLDS])
def test_later_solution_passes_the_earlier_steps_checks(later, earlier, checks, tmp_path, request):
    from conftest import needs_trace_backend

    needs_trace_backend(request, earlier)
    import json
    import os
    import shutil
    import subprocess
    import sys

    from coursekit import REPO_ROOT, manifest

    m = manifest.load()
    target = tmp_path / "target" / m.step(earlier).folder
    shutil.copytree(REPO_ROOT / "solutions" / m.step(later).folder, target,
                    ignore=shutil.ignore_patterns("__pycache__", ".env", "results"))
    report = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, "-m", "pytest", str(REPO_ROOT / "grader"), "-p", "no:cacheprovider", "-q",
                           "--target", str(tmp_path / "target"), "--checks", ",".join(checks),
                           "--grade-report", str(report)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, **STILL_HOLDS_ENV.get(later, {})})
    got = json.loads(report.read_text(encoding="utf-8"))["steps"][earlier]["checks"]
    bad = {cid: c["messages"] for cid, c in got.items() if c["outcome"] != "passed"}
    assert set(got) == set(checks) and not bad, (bad, proc.stdout[-3000:])


def test_builds_on_an_unknown_step_is_a_korean_error(tmp_path):
    _course(tmp_path, builds_on='["step9"]')
    with pytest.raises(starters.MarkerError, match="builds_on 에 없는 단계"):
        starters.carry_plan(tmp_path)


def test_manifest_builds_on_must_name_an_earlier_step():
    import tomllib

    from coursekit import manifest

    data = tomllib.loads((manifest.MANIFEST_PATH).read_text(encoding="utf-8"))
    assert manifest._parse(data).step("step03").builds_on == ("step02", "step01")
    data["steps"][0]["builds_on"] = ["step03"]
    with pytest.raises(ValueError, match="앞에 나온 단계"):
        manifest._parse(data)
