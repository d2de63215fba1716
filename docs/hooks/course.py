"""mkdocs hook of the course site.

What it does (all from coursekit/course.toml, so nothing is listed twice):

* expands the nav entry "단계별 실습" into one section per step (lesson + exercise);
* brings each step's lesson notebook (steps/NN-name/lesson.ipynb, outside docs/) into the
  build as a virtual file, rendered and executed by mkdocs-jupyter; a step whose manifest
  status is "planned" and has no notebook yet gets a "준비 중" page instead, a "ready" step
  without its notebook fails the build;
* generates the exercise page of steps that have no hand-written docs/steps/<folder>/exercise.md;
* replaces ``<!-- course:... -->`` markers in pages with tables and diagrams generated from
  the manifest (checks, hints, checklist items, step list, architecture, code snippets of the
  starters in steps/);
* fails the build when a page would include a file of solutions/ (the site is public; it is
  built and tested from a copy without solutions/, see tests/test_docs.py);
* starts a local Gemini simulator (coursekit.simulator.SimulatorProcess) for the build and
  points the notebook kernels at it through GOOGLE_GEMINI_BASE_URL / GOOGLE_API_KEY;
  stops it when the build ends (also on error and when ``mkdocs serve`` shuts down);
* makes heading anchors of notebooks keep Korean text, like the Markdown pages do.
"""

from __future__ import annotations

import logging
import os
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.plugins import event_priority
from mkdocs.structure.files import File, Files

from coursekit import manifest as course_manifest

log = logging.getLogger("mkdocs.hooks.course")

ROOT = Path(__file__).resolve().parents[2]

# Mermaid is not committed (third-party code): it is taken from the npm registry's package at
# build time into .course/ (git-ignored) and served from the site, so pages make no external
# request. Without npm the site falls back to mkdocs-material's default (the unpkg CDN).
MERMAID_VERSION = "11.17.2"
MERMAID_URI = "assets/vendor/mermaid/mermaid.min.js"
MERMAID_CACHE = ROOT / ".course" / "vendor" / f"mermaid-{MERMAID_VERSION}" / "mermaid.min.js"


def ensure_mermaid() -> Path | None:
    """Local copy of mermaid.min.js (downloaded once with `npm pack`), or None."""
    if MERMAID_CACHE.exists():
        return MERMAID_CACHE
    import shutil
    import subprocess
    import tarfile
    import tempfile

    npm = shutil.which("npm")
    if npm is None or os.environ.get("COURSE_DOCS_MERMAID_CDN") == "1":
        return None
    with tempfile.TemporaryDirectory(prefix="mermaid-") as tmp:
        try:
            subprocess.run([npm, "pack", f"mermaid@{MERMAID_VERSION}", "--silent"], cwd=tmp, check=True,
                           capture_output=True, timeout=180)
            with tarfile.open(Path(tmp) / f"mermaid-{MERMAID_VERSION}.tgz") as tar:
                member = tar.extractfile("package/dist/mermaid.min.js")
                data = member.read() if member else b""
        except (subprocess.SubprocessError, OSError, tarfile.TarError, KeyError) as exc:
            log.info("Mermaid 를 npm 에서 받지 못해 CDN 을 씁니다: %s", exc)
            return None
    if not data:
        return None
    MERMAID_CACHE.parent.mkdir(parents=True, exist_ok=True)
    MERMAID_CACHE.write_bytes(data)
    return MERMAID_CACHE
DOCS = ROOT / "docs"
STEPS_SECTION = "단계별 실습"
SIM_API_KEY = "docs-build-dummy-key"
MARKER = re.compile(r"<!--\s*course:([a-z][a-z-]*)\s*(.*?)\s*-->")
STATUS_LABEL = {"ready": "공개", "planned": "준비 중"}


# ---------------------------------------------------------------------------
# Plan: which page each step gets
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class StepPages:
    step: course_manifest.Step
    lesson_uri: str            # src uri inside the site (virtual file)
    notebook: Path | None      # the real notebook, when it exists
    exercise_uri: str
    exercise_written: bool     # docs/steps/<folder>/exercise.md exists

    @property
    def label(self) -> str:
        return f"{self.step.number:02d}. {self.step.title}"


def _plan(m: course_manifest.Manifest) -> list[StepPages]:
    pages = []
    for step in m.steps:
        nb = ROOT / "steps" / step.folder / step.notebook
        base = f"steps/{step.folder}"
        if nb.is_file():
            lesson_uri, notebook = f"{base}/{Path(step.notebook).stem}.ipynb", nb
        elif step.status == "planned":
            lesson_uri, notebook = f"{base}/lesson.md", None
        else:
            raise PluginError(
                f"{step.id} 의 상태는 'ready' 인데 레슨 노트북이 없습니다: "
                f"{nb.relative_to(ROOT)} (course.toml 의 status 를 'planned' 로 두거나 노트북을 추가하세요)"
            )
        exercise_uri = f"{base}/exercise.md"
        pages.append(
            StepPages(step, lesson_uri, notebook, exercise_uri, (DOCS / exercise_uri).is_file())
        )
    return pages


_state: dict = {"plan": [], "sim": None, "saved_env": None}


# ---------------------------------------------------------------------------
# Korean anchors in notebooks (mkdocs-jupyter strips non-ASCII from heading ids)
# ---------------------------------------------------------------------------
def _patch_notebook_slugs(slugify) -> None:
    try:
        import markdown
        from markdown.extensions.toc import TocExtension
        from mkdocs_jupyter import convert, plugin
    except ImportError:  # mkdocs-jupyter not installed: nothing to patch
        return

    convert.slugify = lambda value: slugify(value, "-")

    def add_anchor_lower_id(html, anchor_link_text="¶"):
        # Same as mkdocs_jupyter.convert.add_anchor_lower_id, without nbconvert's percent-encoding
        # of the id, so that notebook anchors equal the ids of the TOC ("#2-요청응답-모델").
        from xml.etree.ElementTree import Element

        from defusedxml import ElementTree
        from nbconvert.filters.strings import html2text

        try:
            h = ElementTree.fromstring(html)
        except Exception:
            return html
        link = slugify(html2text(h), "-")
        h.set("id", link)
        a = Element("a", {"class": "anchor-link", "href": "#" + link})
        a.text = anchor_link_text
        h.append(a)
        return ElementTree.tostring(h).decode("utf-8", "replace")

    convert.add_anchor_lower_id = add_anchor_lower_id

    def _get_markdown_toc(markdown_source, toc_depth):
        md = markdown.Markdown(extensions=[TocExtension(toc_depth=toc_depth, slugify=slugify)])
        md.convert(markdown_source)
        return md.toc_tokens

    plugin._get_markdown_toc = _get_markdown_toc


# ---------------------------------------------------------------------------
# Events
# ---------------------------------------------------------------------------
def on_config(config):
    m = course_manifest.load()
    _state["plan"] = _plan(m)

    # Snippets are read from the repository root, wherever mkdocs is started from.
    snippets = config.mdx_configs.setdefault("pymdownx.snippets", {})
    snippets["base_path"] = [str(ROOT)]

    toc_cfg = config.mdx_configs.get("toc", {})
    slugify = toc_cfg.get("slugify")
    _state["slugify"] = slugify
    if slugify is not None:
        _patch_notebook_slugs(slugify)

    config.nav = _expand_nav(config.nav, _state["plan"])

    _state["mermaid"] = ensure_mermaid()
    if _state["mermaid"] is not None and MERMAID_URI not in [str(j) for j in config.extra_javascript]:
        config.extra_javascript.append(MERMAID_URI)
    return config


def _expand_nav(nav, plan: list[StepPages]):
    if not nav:
        return nav
    out = []
    found = False
    for entry in nav:
        if isinstance(entry, dict) and STEPS_SECTION in entry and isinstance(entry[STEPS_SECTION], str):
            found = True
            section = [{"단계 한눈에 보기": entry[STEPS_SECTION]}]
            for p in plan:
                suffix = "" if p.step.status == "ready" else " (준비 중)"
                section.append(
                    {p.label + suffix: [{"레슨": p.lesson_uri}, {"실습과 채점": p.exercise_uri}]}
                )
            out.append({STEPS_SECTION: section})
        else:
            out.append(entry)
    if not found:
        raise PluginError(f"mkdocs.yml 의 nav 에 '{STEPS_SECTION}: steps/index.md' 항목이 없습니다")
    return out


@event_priority(100)  # before mkdocs-jupyter wraps the notebooks
def on_files(files: Files, config):
    for p in _state["plan"]:
        if p.notebook is not None:
            # A real File whose src_dir is the repository root (not File.generated): mkdocs-jupyter
            # wraps notebook files and reads abs_src_path through src_dir, which a generated
            # file does not have.
            files.append(
                File(
                    p.lesson_uri,
                    src_dir=str(ROOT),
                    dest_dir=config.site_dir,
                    use_directory_urls=config.use_directory_urls,
                )
            )
        else:
            files.append(File.generated(config, p.lesson_uri, content=_planned_lesson(p)))
        if not p.exercise_written:
            files.append(File.generated(config, p.exercise_uri, content=_generated_exercise(p)))
    if _state.get("mermaid") is not None:
        files.append(File.generated(config, MERMAID_URI, abs_src_path=str(_state["mermaid"])))
    return files


def on_serve(server, config, builder):
    # `mkdocs serve` watches docs/ only; also rebuild when a lesson notebook or the manifest changes.
    for p in _state["plan"]:
        if p.notebook is not None:
            server.watch(str(p.notebook))
    server.watch(str(course_manifest.MANIFEST_PATH))
    return server


NOTEBOOK_MERMAID_CDN = re.compile(
    r'\(await import\("https://cdnjs\.cloudflare\.com/ajax/libs/mermaid/[^"]+"\)\)\.default'
)
NOTEBOOK_ELK_CDN = re.compile(r'const elkUrl = "https://cdnjs\.cloudflare\.com/[^"]*";')


def on_post_page(output: str, page, config):
    # nbconvert's template loads Mermaid for notebook Markdown cells from cdnjs; use the copy
    # that the site already ships (extra_javascript), so notebook pages make no external request.
    if page.file.src_uri.endswith(".ipynb") and _state.get("mermaid") is not None:
        output = NOTEBOOK_MERMAID_CDN.sub("window.mermaid", output)
        output = NOTEBOOK_ELK_CDN.sub('const elkUrl = "";', output)
    return output


def on_pre_build(config):
    if not any(p.notebook for p in _state["plan"]):
        return
    if not _notebooks_execute(config):
        return
    _start_simulator()


def on_post_build(config):
    _stop_simulator()


def on_build_error(error):
    _stop_simulator()


def on_shutdown():
    _stop_simulator()


def _notebooks_execute(config) -> bool:
    for name, plugin in config.plugins.items():
        if name.endswith("jupyter"):
            return bool(plugin.config.get("execute"))
    return False


def _start_simulator():
    if _state["sim"] is not None:
        return
    try:
        from coursekit.simulator import SimulatorProcess
    except ImportError as exc:
        raise PluginError(
            f"레슨 노트북을 실행하려면 시뮬레이터(coursekit.simulator.SimulatorProcess)가 필요합니다: {exc}"
        ) from exc
    sim = SimulatorProcess(seed=0).start()
    _state["sim"] = sim
    keys = ("GOOGLE_GEMINI_BASE_URL", "GOOGLE_API_KEY", "COURSE_USE_REAL_GEMINI")
    _state["saved_env"] = {k: os.environ.get(k) for k in keys}
    os.environ["GOOGLE_GEMINI_BASE_URL"] = sim.base_url
    os.environ["GOOGLE_API_KEY"] = SIM_API_KEY
    os.environ.pop("COURSE_USE_REAL_GEMINI", None)
    log.info("레슨 노트북용 Gemini 시뮬레이터 시작: %s", sim.base_url)


def _stop_simulator():
    sim = _state.get("sim")
    if sim is None:
        return
    _state["sim"] = None
    try:
        sim.stop()
    finally:
        for k, v in (_state.pop("saved_env", None) or {}).items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    log.info("Gemini 시뮬레이터 종료")


# ---------------------------------------------------------------------------
# Markers
# ---------------------------------------------------------------------------
def on_page_markdown(markdown: str, page, config, files):
    def replace(match: re.Match) -> str:
        name, args = match.group(1), match.group(2).split()
        func = MARKERS.get(name)
        if func is None:
            raise PluginError(f"{page.file.src_uri}: 알 수 없는 표식 <!-- course:{name} -->")
        return func(page, *args)

    markdown = MARKER.sub(replace, markdown)
    leaks = solution_includes(markdown)
    if leaks:
        raise PluginError(
            f"{page.file.src_uri}: 해답 폴더 solutions/ 의 파일을 포함합니다 (공개 사이트에 답이 실립니다): "
            + ", ".join(leaks)
            + " — 스타터(steps/)의 파일이나 일반 예제를 쓰세요"
        )
    return markdown


SNIPPET_LINE = re.compile(r"^\s*;?-{1,}8<-{1,}\s*(.*)$")


def _is_solution_path(path: str) -> bool:
    path = path.strip().strip("\"'").split(":", 1)[0]
    if not path:
        return False
    target = Path(path) if Path(path).is_absolute() else ROOT / path
    try:
        target.resolve().relative_to((ROOT / "solutions").resolve())
    except ValueError:
        return False
    return True


def solution_includes(markdown: str) -> list[str]:
    """Paths under solutions/ that pymdownx.snippets would include in this page.

    Both forms: `--8<-- "file"` on one line, and a block of file names between two `--8<--` lines.
    """
    found = []
    in_block = False
    for line in markdown.splitlines():
        m = SNIPPET_LINE.match(line)
        if m:
            target = m.group(1).strip()
            if not target:
                in_block = not in_block
                continue
            if _is_solution_path(target):
                found.append(target.strip("\"'"))
        elif in_block and line.strip() and _is_solution_path(line.strip()):
            found.append(line.strip())
    return found


def _manifest():
    return course_manifest.load()


def _pages_of(step_key: str) -> StepPages:
    step = _manifest().step(step_key)
    for p in _state["plan"]:
        if p.step.id == step.id:
            return p
    raise PluginError(f"단계 {step_key!r} 가 계획에 없습니다")


def _rel(page, target_uri: str) -> str:
    """Relative Markdown link from page to another source file of the site."""
    here = Path(page.file.src_uri).parent
    return os.path.relpath(target_uri, here).replace(os.sep, "/")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _heading_text(source: str) -> str:
    """A heading's text as the notebook page renders it: Markdown emphasis and code marks go, a
    literal underscore such as `_total` or snake_case stays (the anchor is made from this text)."""
    import html

    import markdown

    rendered = markdown.markdown(source)
    return html.unescape(re.sub(r"<[^>]+>", "", rendered)).strip()


def _notebook_sections(p: StepPages) -> dict[str, str]:
    """'§N' -> anchor of the lesson heading that starts with it (e.g. '§2 요청/응답 모델')."""
    slugify = _state.get("slugify")
    if p.notebook is None or slugify is None:
        return {}
    import json

    sections: dict[str, str] = {}
    cells = json.loads(p.notebook.read_text(encoding="utf-8")).get("cells", [])
    for cell in cells:
        if cell.get("cell_type") != "markdown":
            continue
        for line in "".join(cell.get("source", [])).splitlines():
            m = re.match(r"^#{1,3}\s+(§\s*(\d+)\b.*)$", line.strip())
            if m:
                sections.setdefault(f"§{m.group(2)}", slugify(_heading_text(m.group(1)), "-"))
    return sections


def _hint_with_link(page, p: StepPages, hint: str) -> str:
    """The manifest's hint, its leading 'lesson.ipynb §N' turned into a link to that section."""
    name = p.step.notebook
    if not hint.startswith(name):
        return _cell(hint)
    rest = hint[len(name):]
    target = _rel(page, p.lesson_uri)
    m = re.match(r"\s*(§\s*(\d+))", rest)
    if m:
        anchor = _notebook_sections(p).get(f"§{m.group(2)}")
        if anchor:
            label = f"레슨 {m.group(1)}"
            return f"[{label}]({target}#{anchor}){_cell(rest[m.end():])}"
    return f"[레슨]({target}){_cell(rest)}"


def m_checks(page, step_key: str) -> str:
    """Table of the grader checks of a step: id, checklist item, what is checked, hint."""
    m = _manifest()
    p = _pages_of(step_key)
    if not p.step.checks:
        return '!!! note "채점 항목 준비 중"\n    이 단계의 채점 항목은 아직 작성 중입니다.\n'
    rows = ["| 채점 항목 | 확인하는 것 | 힌트 |", "|---|---|---|"]
    for c in p.step.checks:
        item = m.item(c.item)
        link = f"[{item.group}: {_cell(item.title)}]({_rel(page, 'checklist.md')}#{_item_anchor(item)})"
        rows.append(f"| `{c.id}`<br>{link} | {_cell(c.title)} | {_hint_with_link(page, p, c.hint)} |")
    return "\n".join(rows) + "\n"


def m_items(page, step_key: str) -> str:
    """Bullet list of the checklist items a step proves (or will prove)."""
    m = _manifest()
    p = _pages_of(step_key)
    lines = []
    for item_id in p.step.items:
        item = m.item(item_id)
        n = sum(1 for c in p.step.checks if c.item == item_id)
        proof = f" — 채점 항목 {n}개" if n else " — 채점 항목 준비 중"
        lines.append(
            f"- [{item.group}: {item.title}]({_rel(page, 'checklist.md')}#{_item_anchor(item)}){proof}"
        )
    return "\n".join(lines) + "\n"


def _item_anchor(item) -> str:
    return "item-" + item.id.replace(".", "-")


def m_checklist(page) -> str:
    """The production checklist, grouped, each item linked to its steps and checks."""
    m = _manifest()
    out = []
    groups: list[str] = []
    for it in m.checklist:
        if it.group not in groups:
            groups.append(it.group)
    for group in groups:
        out.append(f"## {group}\n")
        for it in (i for i in m.checklist if i.group == group):
            checks = [c for c in m.checks if c.item == it.id]
            steps = [p for p in _state["plan"] if it.id in p.step.items]
            step_links = ", ".join(
                f"[{p.label}]({_rel(page, p.exercise_uri)})" for p in steps
            ) or "아직 배정되지 않음"
            out.append(f"### {it.title} {{ #{_item_anchor(it)} }}\n")
            out.append(f"- 단계: {step_links}")
            if checks:
                out.append(f"- 증명하는 채점 항목 ({len(checks)}개):")
                for c in checks:
                    out.append(f"    - `{c.id}` — {_cell(c.title)}")
            else:
                out.append("- 증명하는 채점 항목: **준비 중**")
            out.append("")
    return "\n".join(out) + "\n"


def m_steps(page) -> str:
    """Overview table of all steps."""
    rows = ["| 단계 | 내용 | 증명하는 체크리스트 | 채점 항목 | 상태 |", "|---|---|---|---|---|"]
    m = _manifest()
    for p in _state["plan"]:
        items = ", ".join(m.item(i).title for i in p.step.items)
        rows.append(
            f"| [{p.label}]({_rel(page, p.exercise_uri)}) | {_cell(p.step.summary)} | {_cell(items)} "
            f"| {len(p.step.checks)} | {STATUS_LABEL.get(p.step.status, p.step.status)} |"
        )
    return "\n".join(rows) + "\n"


def m_grade(page, step_key: str) -> str:
    """The commands that grade a step."""
    p = _pages_of(step_key)
    n = f"{p.step.number:02d}"
    return textwrap.dedent(
        f"""\
        === "pytest"

            ```bash
            pytest grader -k {p.step.id}
            ```

        === "course CLI"

            ```bash
            course grade {n}
            ```

        === "한 항목만"

            ```bash
            pytest grader --checks {p.step.checks[0].id if p.step.checks else p.step.id + '.<id>'}
            ```
        """
    )


ARCHITECTURE = {
    "step01": """\
flowchart TB
    G["채점기<br/>pytest grader -k step01"]
    H["hadolint<br/>Dockerfile 린트"]
    subgraph D["Docker 엔진"]
        C["컨테이너 my-llm-app<br/>uvicorn main:app :8000 · USER 10001 (root 아님)<br/>HEALTHCHECK /health"]
    end
    S[("Gemini 시뮬레이터<br/>127.0.0.1:PORT")]
    R["Google Gemini API<br/>(실제 키, 선택)"]
    G -->|"정적 검사"| H
    G -->|"docker build · run -e · stop"| D
    G -->|"GET /health · POST /chat"| C
    C -->|"generateContent<br/>GOOGLE_GEMINI_BASE_URL"| S
    C -.->|"COURSE_USE_REAL_GEMINI=1"| R
""",
    "step02": """\
flowchart TB
    G["채점기<br/>pytest grader -k step02"]
    L["Locust (headless)<br/>동시 사용자 50명"]
    subgraph SV["학습자 서비스 · uvicorn main:app"]
        A["FastAPI<br/>POST /chat · GET /health<br/>X-API-Key · 검증 · 오류 변환"]
        C["ChatGoogleGenerativeAI<br/>timeout · max_retries"]
        A -->|"await ainvoke"| C
    end
    S[("Gemini 시뮬레이터<br/>장애 주입 429 · 5xx · 멈춤<br/>/_sim/stats")]
    R["Google Gemini API<br/>(실제 키, 선택)"]
    G -->|"HTTP 계약 검사"| A
    G -->|"부하 시나리오"| L
    L -->|"POST /chat"| A
    C -->|"generateContent"| S
    G -.->|"PATCH /_sim/config<br/>GET /_sim/stats"| S
    C -.->|"COURSE_USE_REAL_GEMINI=1"| R
""",
    "step03": """\
flowchart LR
    P["git push / PR"] --> GA["GitHub Actions"]
    subgraph GA["GitHub Actions 워크플로"]
        T["테스트<br/>pytest + 채점기"] --> B["이미지 빌드<br/>docker build"] --> PU["레지스트리에 push"]
    end
    PU --> DEP["배포<br/>(ArgoCD / GitOps)"]
    T -.->|"GOOGLE_GEMINI_BASE_URL"| S[("Gemini 시뮬레이터")]
""",
    "step04": """\
flowchart LR
    L["Locust"] -->|"POST /chat"| A["학습자 서비스<br/>GET /metrics · POST /feedback"]
    A -->|"generateContent"| S[("Gemini 시뮬레이터")]
    PR["Prometheus"] -->|"scrape /metrics"| A
    PR --> AL["알림 규칙<br/>promtool test rules"]
    AL -->|"firing"| AM["Alertmanager"]
    AM -->|"webhook"| W["웹훅 수신기"]
    PR --> GF["Grafana 대시보드<br/>(패널 쿼리)"]
    G["채점기"] -->|"쿼리 평가"| PR
""",
    "step05": """\
flowchart LR
    C["클라이언트<br/>X-Request-ID · traceparent"] --> A["학습자 서비스<br/>structlog · OpenTelemetry"]
    A -->|"요청당 JSON 로그 한 줄<br/>LOG_DIR/app.jsonl"| LG[("로그 파일<br/>DuckDB 로 조회")]
    A -->|"OTLP/HTTP 스팬<br/>시도마다 chat 스팬"| TR["MLflow 추적 서버"]
    A -->|"오류 이벤트 (before_send)"| SE["Sentry 수신기"]
    A -->|"run (입력·출력 숨김)"| LS["LangSmith 수신기"]
    A -->|"generateContent<br/>X-Request-ID · traceparent"| S[("Gemini 시뮬레이터")]
    A -->|"Fernet 암호화"| PS[("prompts.jsonl")]
    G["채점기"] -->|"요청 · 장애 주입"| A
    G -.->|"로그 · 트레이스 · 이벤트 · run 검사"| LG & TR & SE & LS
""",
    "step06": """\
flowchart LR
    L["부하 (Locust)"] -->|"HTTPS"| LB["nginx<br/>TLS · HSTS · 308"]
    LB --> A1["복제본 1<br/>uvicorn main:app"]
    LB --> A2["복제본 2<br/>uvicorn main:app"]
    A1 & A2 <-->|"API 키별 Rate Limit<br/>응답 ID"| RD[("Redis")]
    A1 & A2 -->|"재시도 (데드라인)<br/>서킷 브레이커"| S1[("주 모델<br/>Gemini 시뮬레이터")]
    A1 & A2 -.->|"Fallback (표시)"| S2[("두 번째 모델")]
    G["채점기"] -->|"장애 주입 · SIGTERM · Redis 중단"| LB
""",
}


def m_architecture(page, step_key: str) -> str:
    step = _manifest().step(step_key)
    diagram = ARCHITECTURE.get(step.id)
    if diagram is None:
        raise PluginError(f"{step.id}: docs/hooks/course.py 의 ARCHITECTURE 에 그림이 없습니다")
    return f"```mermaid\n{diagram}```\n"


def m_files(page, step_key: str, *names: str) -> str:
    """Tabs with files of a step's starter (steps/<folder>/), pulled with pymdownx.snippets.

    Never from solutions/: the site is public and must build from a copy without it.
    """
    step = _manifest().step(step_key)
    out = []
    missing = []
    for name in names:
        src = _source_of(step, name)
        if src is None:
            missing.append(name)
            continue
        lang = {".py": "python", ".example": "bash", ".txt": "text", ".toml": "toml"}.get(
            Path(name).suffix, "text"
        )
        if name == "Dockerfile":
            lang = "dockerfile"
        out.append(f'=== "{name}"\n\n    ```{lang} title="{src}"\n    --8<-- "{src}"\n    ```\n')
    if missing:
        folder_exists = (ROOT / "steps" / step.folder).is_dir()
        msg = f"{page.file.src_uri}: {step.id} 의 파일을 찾을 수 없습니다: {', '.join(missing)}"
        if folder_exists and step.status == "ready":
            log.warning(msg)
        else:
            log.info(msg)
        out.append(
            '!!! note "준비 중"\n    다음 파일은 아직 저장소에 없습니다: '
            + ", ".join(f"`{step.folder}/{n}`" for n in missing)
            + "\n"
        )
    return "\n".join(out)


def _source_of(step, name: str) -> str | None:
    """The starter's file (steps/<folder>/<name>); pages never show solutions/."""
    if (ROOT / "steps" / step.folder / name).is_file():
        return f"steps/{step.folder}/{name}"
    return None


def _definition_lines(path: Path, symbol: str) -> tuple[int, int] | None:
    """First and last line of a top-level class/function/assignment named symbol."""
    import ast

    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in tree.body:
        names: list[str] = []
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            names = [node.name]
        elif isinstance(node, ast.Assign):
            names = [t.id for t in node.targets if isinstance(t, ast.Name)]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names = [node.target.id]
        if symbol in names:
            start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
            return start, node.end_lineno
    return None


def m_code(page, step_key: str, name: str, *symbols: str) -> str:
    """Definitions from a step's Python file, pulled with a pymdownx.snippets line range.

    The line range is found with ``ast`` at every build, so the page follows the file.
    """
    step = _manifest().step(step_key)
    src = _source_of(step, name)
    if src is None:
        log.warning("%s: %s 에 %s 가 없습니다", page.file.src_uri, step.folder, name)
        return f'!!! note "준비 중"\n    `{step.folder}/{name}` 가 아직 저장소에 없습니다.\n'
    spans, missing = [], []
    for symbol in symbols:
        found = _definition_lines(ROOT / src, symbol)
        if found is None:
            missing.append(symbol)
        else:
            spans.append(found)
    out = []
    if spans:
        lines = "\n\n".join(f'--8<-- "{src}:{a}:{b}"' for a, b in sorted(spans))
        label = ", ".join(s for s in symbols if s not in missing)
        out.append(f'```python title="{src} — {label}"\n{lines}\n```\n')
    if missing:
        out.append(
            f'!!! note "스타터에서는 TODO"\n    `{src}` 에서 {", ".join(f"`{m}`" for m in missing)} 는 '
            "학습자가 채울 부분입니다.\n"
        )
    return "\n".join(out)


def m_include(page, path: str) -> str:
    """Include a Markdown file of the repository with pymdownx.snippets, once it exists."""
    if _is_solution_path(path):
        raise PluginError(f"{page.file.src_uri}: 해답 파일은 사이트에 넣을 수 없습니다: {path}")
    if (ROOT / path).is_file():
        return f'--8<-- "{path}"\n'
    return f'!!! note "준비 중"\n    `{path}` 가 아직 저장소에 없습니다. 작성되면 이 자리에 그대로 포함됩니다.\n'


MARKERS = {
    "checks": m_checks,
    "items": m_items,
    "checklist": m_checklist,
    "steps": m_steps,
    "grade": m_grade,
    "architecture": m_architecture,
    "files": m_files,
    "include": m_include,
    "code": m_code,
}


# ---------------------------------------------------------------------------
# Generated pages
# ---------------------------------------------------------------------------
def _planned_lesson(p: StepPages) -> str:
    return textwrap.dedent(
        f"""\
        # {p.label}: 레슨

        !!! info "준비 중"
            이 단계의 레슨 노트북(`steps/{p.step.folder}/{p.step.notebook}`)은 아직 작성 중입니다.

        {p.step.summary}

        ## 이 단계가 증명할 체크리스트 항목

        <!-- course:items {p.step.id} -->

        ## 서비스 구성

        <!-- course:architecture {p.step.id} -->
        """
    )


def _generated_exercise(p: StepPages) -> str:
    if p.step.status == "planned":
        return textwrap.dedent(
            f"""\
            # {p.label}: 실습과 채점

            !!! info "준비 중"
                이 단계의 스타터 코드와 채점기는 아직 작성 중입니다. 아래는 계획된 내용입니다.

            {p.step.summary}

            ## 증명할 체크리스트 항목

            <!-- course:items {p.step.id} -->

            ## 서비스 구성 (계획)

            <!-- course:architecture {p.step.id} -->
            """
        )
    return textwrap.dedent(
        f"""\
        # {p.label}: 실습과 채점

        {p.step.summary}

        작업 폴더는 `steps/{p.step.folder}/` 입니다. 먼저 [레슨]({Path(p.lesson_uri).name})을 따라 하세요.

        ## 채점

        <!-- course:grade {p.step.id} -->

        ## 채점 항목과 힌트

        <!-- course:checks {p.step.id} -->

        ## 이 단계가 증명하는 체크리스트 항목

        <!-- course:items {p.step.id} -->

        ## 서비스 구성

        <!-- course:architecture {p.step.id} -->
        """
    )
