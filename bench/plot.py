#!/usr/bin/env python3
"""Plots of bench/out/results.json (run by bench/run.py with a Python that
has matplotlib):

    throughput.png   receiver-side Gbit/s by write size, one line per peer,
                     one panel per connection count (min..max as error bars)
    latency.png      p50 and p99 round-trip halves per peer, per message size
"""

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stats import PEERS  # noqa: E402

SIZE_ORDER = ["64B", "1K", "4K", "16K", "256K"]


def peers_of(recs):
    seen = {r["peer"] for r in recs}
    return [p for p in PEERS if p in seen] + sorted(seen - set(PEERS))


def throughput(recs, out):
    tp = [r for r in recs if r["metric"] == "throughput" and r["median"] is not None
          and r["scenario"].startswith("stream ")]
    if not tp:
        return
    conns = sorted({r["scenario"].split()[-1] for r in tp})
    fig, axes = plt.subplots(1, len(conns), figsize=(6 * len(conns), 4.5), squeeze=False)
    for ax, c in zip(axes[0], conns):
        for peer in peers_of(tp):
            pts = [r for r in tp if r["peer"] == peer and r["scenario"].endswith(" " + c)]
            pts.sort(key=lambda r: SIZE_ORDER.index(r["scenario"].split()[1]))
            if not pts:
                continue
            xs = [r["scenario"].split()[1] for r in pts]
            ys = [r["median"] for r in pts]
            err = [[r["median"] - r["min"] for r in pts], [r["max"] - r["median"] for r in pts]]
            ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=peer)
        ax.set_title(f"stream throughput, {c[1:]} connection(s)")
        ax.set_xlabel("write size")
        ax.set_ylabel("Gbit/s (receiver)")
        ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "throughput.png", dpi=100)
    plt.close(fig)


def latency(recs, out):
    lat = [r for r in recs if r["metric"] in ("p50", "p99") and r["median"] is not None]
    if not lat:
        return
    scens = sorted({r["scenario"] for r in lat}, key=lambda s: SIZE_ORDER.index(s.split()[1]))
    fig, axes = plt.subplots(1, len(scens), figsize=(6 * len(scens), 4.5), squeeze=False)
    for ax, scen in zip(axes[0], scens):
        peers = peers_of([r for r in lat if r["scenario"] == scen])
        for j, metric in enumerate(("p50", "p99")):
            by = {r["peer"]: r for r in lat if r["scenario"] == scen and r["metric"] == metric}
            xs = [i + (j - 0.5) * 0.38 for i in range(len(peers))]
            ys = [by[p]["median"] if p in by else 0 for p in peers]
            err = [[by[p]["median"] - by[p]["min"] if p in by else 0 for p in peers],
                   [by[p]["max"] - by[p]["median"] if p in by else 0 for p in peers]]
            ax.bar(xs, ys, width=0.38, yerr=err, capsize=3, label=metric)
        ax.set_xticks(range(len(peers)), peers, rotation=30, ha="right")
        ax.set_title(f"request/response latency, {scen.split()[1]} (sockperf ping-pong)")
        ax.set_ylabel("microseconds (half round trip)")
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "latency.png", dpi=100)
    plt.close(fig)


def main():
    out = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "out")
    recs = json.loads((out / "results.json").read_text())
    throughput(recs, out)
    latency(recs, out)
    print(f"plots: {', '.join(str(p) for p in sorted(out.glob('*.png')))}")


if __name__ == "__main__":
    main()
