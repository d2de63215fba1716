"""Locust's final statistics, read from its `--json-file` output (the grader and the lessons use this).

Locust rewrites its `--csv` files once a second while it runs and does not rewrite them at the end,
so the CSV misses the last second of a run: measured here, a 3 s run at about 40 requests per second
served 110 requests and the CSV's Aggregated row said 78. The JSON file is written once, when the run
ends, with every request: its per-endpoint rows carry the counts and the table of rounded response
times (ms -> count) from which Locust computes its own percentiles.

    >>> stats = read("run.json", seconds=10)
    >>> stats["Aggregated"].requests, stats["Aggregated"].p95
"""

from __future__ import annotations

import ast
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Entry", "percentile", "summarize", "read"]


@dataclass(frozen=True)
class Entry:
    requests: int
    failures: int
    rps: float
    p50: float  # seconds
    p95: float
    p99: float


def percentile(times: Mapping[int, int], total: int, q: float) -> float:
    """Locust's own percentile (locust.stats.calculate_response_time_percentile) of its table of
    rounded response times in ms, returned in seconds."""
    wanted, seen = int(total * q), 0
    for ms in sorted(times, reverse=True):
        seen += times[ms]
        if total - seen <= wanted:
            return ms / 1000
    return 0.0


def _times(raw: Any) -> dict[int, int]:
    # Locust writes the table as a dict, or (some versions) as the dict's repr in a string.
    if isinstance(raw, str):
        raw = ast.literal_eval(raw)
    return {int(float(k)): int(v) for k, v in (raw or {}).items()}


def _entry(requests: int, failures: int, times: Mapping[int, int], seconds: float) -> Entry:
    return Entry(requests, failures, requests / seconds if seconds > 0 else float("nan"),
                 percentile(times, requests, 0.50), percentile(times, requests, 0.95), percentile(times, requests, 0.99))


def _duration(rows: list[Mapping[str, Any]], seconds: float) -> float:
    """Locust's own denominator of requests/s: first request start to last request (else `seconds`)."""
    starts = [r["start_time"] for r in rows if r.get("start_time")]
    ends = [r["last_request_timestamp"] for r in rows if r.get("last_request_timestamp")]
    if starts and ends and max(ends) > min(starts):
        return max(ends) - min(starts)
    return seconds


def summarize(rows: Iterable[Mapping[str, Any]], seconds: float) -> dict[str, Entry]:
    """{"<METHOD> <name>": Entry, ..., "Aggregated": Entry} from the rows of Locust's JSON file.
    requests/s is Locust's own: over the span from the first request to the last one (`seconds`
    when the rows do not say)."""
    rows = list(rows)
    seconds = _duration(rows, seconds)
    out: dict[str, Entry] = {}
    everything: dict[int, int] = {}
    requests = failures = 0
    for row in rows:
        times = _times(row.get("response_times"))
        for ms, n in times.items():
            everything[ms] = everything.get(ms, 0) + n
        requests += int(row.get("num_requests", 0))
        failures += int(row.get("num_failures", 0))
        key = f"{row.get('method') or ''} {row.get('name')}".strip()
        out[key] = _entry(int(row.get("num_requests", 0)), int(row.get("num_failures", 0)), times, seconds)
    out["Aggregated"] = _entry(requests, failures, everything, seconds)
    return out


def read(path: str | Path, seconds: float) -> dict[str, Entry]:
    """The final statistics of a run whose `--json-file` was `path` (without or with `.json`)."""
    path = Path(path)
    if path.suffix != ".json":
        path = path.with_name(path.name + ".json")
    return summarize(json.loads(path.read_text(encoding="utf-8")), seconds)
