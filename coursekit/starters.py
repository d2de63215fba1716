"""Starter code generated from the marked solutions (one source, as nbgrader/otter do).

`solutions/NN-name/` is the source of truth. `steps/NN-name/` holds the learner's copy,
generated from it: in every file that uses `#` comments, a region

    # BEGIN SOLUTION
    <solution lines>
    # STARTER
    # <starter line, commented with '# ' at the marker's indentation>
    # END SOLUTION

keeps only the starter lines (uncommented). Files without markers are copied verbatim.
Files that live only in `steps/` (the lesson notebook, outputs) are left alone.

Any malformed or leftover marker fails the generation loudly, so a solution can never
leak into a starter (the failure mode otter/nbgrader users report).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from . import REPO_ROOT

__all__ = ["MarkerError", "render", "generate_step", "plan", "check_all", "write_all"]

BEGIN = "# BEGIN SOLUTION"
STARTER = "# STARTER"
END = "# END SOLUTION"
MARKERS = (BEGIN, STARTER, END)

# Never copied from a solution folder into a starter.
IGNORED_NAMES = {"__pycache__", ".pytest_cache", ".venv", "venv", ".env", ".ipynb_checkpoints"}
IGNORED_SUFFIXES = {".pyc"}
# Files only the learner's folder has (not generated, not compared).
STEP_ONLY = {"lesson.ipynb"}


class MarkerError(ValueError):
    """A solution file has malformed solution markers."""


def _is_marker(line: str, marker: str) -> bool:
    return line.strip() == marker


def render(text: str, source: str = "<text>") -> str:
    """Turn a marked solution file into its starter text."""
    lines = text.splitlines(keepends=True)
    out: list[str] = []
    state = "code"  # code | solution | starter
    indent = ""
    block_start = 0
    has_todo = False
    for no, line in enumerate(lines, start=1):
        stripped = line.strip()
        if state == "code":
            if _is_marker(line, BEGIN):
                state, indent, block_start, has_todo = "solution", line[: len(line) - len(line.lstrip())], no, False
            elif any(m in stripped for m in MARKERS) or "BEGIN SOLUTION" in stripped or "END SOLUTION" in stripped:
                raise MarkerError(f"{source}:{no}: 짝이 맞지 않는 마커: {stripped!r}")
            else:
                out.append(line)
        elif state == "solution":
            if _is_marker(line, STARTER):
                state = "starter"
            elif _is_marker(line, END):
                raise MarkerError(f"{source}:{block_start}: '{STARTER}' 구역이 없는 솔루션 블록")
            elif _is_marker(line, BEGIN):
                raise MarkerError(f"{source}:{no}: 솔루션 블록 안에 다시 BEGIN SOLUTION")
        elif state == "starter":
            if _is_marker(line, END):
                if not has_todo:
                    raise MarkerError(f"{source}:{block_start}: STARTER 구역에 TODO 가 없습니다")
                state = "code"
            elif _is_marker(line, BEGIN) or _is_marker(line, STARTER):
                raise MarkerError(f"{source}:{no}: STARTER 구역 안에 마커 {stripped!r}")
            else:
                if not stripped:
                    out.append(line)
                    continue
                if not line.startswith(indent + "#"):
                    raise MarkerError(
                        f"{source}:{no}: STARTER 줄은 '{indent}# ' 로 시작해야 합니다: {line.rstrip()!r}"
                    )
                body = line[len(indent) + 1 :]
                if body.startswith(" "):
                    body = body[1:]
                elif body.strip():
                    raise MarkerError(f"{source}:{no}: '#' 뒤에 공백이 필요합니다: {line.rstrip()!r}")
                if "TODO" in body:
                    has_todo = True
                out.append(indent + body if body.strip() else body)
    if state != "code":
        raise MarkerError(f"{source}:{block_start}: '{END}' 로 닫히지 않은 솔루션 블록")
    result = "".join(out)
    for m in ("BEGIN SOLUTION", "END SOLUTION"):
        if m in result:
            raise MarkerError(f"{source}: 생성된 스타터에 마커가 남았습니다: {m}")
    return result


@dataclass(frozen=True)
class Planned:
    source: Path
    target: Path
    content: bytes


def _files(root: Path):
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(part in IGNORED_NAMES for part in rel.parts) or path.suffix in IGNORED_SUFFIXES:
            continue
        if path.is_file():
            yield path, rel


def plan(solution_dir: Path, step_dir: Path) -> list[Planned]:
    """What the starter folder must contain, generated from one solution folder."""
    planned = []
    for path, rel in _files(solution_dir):
        if rel.name in STEP_ONLY:
            continue
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            planned.append(Planned(path, step_dir / rel, raw))
            continue
        if BEGIN in text or END in text or "BEGIN SOLUTION" in text:
            text = render(text, source=str(path))
        planned.append(Planned(path, step_dir / rel, text.encode("utf-8")))
    return planned


def generate_step(solution_dir: Path, step_dir: Path) -> list[Path]:
    """Write the starter files of one step; return the paths written."""
    written = []
    for p in plan(solution_dir, step_dir):
        p.target.parent.mkdir(parents=True, exist_ok=True)
        if not p.target.exists() or p.target.read_bytes() != p.content:
            p.target.write_bytes(p.content)
            written.append(p.target)
        shutil.copymode(p.source, p.target)
    return written


def _pairs(root: Path = REPO_ROOT):
    solutions = root / "solutions"
    if not solutions.is_dir():
        return
    for sol in sorted(d for d in solutions.iterdir() if d.is_dir()):
        yield sol, root / "steps" / sol.name


def check_all(root: Path = REPO_ROOT) -> list[str]:
    """Differences between committed starters and generated ones (empty = in sync)."""
    problems = []
    for sol, step in _pairs(root):
        expected = {p.target: p.content for p in plan(sol, step)}
        for target, content in expected.items():
            rel = target.relative_to(root)
            if not target.exists():
                problems.append(f"{rel}: 없음 (생성되지 않음)")
            elif target.read_bytes() != content:
                problems.append(f"{rel}: solutions/ 에서 생성한 내용과 다름")
        # Files in steps/ that no solution file generates (besides step-only files).
        if step.is_dir():
            for path, rel in _files(step):
                if rel.name in STEP_ONLY or step / rel in expected:
                    continue
                problems.append(f"{path.relative_to(root)}: solutions/ 에 대응하는 파일이 없음")
    return problems


def write_all(root: Path = REPO_ROOT) -> list[Path]:
    written = []
    for sol, step in _pairs(root):
        written += generate_step(sol, step)
    return written
