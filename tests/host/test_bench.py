"""The benchmarks' pure logic (bench/stats.py): tool output parsing,
statistics, ratios, results.json records and the table. No VM, no tools.
(The results of an actual run are checked by bench/check_results.py,
which `make bench` runs.)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
import stats  # noqa: E402

IPERF3_JSON = {
    "start": {"connected": []},
    "intervals": [],
    "end": {
        "streams": [],
        "sum_sent": {"start": 0, "end": 3.0, "seconds": 3.0, "bytes": 3_000_000_000,
                     "bits_per_second": 8.0e9, "retransmits": 0, "sender": True},
        "sum_received": {"start": 0, "end": 3.0, "seconds": 3.0, "bytes": 2_250_000_000,
                         "bits_per_second": 6.0e9, "sender": True},
        "cpu_utilization_percent": {"host_total": 20.0},
    },
}

SOCKPERF_OUT = """sockperf: \x1b[2;35m== version #3.7-no.git == \x1b[0m
sockperf: [Total Run] RunTime=1.001 sec; Warm up time=400 msec; SentMessages=44283; ReceivedMessages=44282
sockperf: \x1b[2;35m====> avg-latency=11.607 (std-dev=31.300)\x1b[0m
sockperf: Summary: Latency is 11.607 usec
sockperf: ---> <MAX> observation = 3865.359
sockperf: ---> percentile 99.999 = 3865.359
sockperf: ---> percentile 99.990 = 1337.335
sockperf: ---> percentile 99.900 =   99.881
sockperf: ---> percentile 99.000 =   31.072
sockperf: ---> percentile 90.000 =   12.728
sockperf: ---> percentile 75.000 =   11.706
sockperf: ---> percentile 50.000 =   10.604
sockperf: ---> percentile 25.000 =    9.863
sockperf: ---> <MIN> observation =    7.849
"""


def sample(scen, peer, metric, value, unit="Gbit/s", error=None):
    s = {"scenario": scen, "peer": peer, "metric": metric, "unit": unit, "value": value}
    if error:
        s["error"] = error
    return s


# --- parsing --------------------------------------------------------------


def test_iperf3_receiver_rate():
    r = stats.parse_iperf3(json.dumps(IPERF3_JSON))
    assert r["bps"] == 6.0e9  # the receiver's, not the sender's 8e9
    assert r["sender_bps"] == 8.0e9
    assert r["bytes"] == 2_250_000_000
    assert r["seconds"] == 3.0


@pytest.mark.parametrize("text,why", [
    ("", "not JSON"),
    ("iperf3: error - unable to connect", "not JSON"),
    (json.dumps({"start": {}, "intervals": [], "end": {}, "error": "the server is busy"}), "busy"),
    (json.dumps({"end": {}}), "sum_received"),
    ("[1, 2]", "not a JSON object"),
])
def test_iperf3_errors(text, why):
    with pytest.raises(stats.ParseError, match=why):
        stats.parse_iperf3(text)


def test_sockperf_percentiles():
    r = stats.parse_sockperf(SOCKPERF_OUT)
    assert r == {"p50": 10.604, "p99": 31.072, "avg": 11.607}


def test_sockperf_without_percentiles():
    with pytest.raises(stats.ParseError, match="no percentiles"):
        stats.parse_sockperf("sockperf: ERROR: Failed to connect\n")


def test_proc_stat_and_per_gb():
    before = stats.parse_proc_stat(
        "cpu  100 5 50 1000 7 3 2 0 0 0\ncpu0 1 1 1 1 1 1 1 1\nintr 1\nctxt 5000\nbtime 1\n")
    assert before == {"busy": 100 + 5 + 50 + 3 + 2, "ctxt": 5000}
    after = {"busy": before["busy"] + 300, "ctxt": 5000 + 20000}
    pg = stats.per_gb(before, after, 2e9, hz=100)
    assert pg == {"cpu_s_per_gb": 1.5, "ctxsw_per_gb": 10000.0}
    with pytest.raises(ValueError):
        stats.per_gb(before, after, 0)
    with pytest.raises(stats.ParseError):
        stats.parse_proc_stat("intr 1\n")


def test_meminfo_and_slabinfo():
    mi = stats.parse_meminfo("MemTotal:  2000 kB\nSlab:  1024 kB\nHugePages_Total: 0\n")
    assert mi == {"MemTotal": 2048000, "Slab": 1048576, "HugePages_Total": 0}
    head = ("slabinfo - version: 2.1\n# name <active_objs> <num_objs> <objsize> <objperslab> "
            "<pagesperslab> : tunables ...\n")
    before = stats.parse_slabinfo(head + "TCP 10 12 2432 13 8 : tunables 0 0 0\n"
                                  "kmalloc-256 100 128 256 16 1 : tunables 0 0 0\n")
    assert before == {"TCP": 24320, "kmalloc-256": 25600}
    after = {"TCP": 24320, "kmalloc-256": 25600 + 2560, "kproxy": 5000}
    assert stats.slab_growth(before, after) == [("kproxy", 5000), ("kmalloc-256", 2560)]


# --- statistics and records ----------------------------------------------


def test_summarize():
    assert stats.summarize([3, 1, 2]) == {"median": 2, "min": 1, "max": 3, "n": 3}
    assert stats.summarize([4, 1]) == {"median": 2.5, "min": 1, "max": 4, "n": 2}
    assert stats.summarize([]) is None


def test_ratio():
    assert stats.ratio(5.0, 10.0) == 0.5
    assert stats.ratio(None, 10.0) is None
    assert stats.ratio(5.0, None) is None
    assert stats.ratio(5.0, 0) is None


def test_records_fold_and_ratio():
    raw = [sample("stream 16K x1", "direct", "throughput", v) for v in (10, 12, 11)]
    raw += [sample("stream 16K x1", "socat", "throughput", v) for v in (2, 3, 4)]
    raw += [sample("stream 16K x1", "socat", "cpu", v, unit="s/GB") for v in (1, 2, 3)]
    raw += [sample("rr 64B", "direct", "p50", 10, unit="us"), sample("rr 64B", "kproxy", "p50", 15, unit="us")]
    recs = {(r["scenario"], r["peer"], r["metric"]): r for r in stats.records(raw)}
    d = recs[("stream 16K x1", "direct", "throughput")]
    assert (d["median"], d["min"], d["max"], d["n"], d["ratio_to_direct"]) == (11, 10, 12, 3, 1.0)
    s = recs[("stream 16K x1", "socat", "throughput")]
    assert s["ratio_to_direct"] == pytest.approx(3 / 11)
    assert recs[("stream 16K x1", "socat", "cpu")]["ratio_to_direct"] is None  # no ratio for CPU
    assert recs[("rr 64B", "kproxy", "p50")]["ratio_to_direct"] == 1.5  # latency: peer / direct
    for r in recs.values():
        assert stats.check_record(r) == []


def test_records_failed_samples():
    raw = [sample("stream 64B x1", "direct", "throughput", 1.0),
           sample("stream 64B x1", "sockmap", "throughput", None, error="rc=124: timeout"),
           sample("stream 64B x1", "sockmap", "throughput", None, error="rc=124: timeout"),
           sample("stream 64B x1", "kproxy", "throughput", 0.5),
           sample("stream 64B x1", "kproxy", "throughput", None, error="rc=1: reset")]
    recs = {r["peer"]: r for r in stats.records(raw)}
    sm = recs["sockmap"]
    assert (sm["median"], sm["min"], sm["max"], sm["n"], sm["ratio_to_direct"]) == (None, None, None, 0, None)
    assert sm["errors"] == ["rc=124: timeout"]
    assert recs["kproxy"]["median"] == 0.5 and recs["kproxy"]["n"] == 1
    assert recs["kproxy"]["ratio_to_direct"] == 0.5
    assert stats.check_record(sm) == []


def test_records_order():
    raw = [sample("b", "kproxy", "throughput", 1), sample("b", "direct", "throughput", 1),
           sample("a", "socat", "throughput", 1), sample("b", "socat", "throughput", 1)]
    got = [(r["scenario"], r["peer"]) for r in stats.records(raw)]
    assert got == [("b", "direct"), ("b", "socat"), ("b", "kproxy"), ("a", "socat")]


def test_check_record():
    good = {"scenario": "s", "peer": "p", "metric": "m", "unit": "u", "median": 2, "min": 1,
            "max": 3, "ratio_to_direct": None}
    assert stats.check_record(good) == []
    assert stats.check_record([]) == ["not an object"]
    assert "missing ratio_to_direct" in stats.check_record({k: v for k, v in good.items()
                                                            if k != "ratio_to_direct"})
    assert "not min <= median <= max" in stats.check_record({**good, "median": 5})
    assert "median is not a number or null" in stats.check_record({**good, "median": "2"})
    assert "peer is not a non-empty string" in stats.check_record({**good, "peer": ""})


# --- rendering ------------------------------------------------------------


def test_fmt():
    assert stats.fmt(None) == "-"
    assert stats.fmt(12345.6) == "12,346"
    assert stats.fmt(123.4) == "123"
    assert stats.fmt(12.34) == "12.3"
    assert stats.fmt(1.234) == "1.23"
    assert stats.fmt(0.01234) == "0.0123"


def test_table():
    raw = [sample("stream 16K x1", "direct", "throughput", v) for v in (10, 12, 11)]
    raw += [sample("stream 16K x1", "kproxy", "throughput", v) for v in (7, 8, 9)]
    raw += [sample("idle proxy memory", "kproxy", "slab", 700, unit="B/proxy")]
    lines = stats.table(stats.records(raw)).splitlines()
    assert lines[0].split() == ["scenario", "metric", "peer", "median", "min", "max", "unit", "x", "direct"]
    assert set(lines[1]) <= {"-", " "}
    assert len(lines) == 5
    assert lines[3].split()[-6:] == ["kproxy", "8.00", "7.00", "9.00", "Gbit/s", "0.73"]
    assert lines[4].split()[-2:] == ["B/proxy", "-"]
    # columns line up: every row as long as the header's dashes, or shorter
    assert len({len(lines[i]) for i in (2, 3)}) == 1
    md = stats.markdown_table(stats.records(raw)).splitlines()
    assert md[0].startswith("| scenario") and len(md) == 5
    assert md[3] == "| stream 16K x1 | throughput | kproxy | 8.00 | 7.00 | 9.00 | Gbit/s | 0.73 |"


# --- the connection scenario: one client and four -------------------------


def _connect_samples(rates: dict[tuple[int, str], list[float]]) -> list[dict]:
    return [sample(stats.connect_scenario(clients), peer, "rate", v, unit="conn/s")
            for (clients, peer), vals in rates.items() for v in vals]


def test_connect_scenarios_are_named_by_their_clients():
    assert stats.CONNECT_CLIENTS == (1, 4)
    assert [stats.connect_scenario(c) for c in stats.CONNECT_CLIENTS] == \
        ["connect+1K echo+close", "connect+1K echo+close x4"]


def test_connect_rows_fold_with_a_ratio_to_direct_per_scenario():
    raw = _connect_samples({(1, "direct"): [150, 152, 148], (1, "kproxy"): [75, 76, 74],
                            (4, "direct"): [400, 420, 410], (4, "kproxy-listener"): [205, 200, 210],
                            (4, "haproxy"): [100, 90, 110]})
    recs = {(r["scenario"], r["peer"]): r for r in stats.records(raw)}
    x4 = stats.connect_scenario(4)
    assert recs[(stats.connect_scenario(1), "kproxy")]["ratio_to_direct"] == pytest.approx(75 / 150)
    # each scenario's ratio is to its own direct row, not the one-client one
    assert recs[(x4, "kproxy-listener")]["ratio_to_direct"] == pytest.approx(205 / 410)
    assert (recs[(x4, "haproxy")]["median"], recs[(x4, "haproxy")]["n"]) == (100, 3)
    order = [r["peer"] for r in stats.records(raw) if r["scenario"] == x4]
    assert order == ["direct", "haproxy", "kproxy-listener"]
    assert "connect+1K echo+close x4  rate    kproxy-listener" in stats.table(stats.records(raw))


def _run_module():
    import importlib.util
    spec = importlib.util.spec_from_file_location("bench_run", ROOT / "bench" / "run.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_connect_goals_per_scenario():
    run = _run_module()
    raw = _connect_samples({(1, "direct"): [150], (1, "haproxy"): [90], (1, "kproxy"): [95],
                            (1, "kproxy-listener"): [140],
                            (4, "direct"): [400], (4, "haproxy"): [200], (4, "kproxy"): [150]})
    lines = run.connect_goals(stats.records(raw))
    assert lines == [
        "  ok  connect+1K echo+close kproxy >= 1.0x haproxy (conn/s): 95.0 vs 90.0",
        "  ok  connect+1K echo+close kproxy-listener >= 1.5x haproxy (conn/s): 140 vs 135",
        "  ok  connect+1K echo+close kproxy-listener >= 0.8x direct (conn/s): 140 vs 120",
        "  MISS connect+1K echo+close x4 kproxy >= 1.0x haproxy (conn/s): 150 vs 200",
        "  ?    connect+1K echo+close x4 kproxy-listener >= 1.5x haproxy (conn/s): no figure",
        "  ?    connect+1K echo+close x4 kproxy-listener >= 0.8x direct (conn/s): no figure",
    ]
    # a run without the x4 scenario has no goals for it
    assert run.connect_goals(stats.records(raw[:4])) == lines[:3]
    assert all("conn/s" in g for g in run.goals(stats.records(raw)) if "echo+close" in g)


def test_datapath_goals_are_ratios_to_direct_in_the_run():
    run = _run_module()
    raw = [sample("stream 16K x1", "direct", "throughput", 1.0, unit="Gbit/s"),
           sample("stream 16K x1", "kproxy", "throughput", 0.96, unit="Gbit/s"),
           sample("stream 16K x1", "sockmap", "throughput", 0.5, unit="Gbit/s"),
           sample("stream 16K x1", "direct", "cpu", 10.0, unit="s/GB"),
           sample("stream 16K x1", "kproxy", "cpu", 14.0, unit="s/GB"),
           sample("stream 64B x4", "direct", "throughput", 0.05, unit="Gbit/s"),
           sample("stream 64B x4", "kproxy", "throughput", 0.02, unit="Gbit/s"),
           sample("rr 64B", "direct", "p50", 100.0, unit="us"),
           sample("rr 64B", "kproxy", "p50", 140.0, unit="us"),
           sample("rr 64B", "sockmap", "p50", 130.0, unit="us")]
    lines = run.datapath_goals(stats.records(raw))
    assert lines == [
        "  ok  stream 16K x1 kproxy >= 0.95x direct (Gbit/s): 0.960 vs 0.950",
        "  ok  stream 16K x1 kproxy >= every peer (Gbit/s): 0.960 vs 0.500",
        "  MISS stream 16K x1 cpu kproxy <= 1.3x direct: 14.0 vs 13.0",
        "  ?    stream 16K x1 ctxsw kproxy <= 2.0x direct: no figure",
        "  MISS stream 64B x4 kproxy >= 0.95x direct (Gbit/s): 0.0200 vs 0.0475",
        "  ok  rr 64B p50 kproxy <= 1.5x direct (us): 140 vs 150",
        "  ?    rr 64B p99 kproxy <= 2.0x direct (us): no figure",
        "  MISS rr 64B p50 kproxy <= sockmap (us): 140 vs 130",
    ]
