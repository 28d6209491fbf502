"""The installed product, used as a user would use it: the DKMS module
loaded by `modprobe kproxy`, /usr/local/bin/kpctl run from / with nothing
but PATH in its environment.

tests/vm/run.py --install (make test, make test-kernel) runs `make install`
on the host before the VM boots and `make uninstall` after, checking that
nothing is left; the VM sees the host's /lib/modules, /usr/local and /opt.
The harness loaded the build tree's module (KPROXY_KO) at boot: these tests
swap in the installed one and put the build tree's back afterwards, so the
tests after them run as before.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
from pathlib import Path

import pytest

from conftest import is_loaded, load, unload
from kpctl import procfs
from util import IO_TIMEOUT, PROCESS_START_TIMEOUT, recv_exact, tcp_pair

KPCTL = Path("/usr/local/bin/kpctl")
CLEAN_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}  # as `env -i PATH=...`
KVER = os.uname().release
MAN_PAGE = "/usr/local/share/man/man1/kpctl.1"
COMPLETION = "/usr/local/share/bash-completion/completions/kpctl"

pytestmark = pytest.mark.skipif(
    os.environ.get("KPROXY_TEST_DEBUG_KERNEL") == "1",
    reason="the debug kernel is not in /lib/modules: DKMS cannot install for it")


def system(*cmd: str) -> str:
    """A system command's output (it must succeed)."""
    r = subprocess.run(cmd, cwd="/", env=CLEAN_ENV, capture_output=True, text=True,
                       stdin=subprocess.DEVNULL, timeout=120)
    assert r.returncode == 0, f"{cmd}: exit {r.returncode}\n{r.stdout}{r.stderr}"
    return r.stdout


def kpctl(*args: str, pass_fds: tuple[int, ...] = (), rc: int = 0) -> str:
    """/usr/local/bin/kpctl ARGS from /, clean environment; its stdout."""
    r = subprocess.run([str(KPCTL), *args], cwd="/", env=CLEAN_ENV, pass_fds=pass_fds,
                       capture_output=True, text=True, stdin=subprocess.DEVNULL,
                       timeout=PROCESS_START_TIMEOUT)
    assert "Traceback" not in r.stderr, r.stderr
    assert r.returncode == rc, f"kpctl {' '.join(args)}: exit {r.returncode}\n{r.stdout}{r.stderr}"
    return r.stdout if rc == 0 else r.stderr


@pytest.fixture(scope="module", autouse=True)
def installed_module():
    """The DKMS module in place of the build tree's, which is back afterwards."""
    if not KPCTL.exists():
        pytest.fail(f"{KPCTL} missing: kproxy is not installed on the host (tests/vm/run.py "
                    "--install, as make test and make test-kernel pass it, runs make install)")
    assert procfs.read_proxies() == [], "proxies live before the swap: the test would end them"
    unload()
    try:
        system("modprobe", "kproxy")
        yield
    finally:
        if is_loaded():
            unload()
        load()


def test_modprobe_loads_this_checkouts_module_from_dkms(kproxy_ko):
    path = system("modinfo", "-n", "kproxy").strip()
    assert path.startswith(f"/lib/modules/{KVER}/updates/"), path
    assert Path(path).name.startswith("kproxy.ko"), path
    # The loaded module is that file, built by DKMS from this checkout's sources.
    loaded = Path("/sys/module/kproxy/srcversion").read_text().strip()
    assert loaded == system("modinfo", "-F", "srcversion", path).strip()
    assert loaded == system("modinfo", "-F", "srcversion", str(kproxy_ko)).strip()


def test_installed_kpctl_creates_attaches_and_destroys():
    assert json.loads(kpctl("-j", "list")) == []
    c1, s1 = tcp_pair()
    c2, s2 = tcp_pair()
    try:
        out = kpctl("-j", "create", "--fd", str(s1.fileno()), "--fd", str(c2.fileno()),
                    pass_fds=(s1.fileno(), c2.fileno()))
        pid = json.loads(out)["id"]
        c1.sendall(b"through the installed kproxy")
        assert recv_exact(s2, 28) == b"through the installed kproxy"

        # Shipped programs by name, from the installed package's data.
        attached = json.loads(kpctl("-j", "attach", str(pid), "parser", "lenprefix"))
        source = Path(attached["prog"]["source"])
        assert source.is_relative_to("/opt/kproxy"), source
        assert source.parts[-4:] == ("kpctl", "data", "bpf", "lenprefix.o"), source
        kpctl("attach", str(pid), "verdict", "drop-prefix", "--prefix", "DROP",
              "--dir", "a-to-b")
        dropped, kept = b"DROP this", b"keep this"
        c1.sendall(struct.pack(">I", len(dropped)) + dropped
                   + struct.pack(">I", len(kept)) + kept)
        assert recv_exact(s2, 4 + len(kept)) == struct.pack(">I", len(kept)) + kept

        assert [p["id"] for p in json.loads(kpctl("-j", "list"))] == [pid]
        assert json.loads(kpctl("-j", "destroy", str(pid))) == {"destroyed": [pid]}
        assert json.loads(kpctl("-j", "list")) == []
    finally:
        for s in (c1, s1, c2, s2):
            s.close()


def test_installed_kpctl_filters_http_with_its_shipped_programs():
    """http and http-filter from the installed package, by name, with a
    rule given as an option: an allowed request reaches the backend byte
    for byte, a denied one gets the canned 403 and a close, and the
    backend gets a FIN in its place."""
    c1, s1 = tcp_pair()
    c2, s2 = tcp_pair()
    for s in (c1, s2):
        s.settimeout(IO_TIMEOUT)
    try:
        pid = json.loads(kpctl("-j", "create", "--fd", str(s1.fileno()), "--fd", str(c2.fileno()),
                               pass_fds=(s1.fileno(), c2.fileno())))["id"]
        kpctl("attach", str(pid), "parser", "http")
        kpctl("attach", str(pid), "verdict", "http-filter", "--dir", "a-to-b",
              "--deny-path", "/admin")
        allowed = b"GET /public HTTP/1.1\r\nHost: example\r\n\r\n"
        c1.sendall(allowed)
        assert recv_exact(s2, len(allowed)) == allowed
        response = b"HTTP/1.1 204 No Content\r\n\r\n"
        s2.sendall(response)
        assert recv_exact(c1, len(response)) == response
        c1.sendall(b"GET /admin/x HTTP/1.1\r\nHost: example\r\n\r\n")
        assert s2.recv(100) == b""  # the FIN, and not a byte of the request
        s2.close()
        reply = b""
        while chunk := c1.recv(4096):
            reply += chunk
        assert reply.startswith(b"HTTP/1.1 403 Forbidden\r\n"), reply
    finally:
        for s in (c1, s1, c2, s2):
            s.close()


def test_man_page_and_completion_are_found():
    assert system("man", "-w", "kpctl").strip() == MAN_PAGE
    out = system("bash", "-c", f". {COMPLETION} && complete -p kpctl")
    assert out.strip().endswith(" kpctl"), out


def test_no_autoload_once_unloaded():
    """Installed, the module is not loaded by a lookup of its family (it
    declares no MODULE_ALIAS_GENL_FAMILY): tests that expect 'module not
    loaded' keep getting it."""
    unload()
    err = kpctl("list", rc=2)
    assert err.startswith("Error: kproxy module not loaded"), err
    assert not is_loaded()
