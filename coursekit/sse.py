"""Server-Sent Events read line by line, for the step 06 lesson kit and grader (one parser, two readers).

The rules both need (WHATWG HTML, "event stream interpretation"): `event:` names the event ("message" when
absent), `data:` lines are joined with newlines, one space after the colon is dropped, a line starting with
`:` is a comment (FastAPI's keep-alive pings), a blank line dispatches the event, and an event without data
is not dispatched. `data` comes back parsed as JSON when it is JSON (FastAPI's `ServerSentEvent` always
JSON-encodes it), else as text.

The reader keeps control of the line iterator, so a caller can stop early (leave after the first delta) or
bound the whole stream (a stream of pings only never dispatches an event).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

__all__ = ["events"]


def _data(lines: list[str]) -> Any:
    raw = "\n".join(lines)
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def events(lines: Iterable[str]) -> Iterator[tuple[str, Any]]:
    """(event name, data) for each dispatched event of `lines` (e.g. `httpx.Response.iter_lines()`)."""
    name, data = None, []
    for line in lines:
        if line == "":
            if data:
                yield name or "message", _data(data)
            name, data = None, []
        elif line.startswith(":"):
            continue
        else:
            field_name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field_name == "event":
                name = value
            elif field_name == "data":
                data.append(value)
