"""The VM harness's judgement, tested on the host without booting anything."""
import importlib.util
import sys
from pathlib import Path

VM_DIR = Path(__file__).resolve().parents[1] / "vm"
sys.path.insert(0, str(VM_DIR))
spec = importlib.util.spec_from_file_location("harness", VM_DIR / "run.py")
harness = importlib.util.module_from_spec(spec)
spec.loader.exec_module(harness)

from kmsg import bad_lines  # noqa: E402

SPLAT = """\
[   12.000001] kproxy: loaded
[   12.500000] ------------[ cut here ]------------
[   12.500001] WARNING: CPU: 1 PID: 311 at /work/main/build/x/main.c:10 kproxy_init+0x1a/0x30 [kproxy]
[   12.500002] Call Trace:
[   13.000000] refcount_t: underflow; use-after-free.
[   13.100000] list_del corruption, ffff8880 ->next is LIST_POISON1
[   13.200000] kmemleak: 2 new suspected memory leaks
[   13.300000] BUG: kernel NULL pointer dereference, address: 0000000000000000
[   13.400000] Oops: 0000 [#1] PREEMPT SMP NOPTI
[   13.500000] BUG: KASAN: slab-use-after-free in kproxy_del
"""

CLEAN = """\
[    1.000000] kproxy: loaded
[    1.100000] usb: registered new interface driver DEBUG-free
[    1.200000] kproxy: loading out-of-tree module taints kernel.
"""

JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest"
 errors="1" failures="2" skipped="1" tests="10" time="1.0"></testsuite></testsuites>"""


def test_scanner_keeps_every_bad_line_whole():
    bad = bad_lines(SPLAT)
    assert bad == SPLAT.splitlines()[2:]


def test_scanner_ignores_clean_log():
    assert bad_lines(CLEAN) == []


def test_junit_counts_errors_as_failures(tmp_path):
    f = tmp_path / "junit.xml"
    f.write_text(JUNIT)
    assert harness.junit_counts(f) == (6, 3, 1)


def test_summary_names_skips(tmp_path):
    write_results(tmp_path, junit=JUNIT.replace('errors="1" failures="2"', 'errors="0" failures="0"'))
    r = harness.judge("kernel 6.1", tmp_path)
    assert (r.passed, r.skipped, r.failed) == (9, 1, 0)
    assert r.summary() == "kernel 6.1: 9 passed, 1 skipped, 0 failed"


def write_results(d: Path, status="insmod=0 pytest=0 rmmod=0", dmesg=CLEAN, junit=None):
    d.mkdir(exist_ok=True)
    if status is not None:
        (d / "status").write_text(status.replace(" ", "\n") + "\n")
    if dmesg is not None:
        (d / "dmesg.txt").write_text(dmesg)
    (d / "junit.xml").write_text(junit or JUNIT.replace('errors="1" failures="2" skipped="1"',
                                                        'errors="0" failures="0" skipped="0"'))


def test_judge_clean_run(tmp_path):
    write_results(tmp_path)
    r = harness.judge("kernel 6.1", tmp_path)
    assert (r.passed, r.failed, r.problems) == (10, 0, [])
    assert r.summary() == "kernel 6.1: 10 passed, 0 failed"


def test_judge_dmesg_splat_fails_and_prints_lines(tmp_path):
    write_results(tmp_path, dmesg=SPLAT)
    r = harness.judge("kernel 6.1", tmp_path)
    assert r.failed == 1
    assert SPLAT.splitlines()[2] in r.problems


def test_judge_no_status_is_a_failed_boot(tmp_path):
    (tmp_path / "console.log").write_text(SPLAT)
    r = harness.judge("kernel 6.1", tmp_path)
    assert r.failed == 2 and "did not boot" in r.problems[0]
    assert SPLAT.splitlines()[-1] in r.problems


def test_judge_timeout_mid_tests_scans_console(tmp_path):
    write_results(tmp_path, status="insmod=0", dmesg=None)
    (tmp_path / "junit.xml").unlink()
    (tmp_path / "console.log").write_text(SPLAT)
    r = harness.judge("kernel 6.1", tmp_path)
    assert r.problems[:2] == ["pytest did not finish", "no dmesg.txt: the guest stopped before the end"]
    assert r.failed == 3 and SPLAT.splitlines()[2] in r.problems


def test_judge_failed_steps(tmp_path):
    write_results(tmp_path, status="insmod=1 pytest=5 rmmod=1", dmesg=None)
    r = harness.judge("kernel 6.1", tmp_path)
    # insmod, pytest with nothing failed, rmmod, missing dmesg
    assert r.failed == 4


def test_vm_command_tcg(monkeypatch):
    vm = harness.VM("2G", 4, "tcg")
    c = vm.cmd(harness.Target.installed("6.12.1").image, "true", ["/x/results"])
    assert c[1:3] == ["-r", "/boot/vmlinuz-6.12.1"]
    assert "--disable-kvm" in c
    assert c[c.index("-m") + 1] == "2G" and c[c.index("-p") + 1] == "4"
    assert c[c.index("--rwdir") + 1] == "/x/results"
    assert c[-2:] == ["--exec", "true"]
    assert "--disable-kvm" not in harness.VM("1G", 2, "kvm").cmd(Path("/boot/vmlinuz-6.12.1"))


KMEMLEAK = """\
unreferenced object 0xffff888004a1c000 (size 1024):
  comm "python", pid 312, jiffies 4294893000
  backtrace (crc 0):
    kmalloc_trace+0x25/0x90
    kproxy_create+0x3c/0x4d0 [kproxy]
"""


def test_judge_kmemleak_report_fails_with_its_lines(tmp_path):
    write_results(tmp_path)
    (tmp_path / "kmemleak.txt").write_text(KMEMLEAK)
    r = harness.judge("debug kernel", tmp_path)
    assert r.failed == 1
    assert "kmemleak reports 1 unreferenced objects" in r.problems[0]
    assert any("kproxy_create" in p for p in r.problems)


def test_judge_empty_kmemleak_scan_is_clean(tmp_path):
    write_results(tmp_path)
    (tmp_path / "kmemleak.txt").write_text("")
    assert harness.judge("debug kernel", tmp_path).failed == 0


def test_debug_target_boots_the_built_image_with_its_own_module():
    t = harness.Target.debug(Path("/cache/linux"))
    assert t.image == Path("/cache/linux/arch/x86/boot/bzImage")
    assert t.ko.parts[-3:] == ("build", "debug", "kproxy.ko")
    assert t.results.parts[-3:] == ("build", "debug", "results")
    c = harness.VM("2G", 1, "tcg").cmd(t.image, "true", kernel_args=t.kernel_args)
    assert c[c.index("--append") + 1] == "no5lvl"


def test_kernels_sort_by_version_not_by_text():
    kvers = ["7.2.13-kproxy", "6.12.118+deb12-amd64", "6.1.0-57-amd64", "6.9.2-1"]
    assert sorted(kvers, key=harness.version_key) == [
        "6.1.0-57-amd64", "6.9.2-1", "6.12.118+deb12-amd64", "7.2.13-kproxy"]


def test_built_kernel_image_beside_its_modules_wins_over_boot(tmp_path):
    beside = tmp_path / "lib/modules/7.2.13-kproxy/vmlinuz"
    beside.parent.mkdir(parents=True)
    beside.write_bytes(b"image")
    assert harness.kernel_image("7.2.13-kproxy", tmp_path) == beside
    assert harness.kernel_image("6.1.0-57-amd64", tmp_path) == tmp_path / "boot/vmlinuz-6.1.0-57-amd64"


def test_a_kernel_that_dies_while_booting_is_booted_once_more(tmp_path, monkeypatch):
    """A boot that dies before the guest script starts (no dmesg-boot.txt)
    is retried once, its console kept; a boot that reached the script is
    judged as it is, and a second dead boot fails the kernel."""
    image, ko = tmp_path / "vmlinuz", tmp_path / "kproxy.ko"
    image.write_text("")
    ko.write_text("")
    t = harness.Target("kernel x", image, ko, tmp_path / "results")
    boots = []

    def fake_run(cmd, timeout, log, echo=True):
        boots.append(cmd)
        if len(boots) == 1 or dies_twice:
            log.write_text("[    1.8] Oops: int3: 0000 [#1] PREEMPT SMP NOPTI\n")
            return 255, 5.0
        write_results(t.results)
        (t.results / "dmesg-boot.txt").write_text("")
        return 0, 60.0

    monkeypatch.setattr(harness, "run_logged", fake_run)
    vm = harness.VM("1G", 2, "tcg")
    dies_twice = False
    r = harness.test_kernel(vm, t, 600, [], False)
    assert len(boots) == 2 and r.failed == 0 and r.passed > 0
    assert "Oops: int3" in (tmp_path / "console-failed-boot-1.log").read_text()

    boots.clear()
    dies_twice = True
    r = harness.test_kernel(vm, t, 600, [], False)
    assert len(boots) == 2 and r.failed >= 1
    assert any("did not boot" in p for p in r.problems)
