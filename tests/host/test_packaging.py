"""kpctl as it ships: the wheel `pip wheel .` builds from the checkout,
installed into a fresh virtualenv and run as a user runs it, from / with
nothing but PATH in its environment and no source tree in reach.

The wheel is built from a copy of the checkout, so the test writes nothing
into it (setuptools builds in the source tree). The fresh venv takes kpctl's
dependencies from the test's own environment through a .pth file: the test
needs no package index for them.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from kpctl.bpf import SHIPPED

REPO = Path(__file__).resolve().parents[2]
CLEAN_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}  # as `env -i PATH=...`
DATA = "kpctl-{version}.data/data"
MAN_PAGE = "share/man/man1/kpctl.1"
COMPLETION = "share/bash-completion/completions/kpctl"
EM_BPF = 247  # ELF e_machine of BPF objects
# Not part of a build: outputs, environments, VCS data.
NOT_SOURCES = shutil.ignore_patterns("build", ".venv", ".git", "*.egg-info", "__pycache__",
                                     ".pytest_cache", "out")
BUILD_TIMEOUT = 300  # a cold pip cache fetches setuptools for the isolated build


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, **kw)
    assert r.returncode == 0, f"{cmd}: exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("packaging")
    src = tmp / "src"
    shutil.copytree(REPO, src, ignore=NOT_SOURCES, symlinks=True)
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp / "dist"),
          str(src)], timeout=BUILD_TIMEOUT)
    (whl,) = (tmp / "dist").glob("kpctl-*.whl")
    return whl


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A fresh venv with the wheel installed; its dependencies are ours."""
    env = tmp_path_factory.mktemp("venv") / "kpctl"
    _run([sys.executable, "-m", "venv", "--without-pip", str(env)])
    _run([sys.executable, "-m", "pip", "--python", str(env / "bin" / "python"), "install",
          "-q", "--no-deps", "--no-index", str(wheel)], timeout=BUILD_TIMEOUT)
    site = _run([str(env / "bin" / "python"), "-c",
                 "import sysconfig; print(sysconfig.get_path('purelib'))"]).stdout.strip()
    Path(site, "test-dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    return env


def _version(wheel: Path) -> str:
    return wheel.name.split("-")[1]


def test_wheel_carries_bpf_objects_man_page_and_completion(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        for name in SHIPPED:
            obj = z.read(f"kpctl/data/bpf/{name}.o")
            assert obj[:4] == b"\x7fELF" and int.from_bytes(obj[18:20], "little") == EM_BPF, name
        data = DATA.format(version=_version(wheel))
        assert z.read(f"{data}/{MAN_PAGE}").startswith(b'.TH KPCTL 1 "')
        assert b"complete -F" in z.read(f"{data}/{COMPLETION}")
    # Only what was built from this checkout: no object beyond the shipped ones.
    assert {n for n in names if n.startswith("kpctl/data/bpf/")} == \
        {f"kpctl/data/bpf/{name}.o" for name in SHIPPED}


def _installed(venv: Path, *cmd: str) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([str(venv / "bin" / cmd[0]), *cmd[1:]], cwd="/", env=CLEAN_ENV,
                       capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
    assert "Traceback" not in r.stderr, r.stderr
    return r


def test_installed_kpctl_runs_from_root_with_a_clean_environment(venv):
    r = _installed(venv, "kpctl", "--help")
    assert r.returncode == 0 and r.stdout.startswith("usage: kpctl"), r.stdout + r.stderr
    r = _installed(venv, "kpctl", "list")
    # The answer needs the family definition: without it, a SpecError.
    if Path("/sys/module/kproxy").exists():  # a host that runs kproxy
        assert r.returncode == 0, r.stderr
    else:
        assert r.returncode == 2
        assert r.stderr.startswith("Error: kproxy module not loaded"), r.stderr


def test_installed_kpctl_finds_the_shipped_programs_by_name(venv):
    code = ("import kpctl, kpctl.bpf as b; print(kpctl.__file__); "
            "[print(b.shipped_path(n)) for n in b.SHIPPED]")
    r = _installed(venv, "python", "-c", code)
    assert r.returncode == 0, r.stderr
    package, *objects = r.stdout.splitlines()
    data = Path(package).parent / "data" / "bpf"
    assert Path(package).is_relative_to(venv), package  # not the checkout's kpctl
    assert objects == [str(data / f"{name}.o") for name in SHIPPED]


def test_installed_man_page_and_completion(venv):
    assert (venv / MAN_PAGE).read_text().startswith('.TH KPCTL 1 "')
    r = subprocess.run(["bash", "-c", f'. "{venv / COMPLETION}" && complete -p kpctl'],
                       capture_output=True, text=True, env=CLEAN_ENV, timeout=30)
    assert r.returncode == 0 and r.stdout.strip().endswith(" kpctl"), r.stdout + r.stderr


# --- the harness's check after `make uninstall` (tests/vm/run.py) ----------


def _harness():
    spec = importlib.util.spec_from_file_location("harness", REPO / "tests" / "vm" / "run.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_uninstall_check_reports_every_leftover(tmp_path):
    run = _harness()
    assert run.install_leftovers(tmp_path) == []
    (tmp_path / "opt/kproxy/bin").mkdir(parents=True)
    (tmp_path / "usr/local/bin").mkdir(parents=True)
    os.symlink("/opt/kproxy/bin/kpctl", tmp_path / "usr/local/bin/kpctl")  # dangling is left too
    (tmp_path / "usr/src/kproxy-0.1.0").mkdir(parents=True)
    dkms_dir = tmp_path / "lib/modules/6.12.0/updates/dkms"
    dkms_dir.mkdir(parents=True)
    (dkms_dir / "kproxy.ko.xz").write_bytes(b"")
    (tmp_path / "lib/modules/6.12.0/modules.dep").write_text(
        "kernel/net/foo.ko:\nupdates/dkms/kproxy.ko.xz:\n")
    (tmp_path / "lib/modules/6.1.0").mkdir(parents=True)
    (tmp_path / "lib/modules/6.1.0/modules.dep").write_text("kernel/net/foo.ko:\n")
    left = run.install_leftovers(tmp_path, dkms="kproxy/0.1.0: added")
    assert left == [
        str(tmp_path / "opt/kproxy"),
        str(tmp_path / "usr/local/bin/kpctl"),
        str(tmp_path / "usr/src/kproxy-0.1.0"),
        str(dkms_dir / "kproxy.ko.xz"),
        f"{tmp_path / 'lib/modules/6.12.0/modules.dep'} still lists kproxy",
        "dkms status -m kproxy: kproxy/0.1.0: added",
    ]
