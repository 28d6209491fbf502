#!/usr/bin/env python3
"""Check the results.json a bench run wrote: every record well formed,
the direct and kproxy peers present, ratios to direct computed.
`make bench` runs it after the run; exits 1 with the problems otherwise.
"""

import json
import sys
from pathlib import Path

import stats

path = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "out" / "results.json")
recs = json.loads(path.read_text())
problems = [f"record {i}: {p}" for i, r in enumerate(recs) if (p := stats.check_record(r))]
if not recs:
    problems.append("no records")
if not {r["peer"] for r in recs} >= {"direct", "kproxy"}:
    problems.append("the direct or kproxy peer is missing")
# A run of one group (BENCH_ONLY=connect) has rates, not throughputs.
if not any(r["metric"] in ("throughput", "rate") and r["ratio_to_direct"] is not None
           for r in recs):
    problems.append("no throughput or rate ratio to direct")
for p in problems:
    print(f"{path}: {p}", file=sys.stderr)
sys.exit(1 if problems else 0)
