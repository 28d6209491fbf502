"""`make run`'s demo (tests/vm/demo.py) passes against the real module: it
checks what it shows (bytes by sha256, counters, the list, /proc, events)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from util import PROCESS_START_TIMEOUT, kp  # noqa: F401

REPO = Path(__file__).resolve().parents[2]


def test_demo_shows_the_main_job_and_checks_it(kp):  # noqa: F811 - ends what it leaves
    r = subprocess.run([sys.executable, str(REPO / "tests/vm/demo.py")], cwd=REPO,
                       env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True,
                       text=True, timeout=4 * PROCESS_START_TIMEOUT)
    print(r.stdout, r.stderr)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert r.stdout.rstrip().endswith("DEMO OK")
    for shown in ("$ kpctl create --listen 127.0.0.1:", "$ kpctl list", "$ kpctl stats",
                  "ok: its counters are the bytes sent", "ok: events: new and del of proxy",
                  "ok: the kept message came back", "== destroy"):
        assert shown in r.stdout, shown
    assert "Traceback" not in r.stdout + r.stderr
