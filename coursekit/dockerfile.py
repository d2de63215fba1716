"""A Dockerfile parser that follows BuildKit's frontend rules: parser directives, comments,
continuation lines, multi-stage `FROM ... AS name`, global ARGs before the first FROM.

Used by the step-01 grader (grader/docker_support.py) and by `course docker-base`, which
prepares the base images a Dockerfile names.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field

__all__ = ["Instruction", "Stage", "Dockerfile", "parse_dockerfile", "substitute", "env_pairs", "arg_pairs",
           "end_of_line_comment"]

@dataclass
class Instruction:
    keyword: str             # upper case: FROM, RUN, COPY ...
    value: str               # the arguments, continuation lines joined, flags included
    line: int                # 1-based line where the instruction starts
    flags: dict[str, str] = field(default_factory=dict)  # --from=build, --chown=app ...
    rest: str = ""           # value without the leading --flags

    @property
    def json_args(self) -> list[str] | None:
        """The exec-form (JSON array of strings) arguments, or None for shell form."""
        text = self.rest.strip()
        if not text.startswith("["):
            return None
        try:
            parsed = json.loads(text)
        except ValueError:
            return None
        if isinstance(parsed, list) and all(isinstance(x, str) for x in parsed):
            return parsed
        return None


@dataclass
class Stage:
    index: int
    image: str               # as written, ARGs substituted where known
    name: str | None
    line: int
    instructions: list[Instruction] = field(default_factory=list)

    def last(self, keyword: str) -> Instruction | None:
        found = [i for i in self.instructions if i.keyword == keyword]
        return found[-1] if found else None


@dataclass
class Dockerfile:
    instructions: list[Instruction]
    stages: list[Stage]
    global_args: dict[str, str]

    @property
    def final(self) -> Stage | None:
        return self.stages[-1] if self.stages else None

    def stage_named(self, name: str) -> Stage | None:
        for s in self.stages:
            if s.name and s.name.lower() == name.lower():
                return s
        if name.isdigit() and int(name) < len(self.stages):
            return self.stages[int(name)]
        return None

    def external_images(self) -> list[str]:
        names = {s.name.lower() for s in self.stages if s.name}
        out = []
        for s in self.stages:
            if s.image.lower() not in names and s.image != "scratch" and s.image not in out:
                out.append(s.image)
        return out


_FLAG = re.compile(r"--([A-Za-z][\w-]*)(?:=(\S*))?")


def _split_flags(value: str) -> tuple[dict[str, str], str]:
    flags: dict[str, str] = {}
    rest = value.lstrip()
    while rest.startswith("--"):
        m = _FLAG.match(rest)
        if not m:
            break
        flags[m.group(1).lower()] = m.group(2) or ""
        rest = rest[m.end():].lstrip()
    return flags, rest


def substitute(text: str, variables: dict[str, str]) -> str:
    def repl(m: re.Match) -> str:
        name = m.group(1) or m.group(2)
        return variables.get(name, m.group(0))

    return re.sub(r"\$\{(\w+)(?::?[-+][^}]*)?\}|\$(\w+)", repl, text)


def parse_dockerfile(text: str) -> Dockerfile:
    """Parse like BuildKit's frontend: parser directives, comments, `\\` (or the
    `# escape=` character) continuations, blank/comment lines inside continuations,
    multi-stage FROM ... AS name, global ARGs before the first FROM."""
    lines = text.splitlines()
    escape = "\\"
    # parser directives: only at the very top, before any other line
    for raw in lines:
        m = re.match(r"^\s*#\s*(\w+)\s*=\s*(\S+)\s*$", raw)
        if not m:
            break
        if m.group(1).lower() == "escape" and m.group(2) in ("\\", "`"):
            escape = m.group(2)

    instructions: list[Instruction] = []
    buf: list[str] = []
    start = 0
    for no, raw in enumerate(lines, start=1):
        stripped = raw.strip()
        if not buf:
            if not stripped or stripped.startswith("#"):
                continue
            start = no
        elif not stripped or stripped.startswith("#"):
            continue  # comment or empty line inside a continuation
        body = raw.rstrip()
        if body.endswith(escape):
            buf.append(body[:-1])
            continue
        buf.append(body)
        joined = " ".join(part.strip() for part in buf).strip()
        buf = []
        keyword, _, value = joined.partition(" ")
        flags, rest = _split_flags(value)
        instructions.append(Instruction(keyword.upper(), value.strip(), start, flags, rest))
    if buf:
        joined = " ".join(part.strip() for part in buf).strip()
        keyword, _, value = joined.partition(" ")
        flags, rest = _split_flags(value)
        instructions.append(Instruction(keyword.upper(), value.strip(), start, flags, rest))

    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for ins in instructions:
        if ins.keyword == "FROM":
            words = ins.rest.split()
            image = substitute(words[0], global_args) if words else ""
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(len(stages), image, name, ins.line))
        elif not stages:
            if ins.keyword == "ARG":
                for name, value in arg_pairs(ins):
                    global_args[name] = value or ""
        else:
            stages[-1].instructions.append(ins)
    return Dockerfile(instructions, stages, global_args)


def env_pairs(ins: Instruction) -> list[tuple[str, str]]:
    """`ENV A=1 B="x y"` or the old form `ENV A some value`."""
    text = ins.rest.strip()
    first = text.split(None, 1)[0] if text else ""
    if "=" not in first:
        name, _, value = text.partition(" ")
        return [(name, value.strip())]
    try:
        parts = shlex.split(text, posix=True)
    except ValueError:
        parts = text.split()
    return [(p.partition("=")[0], p.partition("=")[2]) for p in parts if "=" in p]


def arg_pairs(ins: Instruction) -> list[tuple[str, str | None]]:
    try:
        parts = shlex.split(ins.rest, posix=True)
    except ValueError:
        parts = ins.rest.split()
    return [(p.partition("=")[0], p.partition("=")[2] if "=" in p else None) for p in parts]


# Instructions whose arguments are never read by a shell: a `#` after them is an argument
# (`USER 10001  # app` makes the user "10001  # app"), not a comment.
_NO_SHELL = {"FROM", "WORKDIR", "USER", "COPY", "ADD", "EXPOSE", "ENV", "ARG", "LABEL", "VOLUME",
             "STOPSIGNAL", "SHELL", "MAINTAINER", "ONBUILD"}


def end_of_line_comment(ins: Instruction) -> str | None:
    """The text from a `#` that the author meant as an end-of-line comment, or None.

    Dockerfiles have comments only on their own line. Shell-form RUN/CMD/ENTRYPOINT/
    HEALTHCHECK hand `# ...` to /bin/sh, which does treat it as a comment, so only the
    instructions Docker reads itself and the exec (JSON) forms are looked at."""
    text = ins.rest.strip()
    if ins.keyword in _NO_SHELL:
        try:
            words = shlex.split(text, posix=True)
        except ValueError:
            words = text.split()
        for i, word in enumerate(words):
            if word.startswith("#"):
                return " ".join(words[i:])
        return None
    if ins.keyword == "HEALTHCHECK":
        _, text = _split_flags(text)
        if not text.upper().startswith("CMD"):
            return None
        text = text[3:].strip()
    elif ins.keyword not in ("CMD", "ENTRYPOINT", "RUN"):
        return None
    if not text.startswith("[") or "#" not in text:
        return None
    try:
        json.loads(text)
        return None
    except ValueError:
        pass
    # a JSON array followed by a comment: Docker sees invalid JSON and runs it as shell form
    head, sep, tail = text.rpartition("]")
    if sep and tail.strip().startswith("#"):
        try:
            json.loads(head + sep)
            return tail.strip()
        except ValueError:
            return None
    return None
