"""BPF on the host: the shipped programs built by clang, loaded through
kpctl.bpf (libbpf via ctypes), and run on sample messages with
BPF_PROG_TEST_RUN; the loader's errors; the library's and /proc's program ids.

Tests that need the bpf() syscall (loading, test runs, pinning) are skipped
where the host refuses it (no CAP_BPF, a container's seccomp); the rest only
need clang and libbpf.
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import struct
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from kpctl import bpf
from kpctl.bpf import BpfError
from kpctl.errors import KproxyError

REPO = Path(__file__).resolve().parents[2]
SHIPPED = ("lenprefix", "lines", "drop-prefix", "pass", "http", "http-filter")


def _multiarch() -> str:
    try:
        return subprocess.run(["cc", "-print-multiarch"], capture_output=True, text=True,
                              check=True).stdout.strip() or "x86_64-linux-gnu"
    except (OSError, subprocess.CalledProcessError):
        return "x86_64-linux-gnu"


def _clang(src: Path, out: Path, *defines: str) -> None:
    subprocess.run(["clang", "-O2", "-g", "-Wall", "-Werror", "-target", "bpf",
                    f"-I/usr/include/{_multiarch()}", f"-I{REPO / 'kmod' / 'bpf'}", *defines,
                    "-c", str(src), "-o", str(out)], check=True, capture_output=True, text=True)


needs_clang = pytest.mark.skipif(shutil.which("clang") is None, reason="clang not installed")


def _libbpf_missing() -> str | None:
    try:
        bpf.libbpf()
        return None
    except BpfError as e:
        return str(e)


needs_libbpf = pytest.mark.skipif(_libbpf_missing() is not None,
                                  reason=f"libbpf: {_libbpf_missing()}")

_why_no_bpf = None if _libbpf_missing() else bpf.available()
needs_bpf = pytest.mark.skipif(_libbpf_missing() is not None or _why_no_bpf is not None,
                               reason=f"bpf() refused here: {_why_no_bpf}")

TEST_PROGS = r"""
// SPDX-License-Identifier: GPL-2.0
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("socket") int first(struct __sk_buff *skb) { return 1; }
SEC("socket") int second(struct __sk_buff *skb) { return 2; }
SEC("xdp") int an_xdp(struct xdp_md *ctx) { return XDP_PASS; }
SEC("tc") int a_tc(struct __sk_buff *skb) { return 0; }
SEC("kproxy/custom") int custom(struct __sk_buff *skb) { return 7; }
char _license[] SEC("license") = "GPL";
"""

BAD_PROG = r"""
// SPDX-License-Identifier: GPL-2.0
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("socket") int bad(struct __sk_buff *skb)
{
	return ((volatile __u32 *)skb)[1000];	/* far outside the context */
}
char _license[] SEC("license") = "GPL";
"""


@pytest.fixture(scope="module")
def objs(tmp_path_factory) -> Path:
    """The shipped programs built by kmod/bpf/Makefile (as `make` does), plus
    test objects: several programs, other types, a bad one, a short lines."""
    if shutil.which("clang") is None or shutil.which("make") is None:
        pytest.skip("clang or make not installed")
    out = tmp_path_factory.mktemp("bpf")
    r = subprocess.run(["make", "-s", "-C", str(REPO / "kmod" / "bpf"), f"OUT={out}"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    (out / "multi.bpf.c").write_text(TEST_PROGS)
    _clang(out / "multi.bpf.c", out / "multi.o")
    (out / "bad.bpf.c").write_text(BAD_PROG)
    _clang(out / "bad.bpf.c", out / "bad.o")
    # lines with a 512-byte limit: its error path within a test run's page
    _clang(REPO / "kmod" / "bpf" / "lines.bpf.c", out / "lines512.o", "-DLINE_MAX=512")
    return out


@pytest.fixture
def shipped_dir(objs, monkeypatch) -> Path:
    monkeypatch.setenv("KPROXY_BPF_DIR", str(objs))
    return objs


# --- the build -------------------------------------------------------------


@needs_clang
def test_make_builds_every_shipped_program(objs):
    for name in SHIPPED:
        data = (objs / f"{name}.o").read_bytes()
        assert data[:4] == b"\x7fELF"
        assert data[18:20] == struct.pack("<H", 247)  # e_machine EM_BPF
    assert set(bpf.SHIPPED) == set(SHIPPED)


def test_sources_have_spdx_and_a_header():
    for src in sorted((REPO / "kmod" / "bpf").glob("*.bpf.c")):
        text = src.read_text()
        assert text.startswith("// SPDX-License-Identifier: GPL-2.0\n"), src
        assert text.splitlines()[1] == "/*", f"{src}: no comment header"
        assert 'SEC("socket")' in text and 'SEC("license") = "GPL"' in text, src
    names = {p.name.removesuffix(".bpf.c") for p in (REPO / "kmod" / "bpf").glob("*.bpf.c")}
    assert names == set(SHIPPED)


# --- loader errors that need no bpf() ---------------------------------------


@needs_libbpf
def test_missing_file(tmp_path):
    with pytest.raises(BpfError) as ei:
        bpf.load(str(tmp_path / "nope.o"))
    assert ei.value.errno == errno.ENOENT and "nope.o: no such file" in ei.value.message
    with pytest.raises(BpfError) as ei:
        bpf.load(str(tmp_path / "nope.o") + ":prog")
    assert ei.value.errno == errno.ENOENT and "nope.o: no such file" in ei.value.message
    assert isinstance(ei.value, KproxyError)


@needs_libbpf
def test_unknown_shipped_name():
    with pytest.raises(BpfError) as ei:
        bpf.load("lenprefx")
    assert ei.value.errno == errno.ENOENT
    assert "nor a shipped program (lenprefix, lines, drop-prefix, pass, http, http-filter)" in ei.value.message


@needs_libbpf
def test_shipped_program_not_built(tmp_path, monkeypatch):
    monkeypatch.setattr(bpf, "bpf_dirs", lambda: [tmp_path])
    with pytest.raises(BpfError) as ei:
        bpf.load("lines")
    assert ei.value.errno == errno.ENOENT
    assert "shipped program 'lines' is not built" in ei.value.message and "make" in ei.value.message


@needs_libbpf
def test_not_an_elf_object(tmp_path):
    f = tmp_path / "x.o"
    f.write_text("hello")
    with pytest.raises(BpfError) as ei:
        bpf.load(str(f))
    assert ei.value.errno == errno.EINVAL and "not an ELF object" in ei.value.message
    with pytest.raises(BpfError) as ei:
        bpf.load(str(tmp_path))
    assert ei.value.errno == errno.EISDIR


@needs_libbpf
def test_an_elf_that_is_not_bpf(tmp_path):
    exe = Path("/bin/true").resolve()
    with pytest.raises(BpfError) as ei:
        bpf.load_object(exe)
    assert ei.value.errno == errno.EINVAL
    assert "cannot open as a BPF object" in ei.value.message


@needs_libbpf
def test_bad_section_or_name(objs):
    with pytest.raises(BpfError) as ei:
        bpf.load(f"{objs}/lines.o:nosuch")
    assert ei.value.errno == errno.ENOENT
    assert "no program or section 'nosuch'" in ei.value.message
    assert "lines (section 'socket')" in ei.value.message


@needs_libbpf
def test_several_programs_need_a_name(objs):
    with pytest.raises(BpfError) as ei:
        bpf.load(f"{objs}/multi.o")
    assert ei.value.errno == errno.EINVAL
    assert "holds several programs" in ei.value.message and "second (section 'socket')" in ei.value.message
    with pytest.raises(BpfError) as ei:
        bpf.load(f"{objs}/multi.o:socket")  # a section with two programs
    assert "section 'socket' holds several programs" in ei.value.message


@needs_libbpf
@pytest.mark.parametrize("sel,typ", [("an_xdp", "xdp"), ("xdp", "xdp"), ("a_tc", "sched_cls")])
def test_wrong_program_type_is_refused_before_loading(objs, sel, typ):
    with pytest.raises(BpfError) as ei:
        bpf.load(f"{objs}/multi.o:{sel}")
    assert ei.value.errno == errno.EINVAL
    assert f"is a {typ} program" in ei.value.message
    assert 'kproxy takes socket_filter programs (SEC("socket"))' in ei.value.message


@needs_libbpf
def test_prog_info_of_non_programs(tmp_path):
    r, w = os.pipe()
    try:
        with pytest.raises(BpfError) as ei:
            bpf.prog_info(r)
        assert ei.value.errno == errno.EINVAL and "is not a BPF program" in ei.value.message
    finally:
        os.close(r)
        os.close(w)
    with pytest.raises(BpfError) as ei:
        bpf.prog_info(r)
    assert ei.value.errno == errno.EBADF


def test_shorten_log_keeps_the_end():
    log = "\n".join(f"line {i}" for i in range(100)) + "\n"
    short = bpf.shorten_log(log, 5)
    assert short.splitlines() == ["  ... (95 earlier lines of the log not shown)",
                                  "  line 95", "  line 96", "  line 97", "  line 98", "  line 99"]
    assert bpf.shorten_log("a\nb\n", 5) == "  a\n  b"


# --- loading and running (needs bpf()) ---------------------------------------


def run(prog: bpf.Program, data: bytes) -> int:
    return prog.test_run(data)


@needs_bpf
@pytest.mark.parametrize("name,func", [("lenprefix", "lenprefix"), ("lines", "lines"),
                                       ("drop-prefix", "drop_prefix"), ("pass", "pass")])
def test_shipped_programs_load_as_socket_filters(shipped_dir, name, func):
    with bpf.load(name) as p:
        assert p.info.type_name == "socket_filter" and p.name == func and p.id > 0
        assert bpf.prog_info(p.fd).id == p.id
        assert str(p.source).endswith(f"{name}.o")
    assert p.closed


@needs_bpf
def test_lenprefix(shipped_dir):
    with bpf.load("lenprefix") as p:
        assert run(p, b"") == 0
        assert run(p, b"\0\0\0") == 0                       # header incomplete
        assert run(p, struct.pack(">I", 0)) == 4            # empty payload
        assert run(p, struct.pack(">I", 10) + b"abc") == 14  # whole length, not what is there
        assert run(p, struct.pack(">I", 1000) + b"x" * 2000) == 1004
        assert run(p, struct.pack(">I", (1 << 20) - 4)) == 1 << 20  # the module's maximum
        assert run(p, struct.pack(">I", (1 << 20) - 3)) == -errno.EMSGSIZE
        assert run(p, b"\xff\xff\xff\xff") == -errno.EMSGSIZE


@needs_bpf
def test_lines(shipped_dir):
    with bpf.load("lines") as p:
        assert run(p, b"") == 0
        assert run(p, b"no newline yet") == 0
        assert run(p, b"\n") == 1
        assert run(p, b"GET / HTTP/1.0\r\nHost: x\r\n") == 16  # the first line only
        # around the 256-byte chunks and the 8-byte words of the scan
        for n in (7, 8, 9, 255, 256, 257, 511, 512, 513, 1000, 2047, 3000):
            assert run(p, b"a" * n + b"\nrest") == n + 1, n
            assert run(p, b"a" * n) == 0, n
        assert run(p, b"b" * 300 + b"\n" + b"c" * 10 + b"\n") == 301
        assert run(p, bytes(range(256)) * 3) == 11  # '\n' is byte 10
        assert run(p, b"\x8a\x0b\x09\xff" * 100 + b"\n") == 401  # near misses of the bit trick


@needs_bpf
def test_lines_too_long_is_an_error(objs):
    # The same source with LINE_MAX 512 (the shipped one allows 8 KiB, more
    # than a test run's page): a full window without '\n' is -EMSGSIZE.
    with bpf.load_object(objs / "lines512.o") as p:
        assert run(p, b"a" * 511) == 0
        assert run(p, b"a" * 511 + b"\n") == 512
        assert run(p, b"a" * 512) == -errno.EMSGSIZE
        assert run(p, b"a" * 2000) == -errno.EMSGSIZE
        assert run(p, b"a" * 100 + b"\n" + b"a" * 2000) == 101


@needs_bpf
def test_drop_prefix(shipped_dir):
    def msg(payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + payload

    with bpf.load("drop-prefix") as p:
        assert run(p, msg(b"DROP me")) == 1  # unconfigured: drops nothing
        p.set_prefix("DROP")
        value = p.map_lookup(bpf.PREFIX_MAP, struct.pack("I", 0))
        assert value[:8] == struct.pack("II", 4, 4) and value[8:12] == b"DROP"
        assert run(p, msg(b"DROP me")) == 0
        assert run(p, msg(b"DROP")) == 0
        assert run(p, msg(b"DROP" + b"x" * 2000)) == 0  # one 64-byte load
        assert run(p, msg(b"DRO")) == 1  # shorter than the prefix
        assert run(p, msg(b"drop me")) == 1
        assert run(p, msg(b"xDROP")) == 1
        assert run(p, b"DROP" + b"x" * 10) == 1  # at offset 0 it is the header
        p.set_prefix(b"GET ", offset=0)  # e.g. with the lines parser
        assert run(p, b"GET / HTTP/1.0\r\n") == 0
        assert run(p, b"PUT / HTTP/1.0\r\n") == 1
        p.set_prefix(b"\x00\xff" * 32)  # 64 bytes, binary
        assert run(p, msg(b"\x00\xff" * 40)) == 0
        assert run(p, msg(b"\x00\xff" * 31 + b"\x00\xfe")) == 1
        with pytest.raises(BpfError, match="at most 64"):
            p.set_prefix(b"x" * 65)
        with pytest.raises(BpfError, match="must not be empty"):
            p.set_prefix(b"")


@needs_bpf
def test_pass_and_prefix_on_a_program_without_map(shipped_dir):
    with bpf.load("pass") as p:
        assert run(p, b"") == 1 and run(p, b"x" * 100) == 1
        with pytest.raises(BpfError) as ei:
            p.set_prefix("x")
        assert ei.value.errno == errno.EINVAL and "takes no prefix" in ei.value.message


@needs_bpf
def test_selecting_by_name_section_and_unknown_section(objs):
    with bpf.load(f"{objs}/multi.o:second") as p:
        assert p.name == "second" and run(p, b"") == 2
    # a section libbpf does not know is loaded as a socket filter
    with bpf.load(f"{objs}/multi.o:kproxy/custom") as p:
        assert p.name == "custom" and p.info.type_name == "socket_filter" and run(p, b"") == 7


@needs_bpf
def test_any_type_loads_other_types(objs):
    with bpf.load(f"{objs}/multi.o:an_xdp", any_type=True) as p:
        assert p.info.type_name == "xdp"
        with pytest.raises(BpfError) as ei:
            bpf.from_fd(p.fd)
        assert ei.value.errno == errno.EINVAL and "is a xdp program" in ei.value.message
    with bpf.load_insns("sched_cls", bpf.insn_return(0)) as p:
        assert p.info.type_name == "sched_cls"


@needs_bpf
def test_verifier_refusal_gives_the_end_of_its_log(objs):
    with pytest.raises(BpfError) as ei:
        bpf.load(f"{objs}/bad.o")
    e = ei.value
    assert e.errno in (errno.EACCES, errno.EINVAL)
    assert "the verifier refused program 'bad'" in e.message
    assert "invalid bpf_context access" in e.message
    assert len(e.message.splitlines()) <= bpf.LOG_TAIL_LINES + 2
    assert "invalid bpf_context access" in e.log and len(e.log) >= len(e.message) - 200


@needs_bpf
def test_program_gone_once_closed(shipped_dir):
    p = bpf.load("pass")
    pid = p.id
    assert bpf.prog_exists(pid)
    p.close()
    p.close()  # idempotent
    deadline = time.monotonic() + 10  # freed after an RCU grace period
    while bpf.prog_exists(pid):
        assert time.monotonic() < deadline, "program still exists after its fd was closed"
        time.sleep(0.02)
    with pytest.raises(BpfError) as ei:
        p.fileno()
    assert ei.value.errno == errno.EBADF


@pytest.fixture
def bpffs(tmp_path) -> Iterator[Path]:
    """A writable bpffs: the system's, or one of our own mounted for the test
    (a host or container need not have /sys/fs/bpf mounted)."""
    system = Path("/sys/fs/bpf")
    if bpf._is_bpffs(str(system)) and os.access(system, os.W_OK):
        yield system
        return
    subprocess.run(["mount", "-t", "bpf", "bpf", str(tmp_path)], check=True, capture_output=True)
    try:
        yield tmp_path
    finally:
        subprocess.run(["umount", str(tmp_path)], check=True)


@needs_bpf
def test_pinned_programs(shipped_dir, objs, bpffs):
    base = bpffs / f"kproxy-test-{uuid.uuid4().hex[:8]}"
    pinned = []
    try:
        with bpf.load("lenprefix") as p:
            bpf.pin(p, str(base) + "-lp")
            pinned.append(Path(str(base) + "-lp"))
            pid = p.id
        with bpf.load(str(base) + "-lp") as q:  # the pin keeps it alive
            assert q.id == pid and q.name == "lenprefix" and run(q, struct.pack(">I", 1)) == 5
        with pytest.raises(BpfError) as ei:
            bpf.load(str(base) + "-lp:lenprefix")
        assert "takes no ':NAME'" in ei.value.message
        with bpf.load(f"{objs}/multi.o:an_xdp", any_type=True) as x:
            bpf.pin(x, str(base) + "-xdp")
            pinned.append(Path(str(base) + "-xdp"))
        with pytest.raises(BpfError) as ei:
            bpf.load(str(base) + "-xdp")
        assert ei.value.errno == errno.EINVAL
        assert "pinned program 'an_xdp' is a xdp program" in ei.value.message
    finally:
        for f in pinned:
            f.unlink()


# --- the library's side: ids in replies, /proc and the attach request ---------


def test_procfs_program_columns():
    from kpctl.procfs import parse_proxies

    header = ("id state a_local a_remote b_local b_remote ab_bytes ab_skbs ab_msgs ab_drops "
              "ab_queued ba_bytes ba_skbs ba_msgs ba_drops ba_queued created "
              "ab_parser ab_verdict ba_parser ba_verdict")
    line = ("5 active 127.0.0.1:1 127.0.0.1:2 127.0.0.1:3 127.0.0.1:4 "
            "10 1 3 1 0 0 0 0 0 0 99 17 18 17 0")
    (p,) = parse_proxies(header + "\n" + line + "\n")
    assert (p.a_to_b.parser_id, p.a_to_b.verdict_id) == (17, 18)
    assert (p.b_to_a.parser_id, p.b_to_a.verdict_id) == (17, None)
    assert p.a_to_b.msgs == 3 and p.a_to_b.drops == 1
    # an older module without the columns
    old = header.rsplit(" created", 1)[0] + " created"
    (q,) = parse_proxies(old + "\n" + line.rsplit(" 99", 1)[0] + " 99\n")
    assert q.a_to_b.parser_id is None and q.b_to_a.verdict_id is None


def test_model_keeps_its_keys_and_adds_the_ids():
    from kpctl.model import DirStats

    d = DirStats(bytes=1, parser_id=3).to_dict()
    assert d == {"bytes": 1, "skbs": 0, "msgs": 0, "drops": 0, "queued": 0, "shut": False,
                 "parser_id": 3, "verdict_id": None, "tls_records_in": None, "tls_records_out": None,
                 "denied": 0}


def test_netlink_reply_program_ids():
    from kpctl import spec as spec_mod
    from kpctl import wire
    from kpctl.client import proxy_from_attrs

    spec = spec_mod.default()
    body = wire.encode_attrs(spec, {
        "id": 9,
        "a-to-b": {"bytes": 5, "msgs": 2, "parser-id": 31, "verdict-id": 32},
        "b-to-a": {"bytes": 0},
    })
    p = proxy_from_attrs(wire.decoder(spec).attrs(body, 0, len(body)), spec)
    assert (p.a_to_b.parser_id, p.a_to_b.verdict_id) == (31, 32)
    assert (p.b_to_a.parser_id, p.b_to_a.verdict_id) == (None, None)


class _Recorder:
    def __init__(self):
        self.sent = []


def _fake_kproxy():
    """A Kproxy whose requests are recorded, not sent (no module needed)."""
    from kpctl import spec as spec_mod
    from kpctl.client import Kproxy

    kp = Kproxy.__new__(Kproxy)
    kp._spec = spec_mod.default()
    rec = _Recorder()

    def do(cmd, attrs):
        from kpctl import wire

        wire.encode_attrs(kp._spec, attrs)  # must encode with the spec
        rec.sent.append((cmd, attrs))
        return None

    kp._do = do
    return kp, rec


def test_attach_and_detach_requests():
    kp, rec = _fake_kproxy()
    spec = kp._spec

    class Prog:
        def fileno(self):
            return 7

    kp.attach(3, "parser", 5)
    kp.attach(3, "verdict", Prog(), direction="a-to-b")
    kp.detach(3, "verdict", "b-to-a")
    kp.detach(4, "parser")
    kind, direction = spec.enums["bpf-kind"], spec.enums["direction"]
    assert rec.sent == [
        ("bpf-attach", {"id": 3, "prog-fd": 5, "kind": kind.value("parser"),
                        "direction": direction.value("both")}),
        ("bpf-attach", {"id": 3, "prog-fd": 7, "kind": kind.value("verdict"),
                        "direction": direction.value("a-to-b")}),
        ("bpf-detach", {"id": 3, "kind": kind.value("verdict"), "direction": direction.value("b-to-a")}),
        ("bpf-detach", {"id": 4, "kind": kind.value("parser"), "direction": direction.value("both")}),
    ]
    with pytest.raises(KproxyError) as ei:
        kp.attach(3, "filter", 5)
    assert ei.value.errno == errno.EINVAL and "bpf-kind must be one of parser, verdict" in ei.value.message
    with pytest.raises(KproxyError) as ei:
        kp.detach(3, "parser", "up")
    assert "direction must be one of a-to-b, b-to-a, both" in ei.value.message
    with pytest.raises(TypeError):
        kp.attach(3, "parser", "lenprefix")
    kp.attach(3, "parser", 5, direction=99)  # raw values reach the kernel's policy
    assert rec.sent[-1][1]["direction"] == 99


@needs_bpf
def test_cli_attach_loads_for_real(shipped_dir):
    """The CLI's default loader with a fake client: a real program fd reaches attach()."""
    import io

    from cli_fakes import FakeKproxy, make_proxy
    from kpctl.cli import main

    client = FakeKproxy([make_proxy(3)])
    seen = []
    orig = client.attach

    def attach(pid, kind, prog, direction="both"):
        seen.append(bpf.prog_info(prog.fileno()))
        orig(pid, kind, prog, direction)

    client.attach = attach
    out, err = io.StringIO(), io.StringIO()
    rc = main(["attach", "3", "parser", "lenprefix"], client_factory=lambda ns: client,
              stdout=out, stderr=err, env={})
    assert rc == 0, err.getvalue()
    assert seen[0].name == "lenprefix" and seen[0].type_name == "socket_filter"
    assert f"parser lenprefix (id {seen[0].id}) attached on both directions" in out.getvalue()
    rc = main(["attach", "3", "verdict", "drop-prefix", "--prefix", "X"],
              client_factory=lambda ns: client, stdout=out, stderr=err, env={})
    assert rc == 0, err.getvalue()
    assert seen[1].name == "drop_prefix"
    rc = main(["attach", "3", "parser", f"{shipped_dir}/multi.o:an_xdp"],
              client_factory=lambda ns: client, stdout=out, stderr=err, env={})
    assert rc == 2 and "is a xdp program" in err.getvalue() and "Error: " in err.getvalue()
