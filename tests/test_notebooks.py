"""Every lesson notebook runs offline, top to bottom, against the simulator (nbval), in a copy
of the course WITHOUT solutions/ (what an instructor hands out): a lesson never reads the answers.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

import solutionless
from coursekit import REPO_ROOT, manifest

READY = [s for s in manifest.load().steps if s.status == "ready"]


@pytest.fixture(scope="module")
def course_copy(tmp_path_factory):
    return solutionless.copy_without_solutions(tmp_path_factory.mktemp("nb") / "course")


@pytest.mark.parametrize("step", READY, ids=[s.id for s in READY])
def test_lesson_notebook_runs_without_solutions(step, course_copy, tmp_path):
    nb = course_copy / "steps" / step.folder / step.notebook
    assert nb.exists(), f"steps/{step.folder}/{step.notebook} 가 없습니다"
    env = solutionless.env(course_copy)
    for key in ("GOOGLE_GEMINI_BASE_URL", "GOOGLE_API_KEY"):
        env.pop(key, None)
    env["MPLBACKEND"] = "Agg"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "nbval", "--nbval-lax", "-p", "no:cacheprovider", "-q",
         "--nbval-cell-timeout", "300", "-o", f"cache_dir={tmp_path}", str(nb)],
        cwd=nb.parent, env=env, capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL,
    )
    out = proc.stdout + proc.stderr
    print(out[-3000:])
    assert proc.returncode == 0, f"solutions/ 가 없는 사본에서 레슨이 실패했습니다:\n{out[-6000:]}"


# "solutions", 'solutions/01-docker', REPO / "solutions", .../solutions/...
SOLUTION_PATH = re.compile(r"""["'/]solutions(["'/]|$)""")


@pytest.mark.parametrize("step", READY, ids=[s.id for s in READY])
def test_lesson_code_does_not_name_the_solutions_folder(step):
    """Cheap, static guard next to the run above: no code cell builds a path to solutions/."""
    nb = REPO_ROOT / "steps" / step.folder / step.notebook
    cells = json.loads(nb.read_text(encoding="utf-8"))["cells"]
    found = []
    for n, cell in enumerate(cells):
        if cell["cell_type"] != "code":
            continue
        for no, line in enumerate("".join(cell["source"]).splitlines(), start=1):
            code = line.split("#", 1)[0]
            if SOLUTION_PATH.search(code):
                found.append(f"셀 {n}, {no}번째 줄: {line.strip()[:100]}")
    assert not found, f"{nb.relative_to(REPO_ROOT)} 의 코드가 해답 폴더를 읽습니다:\n" + "\n".join(found)
