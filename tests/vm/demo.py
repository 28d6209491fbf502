#!/usr/bin/env python3
"""The `make run` demo for a session with no terminal: with kproxy loaded,
show what the module exposes. Grows as the module does."""
import subprocess
import sys
from pathlib import Path

from pyroute2.netlink import genlmsg
from pyroute2.netlink.generic import GenericNetlinkSocket


def step(title: str) -> None:
    print(f"\n== {title}", flush=True)


def main() -> int:
    step("generic netlink family")
    with GenericNetlinkSocket() as s:
        s.bind("kproxy", genlmsg)
        print(f"kproxy: family id {s.prid}, groups {s.mcast_groups}")
    step("/proc/net/kproxy")
    print(Path("/proc/net/kproxy").read_text(), end="")
    step("kpctl --help")
    return subprocess.call([sys.executable, "-m", "kpctl", "--help"])


if __name__ == "__main__":
    sys.exit(main())
