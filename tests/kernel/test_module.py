"""The module's skeleton: the genetlink family, /proc/net/kproxy in every
netns, and clean unload/reload."""
import subprocess
import uuid
from pathlib import Path

import pytest
from pyroute2.netlink import genlmsg
from pyroute2.netlink.generic import GenericNetlinkSocket

from conftest import is_loaded, load, unload

PROC = Path("/proc/net/kproxy")
# docs/CONTRACT.md: the header names these columns first (more may follow).
COLUMNS = ("id state a_local a_remote b_local b_remote ab_bytes ab_skbs ab_msgs "
           "ab_drops ab_queued ba_bytes ba_skbs ba_msgs ba_drops ba_queued created").split()


def genl_get() -> subprocess.CompletedProcess:
    return subprocess.run(["genl", "ctrl", "get", "name", "kproxy"], capture_output=True, text=True)


@pytest.fixture
def netns():
    name = f"kp-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    yield name
    subprocess.run(["ip", "netns", "del", name], check=True)


def test_family_resolves():
    """pyroute2 (an outside client) and kpctl's own CTRL_CMD_GETFAMILY agree."""
    from kpctl import Kproxy

    with GenericNetlinkSocket() as s:
        s.bind("kproxy", genlmsg)
        assert s.prid > 0
        assert "monitor" in s.mcast_groups
        assert s.discovery("kproxy").get_attr("CTRL_ATTR_VERSION") == 1
        with Kproxy() as kp:
            assert kp.family_id == s.prid
            assert kp.version == 1
            assert kp.mcast_groups == dict(s.mcast_groups)


def test_library_reports_a_missing_module():
    from kpctl import Kproxy, KproxyError

    unload()
    try:
        with pytest.raises(KproxyError) as ei:
            Kproxy()
        assert ei.value.errno == 2
        assert str(ei.value) == "kproxy module not loaded (family 'kproxy' not found) (ENOENT)"
    finally:
        load()


def test_genl_ctrl_shows_family():
    out = genl_get()
    assert out.returncode == 0, out.stderr
    assert "Name: kproxy" in out.stdout
    assert "Version: 0x1" in out.stdout
    assert "monitor" in out.stdout


def test_proc_header_initial_netns():
    header = PROC.read_text().splitlines()[0].split()
    assert header[:len(COLUMNS)] == COLUMNS


def test_proc_header_new_netns(netns):
    out = subprocess.run(["ip", "netns", "exec", netns, "cat", str(PROC)],
                         capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[0].split()[:len(COLUMNS)] == COLUMNS


def test_rmmod_removes_family_and_proc(netns):
    unload()
    assert not is_loaded()
    assert genl_get().returncode != 0
    assert not PROC.exists()
    ns = subprocess.run(["ip", "netns", "exec", netns, "test", "-e", str(PROC)])
    assert ns.returncode != 0
    load()
    assert PROC.exists() and genl_get().returncode == 0


def test_reload_cycles_clean(dmesg):
    for _ in range(50):
        unload()
        load()
    assert dmesg.bad() == []
