"""Every lesson notebook runs offline, top to bottom, against the simulator (nbval)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from coursekit import REPO_ROOT, manifest

READY = [s for s in manifest.load().steps if s.status == "ready"]


@pytest.mark.parametrize("step", READY, ids=[s.id for s in READY])
def test_lesson_notebook_runs(step, tmp_path):
    nb = REPO_ROOT / "steps" / step.folder / step.notebook
    assert nb.exists(), f"{nb.relative_to(REPO_ROOT)} 가 없습니다"
    env = {k: v for k, v in os.environ.items() if k not in ("GOOGLE_GEMINI_BASE_URL", "GOOGLE_API_KEY")}
    env["MPLBACKEND"] = "Agg"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "nbval", "--nbval-lax", "-p", "no:cacheprovider", "-q",
         "--nbval-cell-timeout", "300", "-o", f"cache_dir={tmp_path}", str(nb)],
        cwd=nb.parent, env=env, capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL,
    )
    out = proc.stdout + proc.stderr
    print(out[-3000:])
    assert proc.returncode == 0, out[-6000:]
