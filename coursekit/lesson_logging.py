"""Plumbing for the step 05 lesson (logging and tracing), so its cells teach and measure.

    from coursekit import lesson, lesson_logging as ll

    widget = ll.start_widget({"WIDGET_PROMPT_KEYS": key})   # the lesson's demo service, a real uvicorn
    ll.show("app.py", "async def request_log")              # its source, shown in the notebook
    ll.log_lines(widget)                                    # its LOG_DIR/app.jsonl, parsed
    ll.stdout_lines(widget)                                 # what it printed (uvicorn's own lines too)

The demo service lives in coursekit/data/faq_widget_obs/ (copied with faq-widget's price table into the
lesson's work folder). Everything started here is stopped by PID when the kernel exits and by
`lesson.cleanup()`. Messages meant for people are Korean.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from . import lesson

__all__ = ["DEMO_SOURCE", "WIDGET_KEY", "leaks", "log_dir", "log_lines", "show", "start_widget", "stdout_lines"]

DEMO_SOURCE = Path(__file__).resolve().parent / "data" / "faq_widget_obs"
PRICE_SOURCE = Path(__file__).resolve().parent / "data" / "faq_widget"
WIDGET_KEY = "lab-service-key"


def start_widget(env: Mapping[str, str] | None = None, name: str = "faq-widget") -> lesson.Service:
    """Copy the demo (coursekit/data/faq_widget_obs + faq-widget's pricing) into the work folder and run
    it with uvicorn against the lesson's simulator; its logs go to <folder>/logs unless WIDGET_LOG_DIR."""
    folder = lesson.workdir() / name
    if folder.exists():
        shutil.rmtree(folder)
    shutil.copytree(DEMO_SOURCE, folder, ignore=shutil.ignore_patterns("__pycache__"))
    for file in ("pricing.py", "prices.toml"):
        shutil.copy2(PRICE_SOURCE / file, folder / file)
    full = {"WIDGET_API_KEY": WIDGET_KEY, "WIDGET_LOG_DIR": str(folder / "logs"), **(env or {})}
    return lesson.start_service(folder, module="app", env=full)


def log_dir(svc: lesson.Service) -> Path:
    return Path(svc.env.get("WIDGET_LOG_DIR") or svc.cwd / "logs")


def log_lines(svc: lesson.Service, file: str = "app.jsonl") -> list[dict[str, Any]]:
    """The service's JSON log file, one dict per line."""
    path = log_dir(svc) / file
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def stdout_lines(svc: lesson.Service) -> list[str]:
    """Every line the process wrote to stdout/stderr (JSON or not)."""
    return [line for line in svc.log().splitlines() if line.strip()]


def is_json(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def leaks(text: str, *secrets: str) -> dict[str, int]:
    """How often each secret (key, prompt ...) occurs in `text`, as is or JSON-escaped (\\uXXXX, as SDKs
    often send it); only the ones found."""
    found = {}
    for s in secrets:
        if not s:
            continue
        n = sum(text.count(form) for form in {s, json.dumps(s)[1:-1]})
        if n:
            found[s if len(s) <= 24 else s[:21] + "..."] = n
    return found


def show(file: str, start: str | None = None, end: str | None = None):
    """The demo's `file` (or the lines from the first one containing `start` up to the line before the
    next one containing `end`) as highlighted code in the notebook."""
    return lesson.show_source(DEMO_SOURCE / file, start, end)


REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{8,64}$")


def start_tracing(experiment: str = "faq-widget"):
    """A real MLflow tracing server for the lesson (coursekit.tracing), stopped by `lesson.cleanup()`
    and at exit. Its `.env()` points a service's OpenTelemetry exporter at it."""
    from . import tracing

    server = tracing.MLflowServer(experiment=experiment).start()
    lesson.on_cleanup(server.stop)
    return server


def start_receivers():
    """(SentryReceiver, LangSmithReceiver) of coursekit.receivers, started, stopped by `lesson.cleanup()`."""
    from . import receivers

    sentry, smith = receivers.SentryReceiver().start(), receivers.LangSmithReceiver().start()
    lesson.on_cleanup(sentry.stop)
    lesson.on_cleanup(smith.stop)
    return sentry, smith


def sent_text(receiver, since: int = 0) -> str:
    """Everything a receiver got (bodies decoded, request `since` onwards) as one text, for leak scans."""
    return "\n".join(r.text() for r in receiver.raw()[since:])
