"""Settings the step 06 solution refuses at start, with a Korean message naming the variables (the service fails
fast instead of running misconfigured). Runs the solution's own module in a subprocess, from an empty directory
(no .env), with the repository's Python."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STEP06 = ROOT / "solutions" / "06-optimization"


def start(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("REQUEST_", "FALLBACK_"))}
    full.update({"GOOGLE_API_KEY": "sim-any-key", "SERVICE_API_KEY": "lab-service-key", "LOG_DIR": str(tmp_path),
                 "PYTHONPATH": str(STEP06)}, **env)
    return subprocess.run([sys.executable, "-c", "import main; print(main.settings.request_deadline_seconds)"],
                          cwd=tmp_path, env=full, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("env, starts", [
    ({"REQUEST_DEADLINE_SECONDS": "1.0"}, False),                                   # 1.0 - 0.8 = 0.2 s < 0.3 s
    ({"REQUEST_DEADLINE_SECONDS": "1.0", "FALLBACK_RESERVE_SECONDS": "0.5"}, True),  # 0.5 s for the primary
    ({"REQUEST_DEADLINE_SECONDS": "1.0", "FALLBACK_MODEL": ""}, True),              # no fallback: no reserve
    ({"REQUEST_DEADLINE_SECONDS": "2.2"}, True),                                    # the grader's setting
], ids=["reserve-leaves-no-attempt", "smaller-reserve", "no-fallback", "grader-deadline"])
def test_the_primary_model_always_gets_an_attempt(tmp_path, env, starts):
    """FALLBACK_RESERVE_SECONDS that leaves the primary model less than one attempt (MIN_ATTEMPT_SECONDS) would send
    every request silently to the fallback: the service does not start, and the error shows only that value."""
    r = start(tmp_path, **env)
    if starts:
        assert r.returncode == 0, r.stderr[-2000:]
        return
    assert r.returncode != 0, f"started with {env}: {r.stdout}"
    assert "FALLBACK_RESERVE_SECONDS" in r.stderr and "주 모델을 부르지 못합니다" in r.stderr, r.stderr[-2000:]
    assert "sim-any-key" not in r.stderr and "lab-service-key" not in r.stderr, "a key in the start-up error"
