"""Reads the course manifest (course.toml): steps, checklist items, checks and hints.

Everything that lists steps or checks (grader, scorecard, CLI, docs) goes through here,
so nothing is listed twice.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

__all__ = ["ChecklistItem", "Check", "Step", "Manifest", "UnknownName", "load"]

MANIFEST_PATH = Path(__file__).with_name("course.toml")


class UnknownName(KeyError):
    """A step, check or checklist item the manifest does not have (Korean message for learners).
    A KeyError, so `except KeyError` callers keep working; the CLI catches only this class."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class ChecklistItem:
    id: str
    group: str
    title: str


@dataclass(frozen=True)
class Check:
    id: str
    item: str
    title: str
    hint: str
    step: str


@dataclass(frozen=True)
class Step:
    id: str
    folder: str
    title: str
    summary: str
    notebook: str
    status: str
    checks: tuple[Check, ...] = ()
    planned_items: tuple[str, ...] = ()
    builds_on: tuple[str, ...] = ()  # earlier steps whose solutions this one carries forward

    @property
    def number(self) -> int:
        return int(self.id.removeprefix("step"))

    @property
    def items(self) -> tuple[str, ...]:
        """Checklist items this step proves (from its checks, or as planned)."""
        seen: list[str] = []
        for item in [c.item for c in self.checks] + list(self.planned_items):
            if item not in seen:
                seen.append(item)
        return tuple(seen)


@dataclass(frozen=True)
class Manifest:
    title: str
    default_model: str
    checklist: tuple[ChecklistItem, ...]
    steps: tuple[Step, ...]
    _checks: dict[str, Check] = field(default_factory=dict, repr=False)

    def step(self, key: str) -> Step:
        """Find a step by id ('step02'), number ('2', '02') or folder ('02-fastapi')."""
        key = key.strip().lower()
        for s in self.steps:
            if key in (s.id, s.folder) or (key.isdigit() and int(key) == s.number):
                return s
        raise UnknownName(f"알 수 없는 단계: {key!r} (가능한 값: {', '.join(s.id for s in self.steps)})")

    def check(self, check_id: str) -> Check:
        try:
            return self._checks[check_id]
        except KeyError:
            raise UnknownName(f"매니페스트에 없는 채점 항목: {check_id!r}") from None

    def item(self, item_id: str) -> ChecklistItem:
        for it in self.checklist:
            if it.id == item_id:
                return it
        raise UnknownName(f"매니페스트에 없는 체크리스트 항목: {item_id!r}")

    @property
    def checks(self) -> tuple[Check, ...]:
        return tuple(self._checks.values())


def _parse(data: dict) -> Manifest:
    checklist = tuple(ChecklistItem(**it) for it in data["checklist"])
    item_ids = {it.id for it in checklist}
    steps: list[Step] = []
    checks: dict[str, Check] = {}
    for raw in data["steps"]:
        step_checks = []
        for c in raw.get("checks", []):
            check = Check(step=raw["id"], **c)
            if check.item not in item_ids:
                raise ValueError(f"{check.id}: 알 수 없는 체크리스트 항목 {check.item!r}")
            if not check.id.startswith(raw["id"] + "."):
                raise ValueError(f"{check.id}: 채점 항목 id 는 '{raw['id']}.' 로 시작해야 합니다")
            if check.id in checks:
                raise ValueError(f"{check.id}: 중복된 채점 항목")
            checks[check.id] = check
            step_checks.append(check)
        for item in raw.get("items", []):
            if item not in item_ids:
                raise ValueError(f"{raw['id']}: 알 수 없는 체크리스트 항목 {item!r}")
        earlier = {s.id for s in steps}
        for base in raw.get("builds_on", []):
            if base not in earlier:
                raise ValueError(f"{raw['id']}: builds_on 의 {base!r} 는 앞에 나온 단계여야 합니다")
        steps.append(
            Step(
                id=raw["id"],
                folder=raw["folder"],
                title=raw["title"],
                summary=raw["summary"],
                notebook=raw.get("notebook", "lesson.ipynb"),
                status=raw.get("status", "planned"),
                checks=tuple(step_checks),
                planned_items=tuple(raw.get("items", [])),
                builds_on=tuple(raw.get("builds_on", [])),
            )
        )
    course = data["course"]
    return Manifest(
        title=course["title"],
        default_model=course["default_model"],
        checklist=checklist,
        steps=tuple(steps),
        _checks=checks,
    )


@lru_cache(maxsize=None)
def load(path: Path = MANIFEST_PATH) -> Manifest:
    with open(path, "rb") as fh:
        return _parse(tomllib.load(fh))
