"""A copy of the course as an instructor hands it out: everything a learner gets, no solutions/.

docs/instructor.md tells instructors to distribute the repository without solutions/; the
docs site and the lesson notebooks must work there (and so never read solutions/). Used by
tests/test_docs.py (the site is built from this copy) and tests/test_notebooks.py.

The copy is taken from the working tree (what a developer sees, uncommitted edits included),
without .git, .venv, build outputs and caches. Python started with ``env(copy)`` imports the
copy's ``coursekit`` (PYTHONPATH comes before the editable install's finder), so
``coursekit.REPO_ROOT`` is the copy and a lesson that looks for solutions/ finds nothing.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Top-level entries that are not part of the course a learner receives.
SKIP_TOP = {".git", ".venv", "site", "solutions", "artifacts", ".pytest_cache", "node_modules"}
SKIP_ANY = {"__pycache__", ".ipynb_checkpoints", ".pytest_cache", "mkdocs-jupyter"}


def copy_without_solutions(dest: Path) -> Path:
    """Copy the repository to dest (created), leaving out solutions/ and local state."""

    def ignore(directory: str, names: list[str]) -> set[str]:
        skipped = {n for n in names if n in SKIP_ANY or n.endswith(".egg-info")}
        if Path(directory).resolve() == ROOT:
            skipped |= {n for n in names if n in SKIP_TOP}
        return skipped

    shutil.copytree(ROOT, dest, ignore=ignore, symlinks=True)
    assert not (dest / "solutions").exists()
    return dest


def env(copy: Path, base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for processes that must import the copy's coursekit/grader, not this repo's."""
    out = dict(os.environ if base is None else base)
    out["PYTHONPATH"] = os.pathsep.join([str(copy)] + [p for p in out.get("PYTHONPATH", "").split(os.pathsep) if p])
    return out


def distinctive_solution_lines(root: Path = ROOT, min_length: int = 25) -> dict[str, list[str]]:
    """{solutions/<file>: lines that give the answer away}.

    The answer lines of a solution file are those inside its ``# BEGIN SOLUTION`` regions
    (before ``# STARTER``); a solution file with no starter counterpart is all answer. Of those,
    a line counts when, whitespace-normalized, it is at least min_length characters long and
    appears in no file of the step's starter folder (steps/<folder>/) and is not an import
    (a lesson may import what the solution imports).
    """
    from coursekit.starters import BEGIN, END, STARTER

    out: dict[str, list[str]] = {}
    for sol_dir in sorted(p for p in (root / "solutions").iterdir() if p.is_dir()):
        starter_dir = root / "steps" / sol_dir.name
        shared = starter_lines(starter_dir)
        for f in sorted(sol_dir.rglob("*")):
            if not f.is_file() or "__pycache__" in f.parts:
                continue
            rel = f.relative_to(sol_dir)
            whole = not (starter_dir / rel).is_file()
            answer, state = [], "code"
            for raw in _read(f).splitlines():
                mark = raw.strip()
                if mark == BEGIN:
                    state = "solution"
                elif mark == STARTER:
                    state = "starter"
                elif mark == END:
                    state = "code"
                elif whole or state == "solution":
                    answer.append(raw)
            lines = []
            for raw in answer:
                line = _norm(raw)
                if (len(line) >= min_length and line not in shared and line not in lines
                        and not IMPORT.match(line) and line not in GENERIC):
                    lines.append(line)
            if lines:
                out[f.relative_to(root).as_posix()] = lines
    return out


def starter_lines(starter_dir: Path) -> set[str]:
    """Every line of a starter folder, whitespace-normalized, also without its end-of-line comment:
    what a learner of that step already has (a later step's starter carries the earlier answers)."""
    shared: set[str] = set()
    if starter_dir.is_dir():
        for f in starter_dir.rglob("*"):
            if f.is_file() and "__pycache__" not in f.parts:
                for l in _read(f).splitlines():
                    shared |= {_norm(l), _norm(l.split("  #", 1)[0])}
    return shared


IMPORT = re.compile(r"^(from\s+\S+\s+)?import\s")

# Lines a solution shares with any FastAPI/pydantic program or workflow: naming the API a lesson teaches is
# not giving the answer away (the lessons show these on sibling cases).
GENERIC = {
    "model_config = ConfigDict(",
    "@app.exception_handler(Exception)",
    "cancel-in-progress: false",
    # the GenAI semantic-convention attribute and the Sentry option the step 04/05 lessons teach by name
    '"gen_ai.request.model": model}',
    "auto_enabling_integrations=False,",
}


def _norm(line: str) -> str:
    return re.sub(r"\s+", " ", line).strip()


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return ""
