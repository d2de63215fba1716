"""The grading report (`pytest grader --grade-report FILE.json`) as Markdown, for a CI job summary.

    python -m grader.job_summary grade-report.json >> "$GITHUB_STEP_SUMMARY"

The course's autograding workflow (.github/workflows/autograde.yml) runs this after grading, so a
learner's fork (or a GitHub Classroom repository) shows the production-checklist scorecard on the
run's page, and an instructor sees the same table for every learner without a server of their own.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

OUTCOME = {"passed": "✅ 통과", "failed": "❌ 실패", "skipped": "⏭️ 건너뜀", "not_graded": "⬜ 아직 채점 안 함"}


def _cell(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text.replace("|", "\\|")


def render(report: dict) -> str:
    lines = [f"## {report.get('course', '코스')} — 채점 결과", ""]
    steps = report.get("steps", {})
    if not steps:
        lines += ["채점된 단계가 없습니다.", ""]
    else:
        lines += ["| 단계 | 통과 |", "|---|---|"]
        for sid, s in steps.items():
            lines.append(f"| {sid} {_cell(s.get('title', ''))} | {s.get('passed', 0)}/{s.get('total', 0)} |")
        lines.append("")
    checklist = report.get("checklist", {})
    if checklist:
        lines += ["### 프로덕션 체크리스트", "", "| 분류 | 항목 | 결과 |", "|---|---|---|"]
        for item in checklist.values():
            lines.append(f"| {_cell(item.get('group', ''))} | {_cell(item.get('title', ''))} | "
                         f"{OUTCOME.get(item.get('outcome'), item.get('outcome'))} |")
        lines.append("")
    failed = [(cid, c) for s in steps.values() for cid, c in s.get("checks", {}).items() if c.get("outcome") == "failed"]
    if failed:
        lines += [f"### 실패한 항목 ({len(failed)}개)", ""]
        for cid, c in failed:
            message = next(iter(c.get("messages") or []), "")
            lines.append(f"<details><summary><code>{cid}</code> {_cell(c.get('title', ''), 200)}</summary>")
            lines.append("")
            for part in str(message).splitlines()[:6]:
                lines.append(f"> {_cell(part, 500)}")
            lines.append("")
            lines.append(f"**힌트:** {_cell(c.get('hint', ''), 500)}")
            lines.append("")
            lines.append("</details>")
            lines.append("")
    skipped = [cid for s in steps.values() for cid, c in s.get("checks", {}).items() if c.get("outcome") == "skipped"]
    if skipped:
        lines += [f"건너뛴 항목 {len(skipped)}개: " + ", ".join(f"`{c}`" for c in skipped), ""]
    lines.append(f"채점 시각: {report.get('generated_at', '?')} (Python {report.get('python', '?')})")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("사용법: python -m grader.job_summary <채점 보고서.json>", file=sys.stderr)
        return 2
    path = Path(args[0])
    if not path.is_file():
        # Grading crashed before writing a report: say so in the summary instead of failing twice.
        print(f"## 채점 결과\n\n채점 보고서 {path.name} 가 없습니다: 채점이 시작되지 못했습니다 (위의 로그를 보세요).")
        return 0
    print(render(json.loads(path.read_text(encoding="utf-8"))), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
