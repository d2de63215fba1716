"""코스 키트: Gemini API 시뮬레이터, `course` CLI, 코스 매니페스트, 스타터 생성기."""

from pathlib import Path

__all__ = ["OUTLINE_QUICK_START", "REPO_ROOT", "__version__"]
__version__ = "0.1.0"

# The kit is installed in editable mode from the repository root, so the course tree
# (steps/, solutions/, grader/) is found next to the package.
REPO_ROOT = Path(__file__).resolve().parent.parent

# The outline's own "빠른 시작" service, verbatim (a blocking invoke inside async def, no validation): the course's
# starting point. The grader's meta-test grades it and the benchmark loads it; one copy for both.
OUTLINE_QUICK_START = Path(__file__).resolve().parent / "data" / "outline_quick_start" / "main.py"
