"""Namespaces, module unload, and the kernel's own YNL client (permissions
are in test_permissions.py)."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from kpctl import Kproxy, spec
from util import (  # noqa: F401
    IO_TIMEOUT,
    assert_pingpong,
    kp,
    listed_ids,
    make_chain,
    proc_ids,
    tcp_pair,
    wait_event,
)

REPO = Path(__file__).resolve().parents[2]


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, timeout=60)


@pytest.fixture
def netns():
    """A fresh named netns; deleted at the end if the test did not."""
    name = f"kpx-{uuid.uuid4().hex[:6]}"
    sh("ip", "netns", "add", name)
    try:
        yield name
    finally:
        if Path(f"/var/run/netns/{name}").exists():
            subprocess.run(["ip", "netns", "del", name], timeout=60)


def test_netns_isolation_and_exit(kp, netns):
    """A proxy belongs to the netns of the netlink socket that made it.

    Its sockets live in the initial netns here (each socket pins its own
    netns, as any socket does), so deleting the owner netns dismantles it
    and pernet exit must end the proxy: the sockets are closed and both
    outer ends see the connection end.
    """
    c1, s1 = tcp_pair()
    c2, s2 = tcp_pair()
    try:
        with Kproxy(netns=netns) as kx:
            p = kx.create(s1, c2)
            assert p.id in listed_ids(kx)
            # Invisible from the initial netns, by netlink and by /proc.
            assert p.id not in listed_ids(kp)
            assert p.id not in proc_ids()
        s1.close()
        c2.close()
        assert_pingpong(c1, s2, b"owned by another namespace")
        out = subprocess.run(["ip", "netns", "exec", netns, "cat", "/proc/net/kproxy"],
                             capture_output=True, text=True, check=True, timeout=60).stdout
        assert [line.split()[0] for line in out.splitlines()[1:]] == [str(p.id)]

        sh("ip", "netns", "del", netns)
        for s in (c1, s2):
            s.settimeout(30)
            try:
                assert s.recv(100) == b""
            except ConnectionResetError:
                pass
        assert p.id not in proc_ids()
    finally:
        for s in (c1, s1, c2, s2):
            s.close()


def test_unload_ends_live_proxies(kp, kproxy_ko):
    n = 100
    chains = [make_chain(kp) for _ in range(n)]
    ids = {c.proxy.id for c in chains}
    for c in chains:
        c.close_inner()
        c.c1.setblocking(False)
        c.s2.setblocking(False)
    stop = threading.Event()

    def traffic() -> None:
        chunk = b"u" * 4096
        while not stop.is_set():
            for c in chains:
                with contextlib.suppress(OSError):
                    c.c1.send(chunk)
                with contextlib.suppress(OSError):
                    c.s2.recv(65536)

    mon = kp.monitor()
    t = threading.Thread(target=traffic, daemon=True)
    t.start()
    try:
        time.sleep(1)
        sh("rmmod", "kproxy")
        reasons = {}
        deadline = time.monotonic() + 60
        while len(reasons) < n and time.monotonic() < deadline:
            ev = mon.get(deadline - time.monotonic())
            if ev is not None and ev.kind == "del" and ev.proxy.id in ids:
                reasons[ev.proxy.id] = ev.reason
        assert set(reasons) == ids, f"{n - len(reasons)} proxies ended without a notification"
        assert set(reasons.values()) == {"unload"}
    finally:
        stop.set()
        t.join(30)
        mon.close()
        for c in chains:
            c.close()
        if not Path("/sys/module/kproxy").exists():
            sh("insmod", str(kproxy_ko))
    with Kproxy() as k2:
        assert k2.list() == []


@pytest.fixture(scope="session")
def ynl_tree() -> Path:
    """tools/net/ynl and the YNL schemas of Debian's linux-source-6.12,
    extracted on the host by `make test` (build/ynl)."""
    tree = REPO / "build/ynl/linux-source-6.12"
    assert (tree / ".stamp").exists(), f"{tree} missing: run the kernel tests through `make test`"
    return tree


def test_kernel_ynl_cli_dumps_our_proxies(kp, ynl_tree):
    ch = make_chain(kp)
    try:
        cmd = [sys.executable, str(ynl_tree / "tools/net/ynl/cli.py"),
               "--spec", str(spec.schema_path()), "--dump", "proxy-get",
               "--schema", str(ynl_tree / "Documentation/netlink/genetlink-legacy.yaml")]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        assert f"'id': {ch.proxy.id}" in r.stdout, r.stdout
    finally:
        ch.close()
