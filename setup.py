"""Build steps of the kpctl wheel that pyproject.toml cannot express.

pyproject.toml holds the metadata. This adds what kpctl needs at run time
and setuptools cannot make by itself:

- the shipped BPF programs (kmod/bpf/<name>.bpf.c), compiled with clang by
  kmod/bpf/Makefile into the package data kpctl/data/bpf/<name>.o, where
  kpctl.bpf.bpf_dirs() finds them;
- the man page and the bash completion, generated from kpctl's command
  table, as data files: <prefix>/share/man/man1/kpctl.1 and
  <prefix>/share/bash-completion/completions/kpctl.

An editable install (`make deps`) compiles no BPF program: kpctl runs from
the checkout there and finds build/bpf/, which `make bpf` builds.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.errors import ExecError

SOURCE = Path(__file__).resolve().parent
# Data files are named relative to the source tree; build_py writes them
# before install_data copies them into the wheel.
GENERATED = Path("build") / "wheel-data"
MAN_PAGE = GENERATED / "kpctl.1"
COMPLETION = GENERATED / "kpctl"  # bash-completion loads a command's file by its name


def generate(target: Path, module: str) -> None:
    """Write `python -m module`'s output to target. It runs on the build
    environment's Python, which may hold nothing but setuptools: the
    generators import only kpctl (from the source tree) and the stdlib."""
    r = subprocess.run([sys.executable, "-m", module], cwd=SOURCE, capture_output=True,
                       text=True, env={**os.environ, "PYTHONPATH": str(SOURCE)})
    if r.returncode != 0 or not r.stdout:
        raise ExecError(f"generating {target.name} with `python -m {module}` failed "
                        f"(exit {r.returncode}):\n{r.stderr}")
    path = SOURCE / target
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(r.stdout)


def build_bpf(out: Path) -> None:
    """Compile every shipped program into out/ (emptied first: a program
    that left the tree must not stay in the wheel)."""
    clang = os.environ.get("CLANG", "clang")
    missing = [tool for tool in (clang, "make") if shutil.which(tool) is None]
    if missing:
        raise ExecError(f"{' and '.join(missing)} not found: the kpctl wheel carries kproxy's "
                        "BPF programs, compiled with clang (Debian: apt-get install clang llvm "
                        "libbpf-dev make, or `make deps`)")
    shutil.rmtree(out, ignore_errors=True)
    r = subprocess.run(["make", "--no-print-directory", "-C", str(SOURCE / "kmod" / "bpf"),
                        f"OUT={out.resolve()}", f"CLANG={clang}"])
    if r.returncode != 0:
        raise ExecError(f"building the BPF programs (make -C kmod/bpf) failed (exit {r.returncode})")


class BuildPy(build_py):
    """build_py, then the generated files and (except editable) the BPF objects."""

    def run(self) -> None:
        super().run()
        generate(MAN_PAGE, "kpctl.shell.manpage")
        generate(COMPLETION, "kpctl.shell.bashcomp")
        if not self.editable_mode:
            build_bpf(Path(self.build_lib) / "kpctl" / "data" / "bpf")


setup(
    cmdclass={"build_py": BuildPy},
    data_files=[
        ("share/man/man1", [str(MAN_PAGE)]),
        ("share/bash-completion/completions", [str(COMPLETION)]),
    ],
)
