"""Every lesson notebook runs offline, top to bottom, against the simulator, in a copy of the
course WITHOUT solutions/ (what an instructor hands out): a lesson never reads the answers.

The lessons are executed once per session (`executed_lessons` in tests/conftest.py, nbconvert's
executor, the engine nbval uses too); the docs build reuses those outputs instead of running them
again. A maintainer can still run one lesson alone: `pytest -p nbval --nbval-lax steps/NN/lesson.ipynb`.
"""

from __future__ import annotations

import json
import re

import pytest

from coursekit import REPO_ROOT, manifest

READY = [s for s in manifest.load().steps if s.status == "ready"]


@pytest.mark.parametrize("step", READY, ids=[s.id for s in READY])
def test_lesson_notebook_runs_without_solutions(step, executed_lessons):
    """The lesson ran top to bottom (every cell, no error) in the copy without solutions/. The run
    itself is the session fixture `executed_lessons` (tests/conftest.py), shared with the docs build."""
    _, runs = executed_lessons
    run = runs[step.id]
    print(f"{step.id}: {run.seconds:.1f}초, 종료 코드 {run.returncode}")
    assert run.returncode == 0, f"solutions/ 가 없는 사본에서 레슨이 실패했습니다:\n{run.output[-6000:]}"


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


@pytest.mark.parametrize("step", READY, ids=[s.id for s in READY])
def test_lesson_plots_reach_the_executed_notebook(step, executed_lessons):
    """A lesson that draws with matplotlib leaves its pictures in the executed notebook (the docs site
    shows those outputs). Under a non-interactive backend (MPLBACKEND=Agg) plt.show() draws nothing
    and the site silently lost every plot of steps 02 and 03."""
    copy, runs = executed_lessons
    nb = copy / "steps" / step.folder / step.notebook
    if runs[step.id].returncode != 0:
        pytest.skip("레슨 실행이 실패했습니다 (test_lesson_notebook_runs_without_solutions 가 알려 줌)")
    cells = json.loads(nb.read_text(encoding="utf-8"))["cells"]
    plotting = [c for c in cells if c["cell_type"] == "code" and "plt." in "".join(c["source"])]
    if not plotting:
        pytest.skip("그림을 그리지 않는 레슨입니다")
    images = [c for c in plotting if any("image/png" in o.get("data", {}) for o in c.get("outputs", []))]
    assert images, f"plt 를 쓰는 셀 {len(plotting)}개 중 그림(image/png)을 남긴 셀이 없습니다"
