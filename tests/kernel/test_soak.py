"""Soak (issue 8, item 5): 16 proxies each carrying PER_DIR bytes both ways
at once, every reader randomly slow, while kernel memory is sampled.

`make test-long`: 1 GiB each way per proxy (32 GiB in all); `make test`:
a few MiB, the same shape.  Asserted: sha256 equal on all 32 streams, the
proxies' counters equal to what was sent, every direction's queue within
its 512 KiB bound at every sample, and the peak of kernel memory (see
SAMPLER) under a bound derived from the socket buffers and the proxy
queues -- that is, memory does not grow with the volume carried or with
the readers' slowness.  The peak and the throughput are printed.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
import threading
import time

import pytest

from kpctl import Kproxy
from util import (  # noqa: F401 - kp is a fixture
    IO_TIMEOUT,
    kp,
    live_objects,
    long_or,
    make_chain,
    proc_ids,
    wait_for,
)

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
PROXIES = 16
PER_DIR = long_or(1 * GiB, 4 * MiB)
# Fixed socket buffers (SO_SNDBUF/SO_RCVBUF, which the kernel doubles, and
# which turn autotuning off) make the memory bound computable; autotuned
# loopback buffers could each grow to tcp_rmem/tcp_wmem's maximum, more
# than this 1 GiB VM holds for 64 sockets.
SOCK_BUF = 128 * KiB
QUEUE_MAX = 512 * KiB  # per direction, README "Limits"
SAMPLE_EVERY = 0.25

# 64 sockets' send and receive buffers (doubled); 32 proxy queues, counted
# four times over (a clone pins its whole skb, truesize above payload);
# slack for the rest of a busy kernel (kernel stacks and page tables of
# ~70 Python threads, per-CPU page lists, slab caches growing).
MEM_BOUND_KIB = (4 * PROXIES * 2 * (2 * SOCK_BUF) + 2 * PROXIES * 4 * QUEUE_MAX) // KiB + 48 * 1024

POOL_SIZE = 8 * MiB


# The sampler runs as its own process: in the test's process, 64 busy
# threads would starve it of the GIL and the samples would be few.  It
# samples until its stdin closes, then prints its findings as JSON.  Peaks
# of kernel memory and slab are deltas from its first sample, taken before
# any traffic; /proc/net/kproxy columns are found by the header's names.
SAMPLER = r"""
import json, os, select, sys

def meminfo():
    out = {}
    with open("/proc/meminfo") as f:
        for line in f:
            name, rest = line.split(":", 1)
            out[name] = int(rest.split()[0])
    return out

def kernel_kib(m):
    # Memory the kernel holds for itself: all that is neither free nor on
    # the LRU lists (user pages and page cache): slab, kernel stacks, page
    # tables and -- what matters here -- the pages of socket buffers and of
    # the skbs a proxy holds, which no other meminfo field shows.
    return m["MemTotal"] - m["MemFree"] - m["Active"] - m["Inactive"] - m["Unevictable"]

def tcp_kib():
    with open("/proc/net/sockstat") as f:
        for line in f:
            if line.startswith("TCP:"):
                c = line.split()
                return int(c[c.index("mem") + 1]) * os.sysconf("SC_PAGE_SIZE") // 1024
    raise SystemExit("no TCP line in /proc/net/sockstat")

def queues():
    with open("/proc/net/kproxy") as f:
        lines = f.read().splitlines()
    head = lines[0].split()
    i, ab, ba = head.index("id"), head.index("ab_queued"), head.index("ba_queued")
    for line in lines[1:]:
        c = line.split()
        yield int(c[i]), int(c[ab]), int(c[ba])

interval, limit = float(sys.argv[1]), int(sys.argv[2])
ids = {int(x) for x in sys.argv[3].split(",")}
m = meminfo()
base_kernel, base_slab = kernel_kib(m), m["Slab"]
out = {"samples": 0, "kernel": 0, "slab": 0, "tcp": 0, "queued": 0, "over": []}
print("ready", flush=True)
while not select.select([sys.stdin], [], [], interval)[0]:
    m = meminfo()
    out["kernel"] = max(out["kernel"], kernel_kib(m) - base_kernel)
    out["slab"] = max(out["slab"], m["Slab"] - base_slab)
    out["tcp"] = max(out["tcp"], tcp_kib())
    for pid, qa, qb in queues():
        if pid in ids:
            out["queued"] = max(out["queued"], qa, qb)
            if max(qa, qb) > limit and len(out["over"]) < 10:
                out["over"].append(f"proxy {pid} queued {qa} / {qb}")
    out["samples"] += 1
print(json.dumps(out), flush=True)
"""


class Sampler:
    def __init__(self, ids: set[int]) -> None:
        self.p = subprocess.Popen(
            [sys.executable, "-c", SAMPLER, str(SAMPLE_EVERY), str(QUEUE_MAX), ",".join(map(str, ids))],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.p.stdout.readline().strip() == "ready", "sampler did not start"

    def finish(self) -> dict:
        out, _ = self.p.communicate(timeout=60)  # closes its stdin: it reports
        assert self.p.returncode == 0, f"sampler failed ({self.p.returncode})"
        return json.loads(out)

    def kill(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait(30)


class PoolSender(threading.Thread):
    """Sends `total` bytes made of random windows of a random pool, in
    random-sized writes; .digest is their sha256."""

    def __init__(self, s, total: int, pool: memoryview, seed: int) -> None:
        super().__init__(daemon=True)
        self.s, self.total, self.pool, self.seed = s, total, pool, seed
        self.digest = ""
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            rng, h, left = random.Random(self.seed), hashlib.sha256(), self.total
            while left:
                n = min(left, rng.randrange(4 * KiB, 1 * MiB))
                off = rng.randrange(POOL_SIZE - n + 1)
                chunk = self.pool[off : off + n]
                h.update(chunk)
                self.s.sendall(chunk)
                left -= n
            self.digest = h.hexdigest()
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.error = e


class SlowReceiver(threading.Thread):
    """Receives `total` bytes, changing pace at random: fast (large reads
    back to back), slow (small reads with naps) or stalled (no read at
    all), each for a random fraction of a second."""

    def __init__(self, s, total: int, seed: int) -> None:
        super().__init__(daemon=True)
        self.s, self.total, self.seed = s, total, seed
        self.digest = ""
        self.got = 0
        self.stalls = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            rng, h = random.Random(self.seed), hashlib.sha256()
            while self.got < self.total:
                pace = rng.choices(("fast", "slow", "stall"), weights=(5, 3, 2))[0]
                until = time.monotonic() + rng.uniform(0.05, 0.5)
                if pace == "stall":
                    self.stalls += 1
                    time.sleep(max(0.0, until - time.monotonic()))
                    continue
                while self.got < self.total and time.monotonic() < until:
                    want = 1 * MiB if pace == "fast" else rng.randrange(1 * KiB, 16 * KiB)
                    chunk = self.s.recv(min(want, self.total - self.got))
                    if not chunk:
                        raise AssertionError(f"EOF after {self.got} of {self.total} bytes")
                    h.update(chunk)
                    self.got += len(chunk)
                    if pace == "slow":
                        time.sleep(rng.uniform(0.001, 0.01))
            self.digest = h.hexdigest()
        except BaseException as e:  # noqa: BLE001
            self.error = e


def state_of_things() -> str:
    """What a stuck stream needs to be understood: the proxies and the sockets."""
    out = []
    for cmd in (["cat", "/proc/net/kproxy"], ["ss", "-tn"]):
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        out.append(f"$ {' '.join(cmd)}\n{r.stdout}{r.stderr}")
    return "\n".join(out)


@pytest.mark.timeout(long_or(6 * 3600, 600))
def test_soak_16_proxies_both_ways_slow_readers(kp, dmesg, say):
    env = os.environ.get("KPROXY_TEST_SEED")
    seed = int(env) if env else random.SystemRandom().randrange(1 << 32)
    say(f"soak: seed {seed} (replay: KPROXY_TEST_SEED={seed}), {PROXIES} proxies x "
        f"{PER_DIR / MiB:.0f} MiB each way, memory bound +{MEM_BOUND_KIB / 1024:.0f} MiB")
    rng = random.Random(seed)
    pool = memoryview(rng.randbytes(POOL_SIZE))
    wait_for(lambda: not kp.list(), timeout=30, what="proxies of earlier tests to end")
    base_objects = live_objects()

    chains = [make_chain(kp, bufsize=SOCK_BUF) for _ in range(PROXIES)]
    sampler = None
    try:
        for c in chains:
            c.close_inner()  # as a proxy service does: the kernel holds them
        ids = {c.proxy.id for c in chains}
        pairs = []  # (sender, receiver) of every stream
        for c in chains:
            for src, dst in ((c.c1, c.s2), (c.s2, c.c1)):
                pairs.append((PoolSender(src, PER_DIR, pool, rng.randrange(1 << 32)),
                              SlowReceiver(dst, PER_DIR, rng.randrange(1 << 32))))
        threads = [t for pair in pairs for t in pair]
        sampler = Sampler(ids)
        t0 = time.monotonic()
        for t in threads:
            t.start()
        # At least 2 MiB/s over all streams, whatever the size.
        deadline = t0 + max(IO_TIMEOUT, PROXIES * PER_DIR / MiB)
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        elapsed = time.monotonic() - t0
        trouble = [f"stream {i} (proxy {chains[i // 2].proxy.id} {('a-to-b', 'b-to-a')[i % 2]}) "
                   f"{role}: {'still running' if t.is_alive() else repr(t.error)}"
                   for i, pair in enumerate(pairs) for role, t in zip(("sender", "receiver"), pair)
                   if t.is_alive() or t.error]
        if trouble:
            raise AssertionError("\n".join(trouble + ["", state_of_things()]))
        peaks = sampler.finish()

        for i, (snd, rcv) in enumerate(pairs):
            assert rcv.digest == snd.digest, f"stream {i}: sha256 differs"
        by_id = {p.id: p for p in kp.list()}
        for c in chains:
            p = by_id[c.proxy.id]
            assert (p.a_to_b.bytes, p.b_to_a.bytes) == (PER_DIR, PER_DIR), f"proxy {p.id} counters"
            assert p.state == "active"

        total = 2 * PROXIES * PER_DIR
        say(f"soak: {total / MiB:.0f} MiB in {elapsed:.1f}s = {total / MiB / elapsed:.1f} MiB/s; "
            f"{peaks['samples']} samples, {sum(r.stalls for _, r in pairs)} reader stalls; "
            f"peak kernel memory +{peaks['kernel'] / 1024:.1f} MiB "
            f"(bound {MEM_BOUND_KIB / 1024:.0f}), slab +{peaks['slab'] / 1024:.1f} MiB, "
            f"TCP {peaks['tcp'] / 1024:.1f} MiB, largest queue {peaks['queued'] / KiB:.0f} KiB")
        # Every 0.25 s at best, about 1 s on the debug kernel with one vCPU;
        # a starved sampler would prove little.
        assert peaks["samples"] >= elapsed / 2, f"{peaks['samples']} memory samples in {elapsed:.0f} s"
        assert peaks["over"] == [], f"queues over {QUEUE_MAX}: {peaks['over']}"
        assert peaks["kernel"] <= MEM_BOUND_KIB, (
            f"kernel memory grew by {peaks['kernel']} KiB, bound {MEM_BOUND_KIB} KiB")
    finally:
        if sampler is not None:
            sampler.kill()
        for c in chains:
            c.close()
    # Both ends closed: every proxy ends by itself, nothing leaks.
    with Kproxy() as k:
        wait_for(lambda: not k.list() and not proc_ids(), timeout=60, what="every proxy to end")
    wait_for(lambda: live_objects() == base_objects, timeout=30, what="live objects back to baseline")
    assert dmesg.bad() == []
