"""kpctl.http: the rules file format, its errors, and the http_rules map
layout that kmod/bpf/http-filter.bpf.c reads."""

from __future__ import annotations

import errno
import struct

import pytest

from kpctl import http

FULL = """\
# a comment line
allow-methods get,HEAD,POST   # trailing comment
deny-host evil.example
deny-path /admin
deny-path /private
allow-path /
max-request-line 8192
max-header-bytes 16384
max-headers 100
max-body-bytes 1048576
"""


def test_parse_reads_every_rule():
    r = http.parse_rules_file(FULL)
    assert r == http.HttpRules(
        allow_methods=frozenset({"GET", "HEAD", "POST"}), deny_hosts=("evil.example",),
        deny_paths=("/admin", "/private"), allow_paths=("/",), max_request_line=8192,
        max_header_bytes=16384, max_headers=100, max_body_bytes=1048576)


def test_empty_file_allows_everything():
    assert http.parse_rules_file("# nothing\n\n") == http.HttpRules()
    assert http.encode(http.HttpRules()) == bytes(http.RULES_SIZE)


@pytest.mark.parametrize("text,message", [
    ("deny-path /a\nbogus 1\n", "rules: line 2: unknown rule 'bogus'"),
    ("\n\nmax-headers many\n", "rules: line 3: max-headers needs a number, not 'many'"),
    ("allow-methods GET,FETCH\n", "rules: line 1: unknown method FETCH"),
    ("deny-path\n", "rules: line 1: expected 'KEYWORD VALUE', got 'deny-path'"),
    ("deny-path /a /b\n", "rules: line 1: expected 'KEYWORD VALUE'"),
    ("max-headers 0\n", "rules: max-headers must be 1 to 4294967295"),
    ("deny-path /" + "x" * 64 + "\n", "1 to 64 bytes"),
    ("".join(f"deny-path /{i}\n" for i in range(9)), "at most 8 path rules"),
])
def test_mistakes_name_the_line(text, message):
    with pytest.raises(http.HttpRulesError) as ei:
        http.parse_rules_file(text)
    assert ei.value.errno == errno.EINVAL
    assert message in str(ei.value.message)


def test_encode_layout_matches_the_filters_struct():
    data = http.encode(http.parse_rules_file(FULL))
    assert len(data) == http.RULES_SIZE == 32 + 16 * 72
    methods, line, hdr, count, body, n_hosts, n_paths = struct.unpack_from("<IIIIQII", data)
    assert methods == (1 << 1) | (1 << 2) | (1 << 3)  # GET HEAD POST
    assert (line, hdr, count, body, n_hosts, n_paths) == (8192, 16384, 100, 1048576, 1, 3)
    host = struct.unpack_from("<II64s", data, 32)
    assert host[:2] == (12, 0) and host[2].rstrip(b"\0") == b"evil.example"
    paths = [struct.unpack_from("<II64s", data, 32 + 8 * 72 + i * 72) for i in range(4)]
    assert [(n, allow, p.rstrip(b"\0")) for n, allow, p in paths] == [
        (6, 0, b"/admin"), (8, 0, b"/private"), (1, 1, b"/"), (0, 0, b"")]


def test_canned_replies_are_complete_closing_responses():
    assert len(http.CANNED_REPLIES) == len(http.REPLY_STATUSES) <= 16
    for status, reply in zip(http.REPLY_STATUSES, http.CANNED_REPLIES):
        head, body = reply.split(b"\r\n\r\n", 1)
        assert head.startswith(f"HTTP/1.1 {status} ".encode())
        assert b"\r\nConnection: close" in head
        assert f"\r\nContent-Length: {len(body)}".encode() in head
        assert len(reply) <= 1024


def test_filter_alone_needs_the_parsers_id():
    with pytest.raises(http.HttpRulesError) as ei:
        http.load_http(parser=False, filter=True)
    assert "parser_prog_id" in ei.value.message
