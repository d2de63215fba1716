"""Smoke test of the course benchmark (benchmarks/bench.py --quick, issue 17): it runs, prints the
table with one row per measured cell and writes the Korean page with its plots; the middleware mode
(--middleware --quick) prints and writes the table of each step 06 layer's cost with its bar chart.
Checks the shape and the counters that do not depend on the machine (failures, upstream calls per
request), never speeds."""

from __future__ import annotations

import re
import subprocess
import sys
import time

import pytest

from coursekit import REPO_ROOT

BENCH = REPO_ROOT / "benchmarks" / "bench.py"
sys.path.insert(0, str(BENCH.parent))
import bench

COLUMNS = 12
ZERO = ["quick-start", "step02", "step03", "step04", "step05", "step06", "step06-warm", "bare", "stream"]


def rows_of(text: str) -> dict[tuple[str, str, int], list[str]]:
    out = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) == COLUMNS and cells[2].isdigit():
            out[(cells[0], cells[1], int(cells[2]))] = cells
    return out


def number(cell: str) -> float:
    return float(cell.removeprefix(">="))


def images(page: str, page_path) -> dict[str, object]:
    """The page's embedded images: name -> path resolved from the page (as mkdocs resolves it)."""
    return {m.group(1): page_path.parent / m.group(2) for m in re.finditer(r"!\[([^\]]*)\]\(([^)]+)\)", page)}


def assert_png(path) -> None:
    assert path.is_file(), f"그림이 없음: {path}"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 2000, path


def run_bench(folder, *args) -> tuple[str, str, float]:
    page = folder / "benchmark.md"
    t0 = time.monotonic()
    run = subprocess.run([sys.executable, str(BENCH), *args, "--output", str(page)], cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=240, check=False)
    seconds = time.monotonic() - t0
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return run.stdout, page.read_text(encoding="utf-8"), seconds


@pytest.fixture(scope="module")
def quick_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("bench")


@pytest.fixture(scope="module")
def quick(quick_dir) -> tuple[str, str, float]:
    return run_bench(quick_dir, "--quick")


@pytest.fixture(scope="module")
def middleware_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("bench-mw")


@pytest.fixture(scope="module")
def middleware(middleware_dir) -> tuple[str, str, float]:
    return run_bench(middleware_dir, "--middleware", "--quick")


def test_quick_mode_prints_one_row_per_cell(quick):
    out, _, seconds = quick
    assert bench.HEADER in out
    rows = rows_of(out.split(bench.HEADER, 1)[1])
    expected = {(t, "zero", n) for t in ZERO for n in (1, 10)}
    expected |= {(t, "realistic", 10) for t in bench.QUICK_REALISTIC}
    langserve = (REPO_ROOT / ".venv" / "bench-langserve" / "langserve").is_dir()
    if langserve:
        expected |= {("langserve", "zero", n) for n in (1, 10)}
    assert set(rows) == expected, sorted(set(rows) ^ expected)
    for key, cells in rows.items():
        requests, rps, p50, p95, p99, failures, upstream, cpu, rss = (
            int(cells[3]), *map(number, cells[4:8]), int(cells[8]), *map(float, cells[9:12]))
        assert requests > 0 and rps >= 0 and cpu >= 0 and rss > 0, (key, cells)
        assert 0 <= p50 <= p95 <= p99, (key, cells)
        if key != ("quick-start", "realistic", 10):   # blocked event loop: maybe no answer within the 1 s window
            assert failures == 0 and rps > 0, (key, cells)
        if key[0] == "step06-warm":
            assert upstream == 0, (key, cells)       # every answer from the warm cache
        elif key[0] != "quick-start":
            assert upstream == pytest.approx(1.0, abs=0.01), (key, cells)   # unique questions: no cache hit
    # The outline's quick-start blocks its event loop: at realistic latency and 10 users its p95
    # exceeds the 3 s limit (measured here: >= 4.5 s, most requests unanswered after 1 s + 3.5 s).
    assert number(rows[("quick-start", "realistic", 10)][6]) > bench.P95_LIMIT
    assert seconds < 90, f"빠른 모드가 {seconds:.0f}초 걸림"


def test_quick_mode_writes_the_korean_page(quick):
    out, page, _ = quick
    assert page.startswith("# 벤치마크")
    for heading in ("## 측정 환경", "## 방법", "## 대상", "## 결과", "## 비율"):
        assert heading in page, heading
    assert "숫자는 측정한 머신에 따라 다릅니다" in page and "빠른 모드" in page
    assert re.search(r"- CPU: \d+개, \S", page) and f"- Python: {sys.version.split()[0]}" in page
    assert "langchain-google-genai" in page and "fastapi" in page
    table = page.split("## 결과", 1)[1].split("## 비율", 1)[0].split("![", 1)[0].strip()   # the plots follow
    assert table in out, "문서의 표가 출력한 표와 다름"
    ratios = page.split("## 비율", 1)[1]
    assert re.search(r"step06 / bare \(지연 zero, 사용자 10\): .* = \*\*\d+\.\d\d\*\* \(목표 >= 0\.8: (달성|미달)\)", ratios)
    assert re.search(r"quick-start 의 p95 .*한도 3 s: 한도 초과", ratios)
    assert "미들웨어 층마다" in ratios
    if not (REPO_ROOT / ".venv" / "bench-langserve" / "langserve").is_dir():
        assert "`langserve`: " in page and "**표에 없음**" in page


def test_quick_mode_writes_the_plots_the_page_embeds(quick, quick_dir):
    _, page, _ = quick
    embedded = images(page, quick_dir / "benchmark.md")
    assert set(embedded) == {"rps_p95_zero", "rps_p95_realistic"}, embedded   # one per latency mode
    for name, path in embedded.items():
        assert path == quick_dir / "assets" / "benchmark" / f"{name}.png"   # relative to the page
        assert_png(path)
    assert "## 미들웨어 층마다 비용" in page and "이 실행에서는 재지 않음" in page.split("## 미들웨어 층마다 비용", 1)[1]


def test_middleware_mode_prints_and_writes_one_row_per_layer(middleware, middleware_dir):
    out, page, seconds = middleware
    assert bench.MW_HEADER in out and bench.MW_HEADER in page
    section = page.split("## 미들웨어 층마다 비용", 1)[1].split("## 다시 재기", 1)[0]
    table = section.split(bench.MW_HEADER, 1)[1].strip().split("\n\n", 1)[0]
    assert table in out, "문서의 미들웨어 표가 출력한 표와 다름"
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in table.splitlines()]
    assert [r[0] for r in rows] == [layer.label for layer in bench.LAYERS]
    for layer, cells in zip(bench.LAYERS, rows):
        assert len(cells) == 6 and cells[1] == layer.method, cells
        without = float(cells[2].removesuffix(" (켬)"))
        cost = float(cells[3].strip("*"))
        low, high = (float(x) for x in cells[4].split(" … "))
        assert without > 0 and low <= cost <= high, cells
        assert cells[5] == "(켤 때 더함)" if layer.added else cells[5].endswith("%"), cells
    # the method is stated, with the two references (everything on, and the bare endpoint)
    assert "요청당 CPU 마이크로초" in section and "benchshim.py" in section
    assert re.search(r"06 전체 \(모든 층 켬, 캐시 miss\): 요청당 CPU \*\*\d+ µs\*\*; bare 엔드포인트: \*\*\d+ µs\*\*", section)
    assert re.search(r"제거할 수 있는 층을 모두 뺀 06: \*\*\d+ µs\*\*", section)
    assert re.search(r"미들웨어 층마다 요청당 비용 \(CPU 마이크로초, 아래 표\): 06 전체 \d+ µs 중", page)
    embedded = images(page, middleware_dir / "benchmark.md")
    assert set(embedded) == {"middleware"}, embedded   # no target cells in this run: no RPS/p95 plot
    assert embedded["middleware"] == middleware_dir / "assets" / "benchmark" / "middleware.png"
    assert_png(embedded["middleware"])
    assert "이 실행은 미들웨어 표만 잽니다" in page
    assert seconds < 120, f"미들웨어 빠른 모드가 {seconds:.0f}초 걸림"
