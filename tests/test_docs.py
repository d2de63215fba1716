"""The docs site: strict build, pages generated from the manifest, and a real browser.

The site is built once per session (``mkdocs build --strict``) from a copy of the course
WITHOUT solutions/ whose lessons were executed once against the simulator (the session fixture
``executed_lessons`` of tests/conftest.py, shared with tests/test_notebooks.py; the build shows
those outputs, COURSE_DOCS_EXECUTE=false) (what an
instructor hands out, tests/solutionless.py), so every docs test also proves that no page and
no lesson needs the answers; then the built pages are searched for the solutions' answer
lines. It is served with ``python -m http.server`` on a loopback
port and opened in headless Chromium driven by Playwright (``executable_path`` =
Debian's /usr/bin/chromium, no browser download). Screenshots go to
``artifacts/screenshots/``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import solutionless

from coursekit import manifest
from grader.harness import free_port

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOTS = ROOT / "artifacts" / "screenshots"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]




# The site is built once per session by the `site` fixture of tests/conftest.py (shared with
# tests/test_secrets_scan.py, which scans the same built files).


def test_built_site_shows_no_solution_lines(site):
    """No answer line of solutions/ (one the starter does not have) is on any page. A step's own pages
    may show what that step's starter already holds: a later step's starter carries the earlier
    steps' answers (step 06's lesson shows step 05's retry loop, which its starter has)."""
    answers = solutionless.distinctive_solution_lines()
    assert answers, "solutions/ 에서 답 줄을 찾지 못했습니다 (검사가 아무것도 보지 않음)"
    leaks = []
    for html in sorted(site.rglob("*.html")):
        flat = solutionless._norm(_text(html.read_text(encoding="utf-8")))
        rel = html.relative_to(site).parts
        given = (solutionless.starter_lines(solutionless.ROOT / "steps" / rel[1])
                 if len(rel) > 2 and rel[0] == "steps" else set())
        for source, lines in answers.items():
            for line in lines:
                if line in flat and line not in given:
                    leaks.append(f"{html.relative_to(site)}: {source} 의 줄 {line!r}")
    assert not leaks, "공개 사이트에 해답이 실렸습니다:\n" + "\n".join(leaks[:40])


def _html(site: Path, rel: str) -> str:
    path = site / rel / "index.html" if not rel.endswith(".html") else site / rel
    assert path.is_file(), f"빌드된 사이트에 {path.relative_to(site)} 가 없습니다"
    return path.read_text(encoding="utf-8")


def _text(html: str) -> str:
    """Visible text of a page, roughly (tags removed, entities unescaped)."""
    import html as html_lib
    import re

    return html_lib.unescape(re.sub(r"<[^>]+>", "", html))


def test_build_has_every_page(site):
    m = manifest.load()
    for rel in ["", "getting-started", "steps", "checklist", "contract", "simulator", "instructor", "references"]:
        _html(site, rel)
    for step in m.steps:
        _html(site, f"steps/{step.folder}/lesson")
        _html(site, f"steps/{step.folder}/exercise")
    assert not (site / "hooks").exists(), "mkdocs 훅 코드가 사이트에 복사되었습니다"


def test_korean_theme_and_search_config(site):
    home = _html(site, "")
    assert '<html lang="ko"' in home
    index = json.loads((site / "search" / "search_index.json").read_text(encoding="utf-8"))
    assert index["config"]["lang"] == ["ko"]
    assert (site / "assets" / "javascripts" / "lunr" / "min" / "lunr.ko.min.js").is_file()
    texts = {d["location"]: d["title"] + " " + d["text"] for d in index["docs"]}
    assert any("재시도" in t for loc, t in texts.items() if loc.startswith("steps/02-fastapi/")), (
        "검색 색인에서 Step 2 페이지의 '재시도' 를 찾을 수 없습니다"
    )
    assert any("컨테이너" in t for loc, t in texts.items() if loc.startswith("steps/01-docker/"))


def test_exercise_pages_list_every_check_from_the_manifest(site):
    m = manifest.load()
    for step in m.steps:
        page = _html(site, f"steps/{step.folder}/exercise")
        for check in step.checks:
            assert check.id in page, f"{step.id} 실습 페이지에 채점 항목 {check.id} 가 없습니다"
            assert m.item(check.item).title.replace("<", "&lt;") in page
        for item in step.items:
            assert f"#item-{item.replace('.', '-')}" in page
        if step.status == "planned":
            assert "준비 중" in page
        else:
            text = _text(page)
            assert f"pytest grader -k {step.id}" in text
            assert f"course grade {step.number:02d}" in text


def test_checklist_page_has_every_item_linked_to_checks(site):
    m = manifest.load()
    page = _html(site, "checklist")
    assert len(m.checklist) >= 19  # 16 items of the outline + the deploy items
    for item in m.checklist:
        assert f'id="item-{item.id.replace(".", "-")}"' in page, f"체크리스트에 {item.id} 앵커가 없습니다"
    for check in m.checks:
        assert check.id in page


def test_lesson_notebooks_are_rendered_executed_or_marked_planned(site):
    m = manifest.load()
    for step in m.steps:
        page = _html(site, f"steps/{step.folder}/lesson")
        notebook = ROOT / "steps" / step.folder / step.notebook
        if notebook.is_file():
            assert "jupyter-wrapper" in page, f"{step.id} 레슨이 노트북으로 렌더링되지 않았습니다"
            nb = json.loads(notebook.read_text(encoding="utf-8"))
            code_cells = [c for c in nb["cells"] if c["cell_type"] == "code" and "".join(c["source"]).strip()]
            if code_cells:
                assert "jp-OutputArea-output" in page, f"{step.id} 레슨에 실행 결과가 없습니다"
        else:
            assert step.status == "planned"
            assert "준비 중" in page


def test_hint_links_point_to_existing_lesson_sections(site):
    m = manifest.load()
    for step in m.steps:
        exercise = _html(site, f"steps/{step.folder}/exercise")
        lesson = _html(site, f"steps/{step.folder}/lesson")
        ids = set(re.findall(r'id="([^"]+)"', lesson))
        for anchor in re.findall(r'href="\.\./lesson/#([^"]+)"', exercise):
            assert anchor in ids, f"{step.id} 힌트의 링크 #{anchor} 가 레슨에 없습니다"


def test_headings_keep_korean_anchors(site):
    page = _html(site, "contract")
    assert 'id="오류-응답"' in page
    assert 'href="#오류-응답"' in page


def test_no_unexpanded_snippet_markers(site):
    # Code shown on pages comes from the repository (steps/, coursekit/) via pymdownx.snippets.
    for html in site.rglob("*.html"):
        text = html.read_text(encoding="utf-8")
        assert "--8&lt;--" not in text and "--8<--" not in text, (
            f"{html.relative_to(site)}: 처리되지 않은 스니펫 표식이 남아 있습니다"
        )


def test_no_unexpanded_course_markers(site):
    for html in site.rglob("*.html"):
        text = html.read_text(encoding="utf-8")
        for leftover in ("<!-- course:", "&lt;!-- course:"):
            assert leftover not in text, f"{html.relative_to(site)}: 표식이 처리되지 않았습니다"


# ---------------------------------------------------------------------------
# The hook's rules for missing notebooks (no build needed)
# ---------------------------------------------------------------------------
def _load_hook():
    spec = importlib.util.spec_from_file_location("course_docs_hook", ROOT / "docs" / "hooks" / "course.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_hook_missing_notebook_of_a_ready_step_fails(tmp_path, monkeypatch):
    from mkdocs.exceptions import PluginError

    hook = _load_hook()
    monkeypatch.setattr(hook, "ROOT", tmp_path)
    with pytest.raises(PluginError, match="노트북이 없습니다"):
        hook._plan(manifest.load())


def test_hook_planned_step_without_notebook_gets_placeholder(tmp_path, monkeypatch):
    hook = _load_hook()
    m = manifest.load()
    monkeypatch.setattr(hook, "ROOT", tmp_path)
    monkeypatch.setattr(hook, "DOCS", tmp_path / "docs")
    for step in m.steps:
        if step.status == "ready":
            nb = tmp_path / "steps" / step.folder / step.notebook
            nb.parent.mkdir(parents=True)
            nb.write_text("{}", encoding="utf-8")
    plan = {p.step.id: p for p in hook._plan(m)}
    for step in m.steps:
        p = plan[step.id]
        if step.status == "ready":
            assert p.lesson_uri.endswith(".ipynb") and p.notebook is not None
        else:
            assert p.lesson_uri.endswith("lesson.md") and p.notebook is None
            assert "준비 중" in hook._planned_lesson(p)


def test_hook_finds_solution_includes():
    hook = _load_hook()
    page = (
        "intro\n"
        '--8<-- "solutions/02-fastapi/main.py:1:20"\n'
        "```python\n;--8<-- 'steps/02-fastapi/main.py'\n```\n"
        "--8<--\ncoursekit/simulator/README.md\n./solutions/01-docker/Dockerfile\n--8<--\n"
    )
    assert hook.solution_includes(page) == ["solutions/02-fastapi/main.py:1:20", "./solutions/01-docker/Dockerfile"]
    assert hook.solution_includes('--8<-- "steps/01-docker/Dockerfile"\nsolutions/ 는 강사용입니다\n') == []


class _Page:
    class file:
        src_uri = "contract.md"


def test_hook_fails_a_page_that_includes_solutions(monkeypatch):
    from mkdocs.exceptions import PluginError

    hook = _load_hook()
    with pytest.raises(PluginError, match="solutions/"):
        hook.on_page_markdown('# 계약\n\n```python\n--8<-- "solutions/02-fastapi/main.py"\n```\n', _Page, None, None)
    with pytest.raises(PluginError, match="해답"):
        hook.on_page_markdown("<!-- course:include solutions/02-fastapi/README.md -->\n", _Page, None, None)


def test_hook_takes_step_files_from_the_starter_only(monkeypatch):
    hook = _load_hook()
    monkeypatch.setattr(hook, "_state", {**hook._state, "plan": hook._plan(manifest.load())})
    out = hook.on_page_markdown("<!-- course:files step02 main.py -->\n<!-- course:code step02 main.py health -->\n",
                                _Page, None, None)
    assert "steps/02-fastapi/main.py" in out and "solutions/" not in out


# ---------------------------------------------------------------------------
# GitHub Pages workflow, validated offline against check-jsonschema's vendored schema
# ---------------------------------------------------------------------------
WORKFLOW = ROOT / ".github" / "workflows" / "docs.yml"


def _check_workflow(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_workflow_schema_check_rejects_a_broken_workflow(tmp_path):
    broken = tmp_path / "broken.yml"
    broken.write_text(
        WORKFLOW.read_text(encoding="utf-8").replace("runs-on: ubuntu-latest", "runs_on: ubuntu-latest"),
        encoding="utf-8",
    )
    assert _check_workflow(broken).returncode != 0


def test_docs_workflow_builds_with_the_project_commands_and_deploys_to_pages():
    from ruamel.yaml import YAML

    wf = YAML(typ="safe").load(WORKFLOW.read_text(encoding="utf-8"))
    assert wf["permissions"]["pages"] == "write"
    assert wf["permissions"]["id-token"] == "write"
    build_steps = wf["jobs"]["build"]["steps"]
    uses = [s.get("uses", "") for s in build_steps]
    runs = " ".join(s.get("run", "") for s in build_steps)
    assert "make docs-build" in runs
    # the public site is built like the copy an instructor hands out: without solutions/
    remove = next((i for i, s in enumerate(build_steps) if "rm -rf solutions" in s.get("run", "")), None)
    build = next(i for i, s in enumerate(build_steps) if "make docs-build" in s.get("run", ""))
    assert remove is not None and remove < build, "docs.yml 이 solutions/ 를 지운 뒤 빌드하지 않습니다"
    assert any(u.startswith("actions/configure-pages@") for u in uses)
    assert any(u.startswith("actions/upload-pages-artifact@") for u in uses)
    upload = next(s for s in build_steps if s.get("uses", "").startswith("actions/upload-pages-artifact@"))
    assert upload["with"]["path"] == "site"
    deploy = wf["jobs"]["deploy"]
    assert deploy["needs"] == "build"
    assert any(s.get("uses", "").startswith("actions/deploy-pages@") for s in deploy["steps"])


def test_chromium_installer_is_idempotent_script():
    script = (ROOT / ".ci" / "install-chromium.sh").read_text(encoding="utf-8")
    assert "apt-get install -y" in script and "chromium" in script
    assert "command -v chromium" in script


# ---------------------------------------------------------------------------
# Real browser
# ---------------------------------------------------------------------------
def _require_chromium() -> str:
    path = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    reason = None
    if path is None:
        reason = "Chromium 이 없어 문서 사이트 브라우저 검사를 건너뜁니다 (설치: .ci/install-chromium.sh 또는 apt-get install chromium)"
    elif importlib.util.find_spec("playwright") is None:
        reason = "playwright 패키지가 없어 문서 사이트 브라우저 검사를 건너뜁니다 (pip install -e . 로 설치)"
    if reason:
        if os.environ.get("COURSE_REQUIRE_TOOLS") == "1":
            pytest.fail(reason.replace("건너뜁니다", "실행할 수 없습니다 (COURSE_REQUIRE_TOOLS=1)"), pytrace=False)
        pytest.skip(reason)
    return path



@pytest.fixture(scope="module")
def served_site(site):
    if not (site / "assets" / "vendor" / "mermaid" / "mermaid.min.js").exists():
        reason = ("npm 이 없어 Mermaid 를 사이트에 포함하지 못했습니다 (CDN 사용). 외부 요청이 없어야 하는 "
                  "브라우저 검사를 건너뜁니다 (npm 설치 후 다시 실행)")
        if os.environ.get("COURSE_REQUIRE_TOOLS") == "1":
            pytest.fail(reason.replace("건너뜁니다", "실행할 수 없습니다 (COURSE_REQUIRE_TOOLS=1)"), pytrace=False)
        pytest.skip(reason)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(site)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                with urllib.request.urlopen(base, timeout=1) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    pytest.fail("문서 사이트용 http.server 가 시작되지 않았습니다", pytrace=False)
                time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


# Module scope: Playwright's sync API keeps an event loop running in this thread until it stops,
# which would break later test modules that call asyncio.run().
@pytest.fixture(scope="module")
def browser_context(tmp_path_factory):
    chromium = _require_chromium()
    from playwright.sync_api import sync_playwright

    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(profile),  # a fresh --user-data-dir
            executable_path=chromium,
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1366, "height": 900},
            locale="ko-KR",
            color_scheme="light",
        )
        context.set_default_timeout(20_000)
        try:
            yield context
        finally:
            context.close()


class PageWatch:
    """Console errors, page errors and requests that leave the loopback site."""

    def __init__(self, page, base: str):
        self.errors: list[str] = []
        self.external: list[str] = []
        self.failed: list[str] = []
        page.on("console", lambda msg: msg.type == "error" and self.errors.append(msg.text))
        page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))
        page.on("requestfailed", lambda req: self.failed.append(f"{req.url} ({req.failure})"))

        def on_request(req):
            if not (req.url.startswith(base) or req.url.startswith("data:") or req.url.startswith("blob:")):
                self.external.append(req.url)

        page.on("request", on_request)

    def assert_clean(self, what: str):
        assert not self.errors, f"{what}: 브라우저 콘솔 오류 {self.errors}"
        assert not self.external, f"{what}: 사이트 밖으로 나간 요청 {self.external}"
        assert not self.failed, f"{what}: 실패한 요청 {self.failed}"


def _open(context, url: str, base: str):
    page = context.new_page()
    watch = PageWatch(page, base)
    page.goto(url, wait_until="networkidle")
    return page, watch


def _wait_for_mermaid(page, minimum: int = 1):
    # Material replaces each <pre class="mermaid"> by a <div class="mermaid"> with the SVG in a
    # shadow root once Mermaid has rendered it.
    page.wait_for_function(
        "n => document.querySelectorAll('div.mermaid').length >= n", arg=minimum, timeout=30_000
    )


def _screenshot(page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=False)
    return path


def test_browser_home_page(served_site, browser_context):
    page, watch = _open(browser_context, served_site, served_site)
    try:
        assert "MLOps 기초" in page.title()
        nav = page.locator("nav.md-nav--primary").inner_text()
        for label in ["소개", "시작하기", "단계별 실습", "프로덕션 체크리스트", "서비스 계약", "강사 가이드"]:
            assert label in nav, f"내비게이션에 '{label}' 이 없습니다: {nav[:300]}"
        _wait_for_mermaid(page)
        page.wait_for_timeout(300)
        shot = _screenshot(page, "home")
        page.screenshot(path=str(SCREENSHOTS / "home-full.png"), full_page=True)
        assert shot.stat().st_size > 10_000
        watch.assert_clean("홈")
    finally:
        page.close()


@pytest.mark.parametrize("which", ["exercise", "lesson"])
def test_browser_step02_pages(served_site, browser_context, which):
    m = manifest.load()
    step = m.step("step02")
    url = f"{served_site}steps/{step.folder}/{which}/"
    page, watch = _open(browser_context, url, served_site)
    try:
        body = page.locator("article").inner_text()
        if which == "exercise":
            assert step.checks[0].id in body
            _wait_for_mermaid(page)
            copy_buttons = page.locator("button.md-code__button[data-md-type='copy'], button.md-clipboard")
            assert copy_buttons.count() > 0, "코드 복사 버튼이 없습니다"
            assert page.locator(".tabbed-set").count() > 0
            assert page.locator(".admonition").count() > 0
        else:
            assert page.locator(".jupyter-wrapper").count() == 1 or "준비 중" in body
        nav = page.locator("nav.md-nav--primary").inner_text()
        assert "FastAPI 서버 구축" in nav
        page.wait_for_timeout(300)
        _screenshot(page, f"step02-{which}")
        page.screenshot(path=str(SCREENSHOTS / f"step02-{which}-full.png"), full_page=True)
        watch.assert_clean(f"Step 2 {which}")
    finally:
        page.close()


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        # the step-02 lesson, the checklist item "재시도 로직" or step 06's "데드라인 있는 재시도"
        ("재시도", ("steps/02-fastapi/", "checklist/#item-rel-retries", "steps/06-optimization/")),
        ("컨테이너", ("steps/01-docker/",)),
    ],
)
def test_browser_korean_search(served_site, browser_context, query, expected):
    page, watch = _open(browser_context, served_site, served_site)
    try:
        page.locator("label.md-search__icon, .md-search__input").first.click()
        box = page.locator("input.md-search__input")
        # Material's search listens to key events, not only "input": type it like a person.
        box.press_sequentially(query, delay=30)
        box.press("End")
        results = page.locator(".md-search-result__item a")
        results.first.wait_for(state="attached", timeout=20_000)
        page.wait_for_timeout(300)
        hrefs = [
            re.sub(r"\?h=[^#]*", "", urllib.parse.unquote(h or ""))
            for h in results.evaluate_all("els => els.map(e => e.getAttribute('href'))")
        ]
        meta = page.locator(".md-search-result__meta").inner_text()
        assert any(e in h for h in hrefs[:5] for e in expected), (
            f"'{query}' 검색 결과 상위에 {expected} 가 없습니다: {hrefs[:10]}"
        )
        _screenshot(page, f"search-{query}")
        watch.assert_clean(f"검색 '{query}' ({meta})")
    finally:
        page.close()
