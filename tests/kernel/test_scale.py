"""A thousand proxies at once: dump, /proc, destroy."""

from __future__ import annotations

import json
import os
import resource
import shlex
import socket
import subprocess
import sys
from pathlib import Path

from util import IO_TIMEOUT, kp, listed_ids, proc_ids, proc_proxies  # noqa: F401

N = 1000
REPO = Path(__file__).resolve().parents[2]


def test_thousand_proxies(kp):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 4 * N + 256  # c1 and s2 stay open: 2 per proxy, plus slack
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard) if hard != resource.RLIM_INFINITY else want, hard))
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(128)
    ls.settimeout(IO_TIMEOUT)
    addr = ls.getsockname()
    outer: list[socket.socket] = []
    ids: set[int] = set()
    try:
        for _ in range(N):
            c1 = socket.create_connection(addr, timeout=IO_TIMEOUT)
            s1, _ = ls.accept()
            c2 = socket.create_connection(addr, timeout=IO_TIMEOUT)
            s2, _ = ls.accept()
            ids.add(kp.create(s1, c2).id)
            # The proxy holds its own references; keep fd use low.
            s1.close()
            c2.close()
            outer += [c1, s2]
        assert len(ids) == N
        listed = kp.list()
        assert len(listed) == N
        assert {p.id for p in listed} == ids
        assert len(proc_proxies()) == N and proc_ids() == ids
        # What an operator pipes: `kpctl -j list | python3 -m json.tool`.
        py = shlex.quote(sys.executable)
        r = subprocess.run(["bash", "-o", "pipefail", "-c",
                            f"{py} -m kpctl.cli -j list | {py} -m json.tool"],
                           capture_output=True, text=True, timeout=300, cwd=REPO,
                           env=dict(os.environ, PYTHONPATH=str(REPO)))
        assert r.returncode == 0, r.stderr
        assert {p["id"] for p in json.loads(r.stdout)} == ids
        for pid in ids:
            kp.destroy(pid)
        assert listed_ids(kp) == set()
        assert proc_ids() == set()
    finally:
        for s in outer:
            s.close()
        ls.close()
