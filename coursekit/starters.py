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

Carry-forward (steps are cumulative, DESIGN.md 8.2): a step whose manifest block says
`builds_on = ["step02", "step01"]` starts from those steps' finished files. For every file of
those solution folders (the first listed step that has it wins; README.md and step-only files
excepted), the step's own solution folder holds either

* the previous step's finished text, byte for byte (`write_all` copies it forward), or
* a marked file whose *base* equals it: the file with this step's solution lines removed and
  its starter regions reduced to their non-comment lines (the old code a TODO replaces).
  So this step's changes live only inside its own `# BEGIN SOLUTION` regions, and the
  starter is "the previous step's finished code + this step's TODOs" (DESIGN.md 2).
  When the previous step changes, `write_all` replays the change with `git merge-file`
  (a three-way merge against the recorded base) and reports a conflict instead of guessing.

`check_all` fails on any drift, naming the file and the first differing line.
"""

from __future__ import annotations

import difflib
import shutil
import subprocess
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

from . import REPO_ROOT

__all__ = ["MarkerError", "render", "finished", "base", "generate_step", "plan", "carry_plan", "check_carry",
           "write_carry", "check_all", "write_all"]

BEGIN = "# BEGIN SOLUTION"
STARTER = "# STARTER"
END = "# END SOLUTION"
MARKERS = (BEGIN, STARTER, END)

# Never copied from a solution folder into a starter.
IGNORED_NAMES = {"__pycache__", ".pytest_cache", ".ruff_cache", ".venv", "venv", ".env", ".ipynb_checkpoints",
                 "logs"}  # logs/: what a step 05 service writes where it runs (LOG_DIR)
IGNORED_SUFFIXES = {".pyc"}
# Files only the learner's folder has (not generated, not compared).
STEP_ONLY = {"lesson.ipynb"}
# Files every step writes for itself (never carried forward from the previous step).
NOT_CARRIED = {"README.md"}


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


def _regions(text: str, source: str = "<text>"):
    """(kind, line) for every line: kind is code, solution, starter (already uncommented) or marker."""
    render(text, source)  # validates the markers (same errors as the starter generator)
    state, indent = "code", ""
    for line in text.splitlines(keepends=True):
        if state == "code" and _is_marker(line, BEGIN):
            state, indent = "solution", line[: len(line) - len(line.lstrip())]
            yield "marker", line
        elif state == "solution" and _is_marker(line, STARTER):
            state = "starter"
            yield "marker", line
        elif state == "starter" and _is_marker(line, END):
            state = "code"
            yield "marker", line
        elif state == "starter":
            if not line.strip():
                yield "starter", line
                continue
            body = line[len(indent) + 1:]
            body = body[1:] if body.startswith(" ") else body
            yield "starter", (indent + body if body.strip() else body)
        else:
            yield state, line


def finished(text: str, source: str = "<text>") -> str:
    """The finished code of a marked solution file: solution lines kept, starter lines and markers dropped."""
    return "".join(line for kind, line in _regions(text, source) if kind in ("code", "solution"))


def base(text: str, source: str = "<text>") -> str:
    """What a step's file was before this step's work: its starter without this step's TODO comments.

    Code outside the markers is kept; a solution region is replaced by the non-comment lines of
    its starter (the old code it changes, if any). For a step that builds on another, this must
    equal the previous step's finished file."""
    return "".join(
        line for kind, line in _regions(text, source)
        if kind == "code" or (kind == "starter" and not line.lstrip().startswith("#"))
    )


def _has_markers(text: str) -> bool:
    return BEGIN in text or END in text or "BEGIN SOLUTION" in text


def _text(path: Path) -> str | None:
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        return None


@dataclass(frozen=True)
class Carried:
    """One file a step carries forward from an earlier step's solution."""

    source: Path       # solutions/<earlier step>/<rel>
    target: Path       # solutions/<this step>/<rel>
    expected: bytes    # the earlier step's finished file


def _builds_on(root: Path) -> dict[str, list[str]]:
    """{step folder: [folders it builds on, first wins]} from the manifest's `builds_on` lists."""
    manifest = root / "coursekit" / "course.toml"
    if not manifest.is_file():
        return {}
    with open(manifest, "rb") as fh:
        steps = tomllib.load(fh).get("steps", [])
    folders = {s["id"]: s["folder"] for s in steps}
    out = {}
    for s in steps:
        unknown = [b for b in s.get("builds_on", []) if b not in folders]
        if unknown:
            raise MarkerError(f"{manifest}: {s['id']} 의 builds_on 에 없는 단계 {unknown}")
        if s.get("builds_on"):
            out[s["folder"]] = [folders[b] for b in s["builds_on"]]
    return out


def carry_plan(root: Path = REPO_ROOT) -> list[Carried]:
    """Every file that a step's solution folder carries forward from the steps it builds on."""
    planned = []
    solutions = root / "solutions"
    for folder, sources in _builds_on(root).items():
        if not (solutions / folder).is_dir():
            continue
        seen: set[Path] = set()
        for src_folder in sources:
            for path, rel in _files(solutions / src_folder):
                if rel in seen or rel.name in STEP_ONLY or rel.name in NOT_CARRIED:
                    continue
                seen.add(rel)
                text = _text(path)
                expected = path.read_bytes() if text is None else finished(text, str(path)).encode("utf-8")
                planned.append(Carried(path, solutions / folder / rel, expected))
    return planned


def _first_difference(expected: str, got: str) -> str:
    diff = list(difflib.unified_diff(expected.splitlines(), got.splitlines(), "이전 단계", "이 단계", n=0, lineterm=""))
    return "\n".join(diff[2:8])


def _carry_problem(c: Carried, root: Path) -> str | None:
    rel, src = c.target.relative_to(root), c.source.relative_to(root)
    if not c.target.exists():
        return f"{rel}: 없음 ({src} 에서 이어받아야 함)"
    raw = c.target.read_bytes()
    text = _text(c.target)
    if text is not None and _has_markers(text) and not raw == c.expected:
        got = base(text, str(c.target))
        if got.encode("utf-8") == c.expected:
            return None
        return (f"{rel}: 이 단계의 솔루션 구역 밖이 {src} 의 완성본과 다름 (이전 단계 코드를 손으로 고치지 말고 "
                f"`course starters --write` 로 이어받으세요)\n{_first_difference(c.expected.decode('utf-8'), got)}")
    if raw != c.expected:
        detail = _first_difference(c.expected.decode("utf-8"), text) if text is not None else "(바이너리)"
        return f"{rel}: {src} 의 완성본과 다름 (바이트 단위로 같아야 함)\n{detail}"
    return None


def check_carry(root: Path = REPO_ROOT) -> list[str]:
    """Drift between steps: carried files that differ from the earlier step's finished files."""
    return [p for c in carry_plan(root) if (p := _carry_problem(c, root))]


def _merge(target: Path, old_base: str, new_base: bytes) -> str | None:
    """Replay the earlier step's change (old_base -> new_base) on target with git merge-file."""
    with tempfile.TemporaryDirectory(prefix="carry-") as tmp:
        cur, old, new = Path(tmp, "current"), Path(tmp, "base"), Path(tmp, "other")
        cur.write_bytes(target.read_bytes())
        old.write_text(old_base, encoding="utf-8")
        new.write_bytes(new_base)
        proc = subprocess.run(["git", "merge-file", "-p", str(cur), str(old), str(new)],
                              capture_output=True)
    return proc.stdout.decode("utf-8") if proc.returncode == 0 else None


def write_carry(root: Path = REPO_ROOT) -> tuple[list[Path], list[str]]:
    """Carry earlier steps' finished files forward into the solutions that build on them.

    Returns (files written, conflicts). Unmarked files are copied byte for byte; a marked file
    gets the earlier step's change merged in (git merge-file), or is left alone and reported."""
    written, conflicts = [], []
    for c in carry_plan(root):
        if _carry_problem(c, root) is None:
            continue
        text = _text(c.target) if c.target.exists() else None
        if text is not None and _has_markers(text):
            merged = _merge(c.target, base(text, str(c.target)), c.expected)
            if merged is None or base(merged, str(c.target)).encode("utf-8") != c.expected:
                conflicts.append(f"{c.target.relative_to(root)}: {c.source.relative_to(root)} 의 변경을 자동으로 "
                                 "합치지 못했습니다. 솔루션 구역 밖을 이전 단계와 같게 손으로 맞추세요.")
                continue
            c.target.write_text(merged, encoding="utf-8")
        else:
            c.target.parent.mkdir(parents=True, exist_ok=True)
            c.target.write_bytes(c.expected)
            shutil.copymode(c.source, c.target)
        written.append(c.target)
    return written, conflicts


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
    """Differences between committed starters and generated ones, and carry-forward drift
    between steps (empty = in sync)."""
    problems = check_carry(root)
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
    """Carry earlier steps forward (solutions/), then generate every starter (steps/).

    Raises MarkerError when a carried file could not be merged (nothing is guessed)."""
    written, conflicts = write_carry(root)
    if conflicts:
        raise MarkerError("\n".join(conflicts))
    for sol, step in _pairs(root):
        written += generate_step(sol, step)
    return written
