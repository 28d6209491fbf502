#!/usr/bin/env python3
"""`make bench`: boot a kernel in a VM, run bench/guest.py there, report.

    run.py [--kver K] [--quick] [--out DIR] [--report-only]

One boot runs every scenario for every peer (see bench/guest.py). The
guest writes raw samples to DIR/raw.json (DIR is bench/out, shared with
the VM read-write); this side folds them into DIR/results.json (records:
scenario, peer, metric, unit, median, min, max, ratio_to_direct), prints
the table and draws DIR/*.png. --report-only redoes that last part from
an existing raw.json without booting.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import http_bench  # noqa: E402
import stats  # noqa: E402


def _vm_harness():
    """tests/vm/run.py (VM, run_logged, installed_kernels), loaded by path:
    its name is this file's too."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("kproxy_vm_run", ROOT / "tests" / "vm" / "run.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


_vm = _vm_harness()
VM, Target, installed_kernels, run_logged = _vm.VM, _vm.Target, _vm.installed_kernels, _vm.run_logged

DEFAULT_KVER = "6.12"


def pick_kernel(kver: str | None) -> str:
    kernels = installed_kernels()
    if kver and kver in kernels:
        return kver
    prefix = kver or DEFAULT_KVER
    matches = [k for k in kernels if k.startswith(prefix)]
    if not matches:
        sys.exit(f"bench: no installed kernel matches {prefix!r} (have: {', '.join(kernels)})")
    return matches[-1]


def _goal(what: str, value: float | None, limit: float | None, ok_if_ge: bool) -> str:
    if value is None or limit is None:
        return f"  ?    {what}: no figure"
    ok = value >= limit if ok_if_ge else value <= limit
    return f"  {'ok ' if ok else 'MISS'} {what}: {_figure(value)} vs {_figure(limit)}"


def _figure(x: float) -> str:
    """Three significant digits below 100 (0.0389 Gbit/s), whole above."""
    return f"{x:#.3g}" if abs(x) < 100 else f"{x:,.0f}"


# Goals of the benchmarks issue, checked on the medians of one run.
def goals(recs: list[dict]) -> list[str]:
    med = {(r["scenario"], r["peer"], r["metric"]): r["median"] for r in recs}

    def m(scen, peer, metric):
        return med.get((scen, peer, metric))

    out = []
    for size in ("16K", "256K"):
        scen = f"stream {size} x1"
        k = m(scen, "kproxy", "throughput")
        for peer, factor in (("socat", 1.5), ("haproxy-splice", 1.0), ("sockmap", 1.0),
                             ("direct", 0.7)):
            base = m(scen, peer, "throughput")
            out.append(_goal(f"{scen} kproxy >= {factor}x {peer} (Gbit/s)", k,
                            base * factor if base is not None else None, True))
    k, s = m("rr 64B", "kproxy", "p50"), m("rr 64B", "socat", "p50")
    out.append(_goal("rr 64B p50 kproxy <= 0.7x socat (us)", k, s * 0.7 if s else None, False))
    for size in ("16K", "256K"):
        scen = f"stream {size} x1"
        k, s = m(scen, "kproxy", "cpu"), m(scen, "socat", "cpu")
        out.append(_goal(f"{scen} CPU kproxy <= 0.5x socat (s/GB)", k, s * 0.5 if s else None, False))
    dump = [r for r in recs if r["scenario"].startswith("dump ")]
    if dump:
        scen = dump[0]["scenario"]
        ss = m(scen, "ss -tn", "time")
        for peer in ("kproxy (library)", "kproxy (netlink)"):
            out.append(_goal(f"{scen}: {peer} <= 1.5x ss -tn (ms)", m(scen, peer, "time"),
                            ss * 1.5 if ss else None, False))
    out.append(_goal("idle proxy slab <= 1024 B", m("idle proxy memory", "kproxy", "slab"), 1024, False))
    out += datapath_goals(recs)
    out += connect_goals(recs)
    out += tls_goals(recs)
    out += http_bench.goals(recs)
    return out


def datapath_goals(recs: list[dict]) -> list[str]:
    """Issue 20's goals, as ratios to direct TCP in the same run: every
    stream row >= 0.95x direct and >= every peer; request/response p50
    <= 1.5x direct and <= sockmap, p99 <= 2x direct; at 16K and 256K CPU
    <= 1.3x direct and context switches <= 2x direct."""
    med = {(r["scenario"], r["peer"], r["metric"]): r["median"] for r in recs}
    out = []
    streams = dict.fromkeys(r["scenario"] for r in recs if r["scenario"].startswith("stream "))
    for scen in streams:
        k = med.get((scen, "kproxy", "throughput"))
        d = med.get((scen, "direct", "throughput"))
        out.append(_goal(f"{scen} kproxy >= 0.95x direct (Gbit/s)", k,
                         d * 0.95 if d is not None else None, True))
        peers = [v for (sc, peer, metric), v in med.items()
                 if sc == scen and metric == "throughput" and peer not in ("kproxy", "direct")
                 and v is not None]
        if peers:
            out.append(_goal(f"{scen} kproxy >= every peer (Gbit/s)", k, max(peers), True))
        if scen.split()[1] in ("16K", "256K"):
            for metric, factor in (("cpu", 1.3), ("ctxsw", 2.0)):
                kv, dv = med.get((scen, "kproxy", metric)), med.get((scen, "direct", metric))
                out.append(_goal(f"{scen} {metric} kproxy <= {factor}x direct", kv,
                                 dv * factor if dv is not None else None, False))
    for scen in dict.fromkeys(r["scenario"] for r in recs if r["scenario"].startswith("rr ")):
        for metric, factor in (("p50", 1.5), ("p99", 2.0)):
            k, d = med.get((scen, "kproxy", metric)), med.get((scen, "direct", metric))
            out.append(_goal(f"{scen} {metric} kproxy <= {factor}x direct (us)", k,
                             d * factor if d is not None else None, False))
        k, s = med.get((scen, "kproxy", "p50")), med.get((scen, "sockmap", "p50"))
        if s is not None:
            out.append(_goal(f"{scen} p50 kproxy <= sockmap (us)", k, s, False))
    return out


# Issue 21's goals for connections per second, in each connection scenario
# that ran: (peer, factor, base peer).
CONNECT_GOALS = (("kproxy", 1.0, "haproxy"), ("kproxy-listener", 1.5, "haproxy"),
                 ("kproxy-listener", 0.8, stats.DIRECT))


def connect_goals(recs: list[dict]) -> list[str]:
    med = {(r["scenario"], r["peer"]): r["median"] for r in recs if r["metric"] == "rate"}
    scens = {r["scenario"] for r in recs}
    out = []
    for clients in stats.CONNECT_CLIENTS:
        scen = stats.connect_scenario(clients)
        if scen not in scens:
            continue
        for peer, factor, base_peer in CONNECT_GOALS:
            base = med.get((scen, base_peer))
            out.append(_goal(f"{scen} {peer} >= {factor}x {base_peer} (conn/s)",
                             med.get((scen, peer)), base * factor if base is not None else None,
                             True))
    return out


def tls_goals(recs: list[dict]) -> list[str]:
    """The TLS issue's goal per TLS transfer row: kproxy's throughput at
    least the best peer's, its CPU per GB at most 0.75x the thriftiest
    peer's ("direct", the target's own TLS, is no peer)."""
    out = []
    scens = dict.fromkeys(r["scenario"] for r in recs
                          if r["scenario"].startswith("tls ") and r["metric"] == "throughput")
    for scen in scens:
        rows = [r for r in recs if r["scenario"] == scen and r["median"] is not None]
        kp = {r["metric"]: r["median"] for r in rows if r["peer"] == "kproxy"}
        peers = [r for r in rows if r["peer"] not in ("kproxy", stats.DIRECT)]
        best = max((r["median"] for r in peers if r["metric"] == "throughput"), default=None)
        least = min((r["median"] for r in peers if r["metric"] == "cpu"), default=None)
        out.append(_goal(f"{scen} kproxy >= the best peer (Gbit/s)", kp.get("throughput"), best, True))
        out.append(_goal(f"{scen} CPU kproxy <= 0.75x the thriftiest peer (s/GB)", kp.get("cpu"),
                         least * 0.75 if least else None, False))
        # The client's and the target's share (the same crypto in every
        # row) is what direct spends; the rest is the proxy's own.
        base = next((r["median"] for r in rows if r["peer"] == stats.DIRECT and r["metric"] == "cpu"),
                    None)
        if base is not None and kp.get("cpu") is not None and least is not None:
            out.append(_goal(f"{scen} CPU kproxy adds <= 0.75x what the thriftiest peer adds to "
                             f"direct's (s/GB)", kp["cpu"] - base, (least - base) * 0.75, False))
    return out


def report(out: Path) -> int:
    raw = json.loads((out / "raw.json").read_text())
    recs = stats.records(raw)
    (out / "results.json").write_text(json.dumps(
        [{k: r[k] for k in (*stats.RECORD_FIELDS, "n", "errors") if k in r} for r in recs], indent=1))
    info = {}
    if (out / "info.json").exists():
        info = json.loads((out / "info.json").read_text())
    print()
    print(f"kernel {info.get('kernel', '?')}, {info.get('cpus', '?')} vCPUs, "
          f"{info.get('reps', '?')} repetition(s) of {info.get('secs', '?')} s"
          f"{' (quick)' if info.get('quick') else ''}; guest time {info.get('seconds', 0):.0f} s")
    print(stats.table(recs))
    (out / "table.md").write_text(stats.markdown_table(recs) + "\n")
    print("\ngoals (medians of this run):")
    print("\n".join(goals(recs)))
    errs = [r for r in recs if r.get("errors")]
    for r in errs:
        print(f"errors: {r['scenario']} {r['peer']} {r['metric']}: {'; '.join(r['errors'])}")
    plot(out)
    return 0


def plot(out: Path) -> None:
    """bench/plot.py with a Python that has matplotlib: the venv's (the
    `bench` extra) or Debian's python3-matplotlib."""
    for py in (sys.executable, "/usr/bin/python3"):
        if subprocess.call([py, "-c", "import matplotlib"], stderr=subprocess.DEVNULL) == 0:
            subprocess.call([py, str(ROOT / "bench" / "plot.py"), str(out)])
            return
    print("bench: matplotlib not found (pip install '.[bench]' or apt install python3-matplotlib):"
          " no plots")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kver", default=os.environ.get("KVER") or None)
    ap.add_argument("--quick", action="store_true", default=os.environ.get("BENCH_QUICK", "") not in ("", "0"))
    ap.add_argument("--out", default=str(ROOT / "bench" / "out"))
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--reps", type=int, default=int(os.environ.get("BENCH_REPS", "3")))
    ap.add_argument("--secs", type=int, default=int(os.environ.get("BENCH_SECS", "2")),
                    help="seconds per iperf3 run (sockperf: one more)")
    ap.add_argument("--dump-proxies", type=int, default=int(os.environ.get("BENCH_DUMP_N", "0")),
                    help="proxies for the dump and memory figures (default 10000; quick 1000)")
    ap.add_argument("--only", default=os.environ.get("BENCH_ONLY") or None,
                    help="comma-separated scenario groups: stream, rr, connect, counts, tls, control")
    ap.add_argument("--peers", default=os.environ.get("BENCH_PEERS") or None,
                    help="comma-separated subset of the peers (direct is the ratios' base)")
    ap.add_argument("--memory", default=os.environ.get("KPROXY_VM_MEMORY", "2G"))
    ap.add_argument("--cpus", type=int, default=int(os.environ.get("KPROXY_VM_CPUS", "2")))
    ap.add_argument("--accel", choices=["auto", "kvm", "tcg"], default=os.environ.get("KPROXY_VM_ACCEL", "auto"))
    ap.add_argument("--timeout", type=float, default=float(os.environ.get("BENCH_TIMEOUT", "3600")))
    args = ap.parse_args()
    out = Path(args.out).resolve()
    if args.report_only:
        return report(out)

    kver = pick_kernel(args.kver)
    ko = ROOT / "build" / kver / "kproxy.ko"
    need = [ko, ROOT / "build" / "bench" / "sockmap.o", ROOT / "build" / "bench" / "whole.o",
            ROOT / "build" / "bpf" / "pass.o"]
    missing = [str(p) for p in need if not p.exists()]
    if missing:
        sys.exit(f"bench: missing {', '.join(missing)}: run `make bench` (it builds them)")
    tools = [t for t in ("iperf3", "sockperf", "haproxy", "socat", "nginx", "openssl") if not any(
        Path(d, t).exists() for d in os.environ.get("PATH", "/usr/bin").split(":") + ["/usr/sbin"])]
    if tools:
        sys.exit(f"bench: missing {', '.join(tools)} (Debian packages; `make deps`)")
    out.mkdir(parents=True, exist_ok=True)
    for old in ("raw.json", "results.json", "info.json", "guest.log"):
        (out / old).unlink(missing_ok=True)
    for png in out.glob("*.png"):
        png.unlink()

    vm = VM(args.memory, args.cpus, args.accel)
    image = Target.installed(kver).image
    vm.resolve_accel(image)
    guest = shlex.join([str(ROOT / ".venv" / "bin" / "python"), "bench/guest.py", "run",
                        "--out", str(out), "--ko", str(ko), "--reps", str(args.reps),
                        "--secs", str(args.secs), "--dump-proxies", str(args.dump_proxies),
                        *(["--quick"] if args.quick else []),
                        *(["--only", args.only] if args.only else []),
                        *(["--peers", args.peers] if args.peers else [])])
    print(f"bench: booting {kver} ({vm.accel}, {vm.memory}, {vm.cpus} vCPUs)"
          f"{', quick' if args.quick else ''}", flush=True)
    t = time.monotonic()
    rc, secs = run_logged(vm.cmd(image, guest, [out], verbose=True), args.timeout, out / "console.log")
    print(f"bench: VM done in {secs:.0f} s (exit {rc}); {time.monotonic() - t:.0f} s in all", flush=True)
    if not (out / "raw.json").exists():
        print("bench: the guest wrote no raw.json (see bench/out/console.log)")
        return 1
    report(out)
    return 0 if rc == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
