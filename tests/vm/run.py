#!/usr/bin/env python3
"""Boot kernels with virtme-ng and run kproxy's kernel tests inside them.

  run.py test [--host] [--install] [--kver K ...]
                                        host tests (optional), then one VM boot
                                        per kernel running tests/kernel; with
                                        --install, `make install` before the
                                        boots (tests/kernel/test_install.py
                                        uses it) and `make uninstall` after,
                                        checked to leave nothing behind
  run.py test --debug-kernel DIR        the same on the kernel built in DIR by
                                        tests/vm/build-kernel.sh (make test-debug)
  run.py run [--kver K]                 load the module and start kpctl: on this
                                        kernel if it can load modules, else in a VM

The guest sees this checkout read-only (vng shares the host's root) and
writes only to build/<kver>/results/. The host judges each kernel by the
pytest junit file, the guest's step statuses and the kernel log.
"""
import argparse
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from kmsg import bad_lines  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = ROOT / ".venv" / "bin"
# vng runs its helpers (virtme-run, ...) from PATH.
VM_ENV = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
KVM_PROBE_TIMEOUT = 20  # a working KVM boots `true` in a few seconds
# Boots per kernel: one more when the kernel dies before the guest script
# starts, which is the boot's failure, not the tests'.
BOOTS = 2

# What `make install` puts on the host besides /usr/src/kproxy-<version> and
# the DKMS modules: `make uninstall` must take all of it away.
INSTALLED_PATHS = ("/opt/kproxy", "/usr/local/bin/kpctl", "/usr/local/share/man/man1/kpctl.1",
                   "/usr/local/share/bash-completion/completions/kpctl", "/var/lib/dkms/kproxy")


@dataclass
class Result:
    name: str
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    problems: list[str] = field(default_factory=list)

    def fail(self, why: str) -> None:
        """Count a failure that is not a pytest test (boot, dmesg, rmmod)."""
        self.failed += 1
        self.problems.append(why)

    def summary(self) -> str:
        return f"{self.name}: {counts(self.passed, self.failed, self.skipped)}"


@dataclass
class Target:
    """A kernel to boot and the module built for it."""
    name: str
    image: Path
    ko: Path
    results: Path
    kernel_args: tuple[str, ...] = ()

    @classmethod
    def installed(cls, kver: str) -> "Target":
        return cls(f"kernel {kver}", kernel_image(kver),
                   ROOT / "build" / kver / "kproxy.ko", ROOT / "build" / kver / "results")

    @classmethod
    def debug(cls, kdir: Path) -> "Target":
        # no5lvl: with 5-level paging (qemu's TCG CPU has LA57) an interrupt
        # during early boot trips KASAN in the kernel's own IRQ code, and the
        # taint turns lockdep off for the whole run.
        return cls("debug kernel", kdir / "arch/x86/boot/bzImage",
                   ROOT / "build" / "debug" / "kproxy.ko", ROOT / "build" / "debug" / "results",
                   ("no5lvl",))


def kernel_image(kver: str, root: Path = Path("/")) -> Path:
    """Where the image of an installed kernel is: /boot for Debian's
    packages, beside its modules for those tests/vm/build-kernel.sh
    installs (out of the bootloader's sight)."""
    beside = root / "lib/modules" / kver / "vmlinuz"
    return beside if beside.exists() else root / "boot" / f"vmlinuz-{kver}"


def installed_kernels() -> list[str]:
    """Kernels we can both build for (headers) and boot (an image), oldest first."""
    kvers = [p.parent.name for p in Path("/lib/modules").glob("*/build")
             if kernel_image(p.parent.name).exists()]
    return sorted(kvers, key=version_key)


def version_key(kver: str) -> tuple:
    """6.1.0-57-amd64 < 6.12.118+deb12-amd64 < 7.2.13-kproxy, numerically."""
    return tuple(int(n) for n in re.match(r"[\d.]*", kver).group().split(".") if n)


def counts(passed: int, failed: int, skipped: int) -> str:
    """Skips are named whenever there are any: a skipped test proved nothing."""
    return f"{passed} passed, " + (f"{skipped} skipped, " if skipped else "") + f"{failed} failed"


def junit_counts(path: Path) -> tuple[int, int, int]:
    """(passed, failed, skipped) from a pytest junit file; errors count as failures."""
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    total = failed = skipped = 0
    for s in suites:
        total += int(s.get("tests", 0))
        failed += int(s.get("failures", 0)) + int(s.get("errors", 0))
        skipped += int(s.get("skipped", 0))
    return total - failed - skipped, failed, skipped


def parse_status(text: str) -> dict[str, int]:
    """The guest's `step=rc` lines."""
    return {k: int(v) for k, v in (l.split("=", 1) for l in text.split() if "=" in l)}


def judge(name: str, results: Path) -> Result:
    """Everything the guest left in results/, turned into pass/fail counts."""
    r = Result(name)
    status_file = results / "status"
    status = parse_status(status_file.read_text()) if status_file.exists() else {}
    if not status:
        r.fail("VM did not boot or crashed before loading the module (see console.log)")
    elif status["insmod"] != 0:
        r.fail(f"insmod failed ({status['insmod']})")
    junit = results / "junit.xml"
    passed, failed, skipped = junit_counts(junit) if junit.exists() else (0, 0, 0)
    r.passed += passed
    r.failed += failed
    r.skipped += skipped
    if status and status.get("pytest") != 0 and failed == 0:
        r.fail("pytest did not finish" if "pytest" not in status else
               f"pytest exited {status['pytest']} with no failed test (nothing collected?)")
    if status.get("rmmod", 0) != 0:
        r.fail(f"rmmod failed ({status['rmmod']})")
    # Without dmesg.txt (crash, timeout) the console log is the kernel log we have.
    dmesg = results / "dmesg.txt"
    log = dmesg if dmesg.exists() else results / "console.log"
    if status and not dmesg.exists():
        r.fail("no dmesg.txt: the guest stopped before the end")
    bad = bad_lines(log.read_text(errors="replace")) if log.exists() else []
    if bad:
        r.fail(f"kernel log ({log.name}) reports problems:")
        r.problems += bad
    # Written by guest.sh on kernels with kmemleak (the debug kernel).
    leaks = results / "kmemleak.txt"
    if leaks.exists() and leaks.read_text().strip():
        reports = leaks.read_text().count("unreferenced object")
        r.fail(f"kmemleak reports {reports} unreferenced objects ({leaks}):")
        r.problems += leaks.read_text().splitlines()[:40]
    return r


class VM:
    """vng invocations with one accelerator choice per harness run."""

    def __init__(self, memory: str, cpus: int, accel: str):
        self.memory, self.cpus, self.accel = memory, cpus, accel

    def cmd(self, image: Path, exec_cmd: str | None = None, rwdirs=(), verbose=False,
            kernel_args=()) -> list[str]:
        c = [str(VENV_BIN / "vng"), "-r", str(image),
             "-m", self.memory, "-p", str(self.cpus), "--cwd", str(ROOT),
             # 9p directly: virtiofsd is not among our packages, and vng
             # otherwise spends seconds per shared directory waiting for it
             "--force-9p"]
        if self.accel == "tcg":
            c.append("--disable-kvm")
        if verbose:
            c.append("-v")  # kernel console on stdout, for console.log
        for d in rwdirs:
            c += ["--rwdir", str(d)]
        for a in kernel_args:
            c += ["--append", a]
        if exec_cmd is not None:
            c += ["--exec", exec_cmd]
        return c

    def resolve_accel(self, image: Path) -> None:
        """Probe KVM once: some hosts have /dev/kvm but qemu aborts on it
        (e.g. "failed to set MSR" under nested virtualisation)."""
        if self.accel != "auto":
            return
        self.accel = "kvm"
        if os.access("/dev/kvm", os.R_OK | os.W_OK):
            rc, _ = run_logged(self.cmd(image, "true"), KVM_PROBE_TIMEOUT, None, echo=False)
            if rc == 0:
                print("vm: KVM works", flush=True)
                return
        self.accel = "tcg"
        print("vm: KVM unusable here, using TCG (software emulation: slow boots)", flush=True)


def run_logged(cmd: list[str], timeout: float, log: Path | None, echo=True) -> tuple[int, float]:
    """Run cmd in its own process group, killing the whole group (vng and
    qemu) on timeout. Kernel console lines go to the log only; the rest is
    echoed too. Returns (exit status, seconds); 124 on timeout."""
    start = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         stdin=subprocess.DEVNULL, start_new_session=True, cwd=ROOT, env=VM_ENV)
    timed_out = threading.Event()

    def kill():
        timed_out.set()
        os.killpg(p.pid, signal.SIGKILL)

    timer = threading.Timer(timeout, kill)
    timer.start()
    with open(log or os.devnull, "w") as f:
        for raw in p.stdout:
            line = raw.decode(errors="replace")
            f.write(line)
            if echo and not line.startswith("["):
                sys.stdout.write(line)
                sys.stdout.flush()
    p.wait()
    timer.cancel()
    return (124 if timed_out.is_set() else p.returncode), time.monotonic() - start


def test_kernel(vm: VM, t: Target, timeout: float, tests: list[str], long: bool) -> Result:
    for need in (t.image, t.ko):
        if not need.exists():
            r = Result(t.name)
            r.fail(f"{need} missing: run `make` (or `make test-debug`) first")
            return r
    guest = shlex.join(["tests/vm/guest.sh", str(t.ko), str(t.results), *tests])
    for boot in range(1, BOOTS + 1):
        # Stale results from an earlier run must not be judged as this run's.
        for old in t.results.glob("*"):
            old.unlink()
        t.results.mkdir(parents=True, exist_ok=True)
        if long:
            # guest.sh exports KPROXY_TEST_LONG=1: the tests take their full sizes
            (t.results / "long").touch()
        print(f"vm: booting {t.name} ({vm.accel}, {vm.memory}, {vm.cpus} vCPUs)", flush=True)
        rc, secs = run_logged(vm.cmd(t.image, guest, [t.results], verbose=True,
                                     kernel_args=t.kernel_args), timeout, t.results / "console.log")
        print(f"vm: {t.name} done in {secs:.0f} s (exit {rc})", flush=True)
        if rc == 124 or (t.results / "dmesg-boot.txt").exists() or boot == BOOTS:
            break
        # The kernel died before the guest script ran: nothing of ours had
        # started (under TCG a boot can trip over its own code patching).
        crashed = t.results.parent / f"console-failed-boot-{boot}.log"
        (t.results / "console.log").replace(crashed)
        first = next(iter(bad_lines(crashed.read_text(errors="replace"))), "no kernel message")
        print(f"vm: {t.name} died while booting ({first.strip()}; {crashed}): booting again",
              flush=True)
    r = judge(t.name, t.results)
    if rc == 124:
        r.fail(f"VM timed out after {timeout:.0f} s")
    return r


def run_host_tests() -> Result:
    out = ROOT / "build" / "host"
    out.mkdir(parents=True, exist_ok=True)
    junit = out / "junit.xml"
    junit.unlink(missing_ok=True)
    rc = subprocess.call([str(VENV_BIN / "python"), "-m", "pytest", "-v",
                          f"--junitxml={junit}", "tests/host"], cwd=ROOT)
    r = Result("host")
    if junit.exists():
        r.passed, r.failed, r.skipped = junit_counts(junit)
    if rc != 0 and r.failed == 0:
        r.fail(f"pytest exited {rc}")
    return r


def run_make(target: str, log: Path, *variables: str) -> int:
    """`make target` of this checkout, its output in log (DKMS is verbose)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        return subprocess.call(["make", "--no-print-directory", target, *variables], cwd=ROOT,
                               stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def make_install(kvers: list[str]) -> Result:
    """`make install` for the kernels about to boot, for test_install.py."""
    r = Result("install")
    log = ROOT / "build" / "install.log"
    print(f"install: make install for {', '.join(kvers)} (log: {log})", flush=True)
    rc = run_make("install", log, f"KVERS={' '.join(kvers)}")
    if rc:
        r.fail(f"make install exited {rc}; the end of {log}:")
        r.problems += log.read_text(errors="replace").splitlines()[-15:]
    else:
        r.passed = 1
    return r


def dkms_status() -> str:
    """What DKMS has registered of kproxy ('' when nothing, or no DKMS)."""
    try:
        return subprocess.run(["dkms", "status", "-m", "kproxy"], capture_output=True,
                              text=True).stdout.strip()
    except FileNotFoundError:
        return ""


def install_leftovers(root: Path = Path("/"), dkms: str = "") -> list[str]:
    """What an install left under root: its paths, kproxy modules anywhere
    under lib/modules, modules.dep files that list one, and `dkms` (the
    output of dkms_status()) when it is not empty."""
    left = [str(root / p.lstrip("/")) for p in INSTALLED_PATHS
            if os.path.lexists(root / p.lstrip("/"))]
    left += [str(p) for p in sorted((root / "usr/src").glob("kproxy-*"))]
    modules = root / "lib/modules"
    # os.walk does not follow the build/ and source/ links into the headers.
    for top, _, files in os.walk(modules):
        left += [os.path.join(top, f) for f in sorted(files) if f.startswith("kproxy.ko")]
    for dep in sorted(modules.glob("*/modules.dep")):
        if any(Path(line.split(":")[0]).name.startswith("kproxy.ko")
               for line in dep.read_text().splitlines()):
            left.append(f"{dep} still lists kproxy")
    if dkms:
        left.append(f"dkms status -m kproxy: {dkms}")
    return left


def make_uninstall() -> Result:
    """`make uninstall`, then a look for anything the install left."""
    r = Result("uninstall")
    log = ROOT / "build" / "uninstall.log"
    rc = run_make("uninstall", log)
    if rc:
        r.fail(f"make uninstall exited {rc} (see {log})")
    left = install_leftovers(dkms=dkms_status())
    if left:
        r.fail("make uninstall left behind:")
        r.problems += left
    if not r.failed:
        r.passed = 1
    return r


def precompile() -> None:
    """Write the bytecode of our sources before the guest (read-only, and
    10-50x slower under TCG) would compile them on every import."""
    subprocess.run([str(VENV_BIN / "python"), "-m", "compileall", "-q", "-j", "0",
                    "kpctl", "tests", "schema"], cwd=ROOT, check=True,
                   env={**os.environ, "PYTHONDONTWRITEBYTECODE": ""}, stdout=subprocess.DEVNULL)


def cmd_test(args, vm: VM) -> int:
    precompile()
    results = [run_host_tests()] if args.host else []
    if args.debug_kernel:
        targets = [Target.debug(Path(args.debug_kernel))]
    else:
        kvers = args.kver or installed_kernels()
        targets = [Target.installed(k) for k in kvers]
        if args.install:
            results.append(make_install(kvers))
    try:
        for t in targets:
            vm.resolve_accel(t.image)
            results.append(test_kernel(vm, t, args.timeout, args.tests, args.long))
    finally:
        if args.install:
            results.append(make_uninstall())
    print()
    for r in results:
        print(r.summary())
        for p in r.problems:
            print(f"    {p}")
    passed = sum(r.passed for r in results)
    failed = sum(r.failed for r in results)
    print(counts(passed, failed, sum(r.skipped for r in results)))
    return 1 if failed or not results else 0


def host_can_load_modules(ko: Path) -> bool:
    """Loading works here if we are root, the kernel has modules and headers,
    and an insmod of our module succeeds (or it is already loaded)."""
    if os.geteuid() != 0 or not Path("/proc/modules").exists() or not ko.exists():
        return False
    if "kproxy " in Path("/proc/modules").read_text():
        return True
    return subprocess.call(["insmod", str(ko)]) == 0


def cmd_run(args, vm: VM) -> int:
    precompile()
    interactive = sys.stdin.isatty()
    host_kver = os.uname().release
    if host_can_load_modules(ROOT / "build" / host_kver / "kproxy.ko"):
        print(f"run: kproxy loaded on this kernel ({host_kver})", flush=True)
        argv = [str(VENV_BIN / "kpctl")] if interactive else [str(VENV_BIN / "python"), "tests/vm/demo.py"]
        return subprocess.call(argv, cwd=ROOT)
    kver = args.kver[0] if args.kver else installed_kernels()[-1]
    t = Target.installed(kver)
    print(f"run: this kernel ({host_kver}) cannot load kproxy; booting {kver} in a VM", flush=True)
    vm.resolve_accel(t.image)
    if interactive:
        # kpctl as the guest's shell: only the shell gets the console as a terminal.
        return subprocess.call(vm.cmd(t.image) + ["--shell", str(ROOT / "tests/vm/shell.sh")],
                               cwd=ROOT, env=VM_ENV)
    guest = f"insmod {shlex.quote(str(t.ko))} && .venv/bin/python tests/vm/demo.py"
    rc, secs = run_logged(vm.cmd(t.image, guest), args.timeout, None)
    print(f"run: demo in the VM finished in {secs:.0f} s (exit {rc})")
    return rc


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["test", "run"])
    ap.add_argument("--kver", action="append", help="kernel release (repeatable); default: all installed")
    ap.add_argument("--tests", nargs="*", default=[], help="kernel test paths/ids (default: tests/kernel)")
    ap.add_argument("--host", action="store_true", help="run tests/host first (test only)")
    ap.add_argument("--install", action="store_true",
                    help="make install before the boots, make uninstall (checked) after; "
                         "for tests/kernel/test_install.py (test only, not with --debug-kernel)")
    ap.add_argument("--debug-kernel", metavar="DIR",
                    help="boot the debug kernel built in DIR (tests/vm/build-kernel.sh) instead")
    ap.add_argument("--long", action="store_true",
                    help="full test sizes (KPROXY_TEST_LONG=1), for `make test-long`")
    ap.add_argument("--memory", default=os.environ.get("KPROXY_VM_MEMORY", "1G"))
    ap.add_argument("--cpus", type=int, default=int(os.environ.get("KPROXY_VM_CPUS", "2")))
    ap.add_argument("--accel", choices=["auto", "kvm", "tcg"], default=os.environ.get("KPROXY_VM_ACCEL", "auto"))
    ap.add_argument("--timeout", type=float, default=float(os.environ.get("KPROXY_VM_TIMEOUT", "2400")),
                    help="seconds per VM boot, tests included")
    args = ap.parse_args()
    if args.install and args.debug_kernel:
        ap.error("--install installs for the kernels in /lib/modules, not a --debug-kernel")
    vm = VM(args.memory, args.cpus, args.accel)
    return cmd_test(args, vm) if args.command == "test" else cmd_run(args, vm)


if __name__ == "__main__":
    sys.exit(main())
