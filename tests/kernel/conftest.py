"""Shared fixtures for the kernel tests. They run as root inside the VM with
kproxy already loaded and KPROXY_KO naming the module for this kernel (see
docs/CONTRACT.md); a test that unloads the module must reload it, and the
session fixture makes sure it is loaded again before the next test."""
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "vm"))
from kmsg import bad_lines  # noqa: E402
from util import tcp_pair  # noqa: E402


def is_loaded() -> bool:
    return any(line.split()[0] == "kproxy" for line in Path("/proc/modules").read_text().splitlines())


def ko_path() -> Path:
    ko = os.environ.get("KPROXY_KO")
    if not ko:
        pytest.fail("KPROXY_KO is not set: kernel tests run in the VM via `make test-kernel`")
    return Path(ko)


def load() -> None:
    subprocess.run(["insmod", str(ko_path())], check=True)


def unload() -> None:
    subprocess.run(["rmmod", "kproxy"], check=True)


@pytest.fixture(scope="session")
def kproxy_ko() -> Path:
    return ko_path()


@pytest.fixture(scope="session", autouse=True)
def first_connections_made():
    """The boot's first TCP connection of each family seeds the hash secret
    under DO_ONCE, and a work item then patches that static key out of
    inet_ehashfn/inet6_ehashfn. Under QEMU's multi-threaded TCG another
    vCPU can still run a stale int3 of the patch and Oops (seen once on 6.12,
    in inet6_ehashfn, when test_concurrency's threads made the boot's first
    IPv6 connections); on hardware text_poke_bp makes this safe. So the
    first connections are made here, alone, and the work given a moment."""
    for host in ("127.0.0.1", "::1"):
        for s in tcp_pair(host):
            s.close()
    time.sleep(1)


@pytest.fixture(autouse=True)
def kproxy_loaded():
    """Every test starts and ends with the module loaded."""
    if not is_loaded():
        load()
    yield
    if not is_loaded():
        load()


class KernelLog:
    """The kernel log from the moment the fixture was made, via /dev/kmsg
    (whose readers each keep their own position, unlike `dmesg -c`, so the
    harness still sees every line afterwards)."""

    def __init__(self):
        self._fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
        os.lseek(self._fd, 0, os.SEEK_END)

    def lines(self) -> list[str]:
        """New messages since the last call (text only, no kmsg prefix)."""
        out = []
        while True:
            try:
                rec = os.read(self._fd, 8192).decode(errors="replace")
            except BlockingIOError:
                return out
            except BrokenPipeError:  # ring buffer overwrote unread records
                continue
            # "prio,seq,time,flags;text\n" then continuation lines
            out.append(rec.split(";", 1)[1].split("\n", 1)[0])

    def bad(self) -> list[str]:
        return bad_lines("\n".join(self.lines()))

    def close(self):
        os.close(self._fd)


@pytest.fixture
def dmesg():
    log = KernelLog()
    yield log
    log.close()


@pytest.fixture
def say(capsys):
    """Print to the console even though pytest captures output: seeds and
    figures belong in the VM's console.log, pass or fail."""

    def say(msg: str) -> None:
        with capsys.disabled():
            print(f"\n    {msg}", flush=True)

    return say
