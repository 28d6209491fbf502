"""kpctl.tls without a kernel: key derivation against published vectors and
OpenSSL's own KDFs, the kTLS structs, the hello parsers, the key log, and the
handshake's errors (which all happen before kTLS is touched)."""

from __future__ import annotations

import errno
import os
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from kpctl.errors import KproxyError
from kpctl.tls import ClientConfig, ServerConfig, TlsError, accept_tls, connect_tls, kernel_has_ktls
from kpctl.tls import keys as K
from kpctl.tls.ktls import pack_crypto_info

# The certificates the kernel's TLS tests use (tests/kernel/tlsutil.py).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "kernel"))
from tlsutil import make_pki, open_fds  # noqa: E402

SUITE = {s.iana: s for s in K.SUITES}
AES128_13 = SUITE["TLS_AES_128_GCM_SHA256"]
AES256_13 = SUITE["TLS_AES_256_GCM_SHA384"]
CHACHA_13 = SUITE["TLS_CHACHA20_POLY1305_SHA256"]
AES128_12 = SUITE["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"]
AES256_12 = SUITE["TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384"]
CHACHA_12 = SUITE["TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256"]

# RFC 8448 section 3 (simple 1-RTT handshake, TLS_AES_128_GCM_SHA256).
RFC8448_CLIENT_AP = bytes.fromhex("9e40646ce79a7f9dc05af8889bce6552875afa0b06df0087f792ebb7c17504a5")
RFC8448_SERVER_AP = bytes.fromhex("a11af9f05531f856ad47116b45a950328204b4f44bfb6b3a4b4f1f3fcb631643")
RFC8448_CLIENT_HELLO = bytes.fromhex(
    "010000c00303cb34ecb1e78163ba1c38c6dacb196a6dffa21a8d9912ec18a2ef6283024dece7000006130113031302010000910000000b"
    "0009000006736572766572ff01000100000a00140012001d0017001800190100010101020103010400230000003300260024001d002099"
    "381de560e4bd43d23d8e435a7dbafeb3c06e51c13cae4d5413691e529aaf2c002b0003020304000d0020001e0403050306030203080408"
    "05080604010501060102010402050206020202002d00020101001c00024001"
)
RFC8448_SERVER_HELLO_RECORD = bytes.fromhex(
    "160303005a020000560303a6af06a4121860dc5e6e60249cd34c95930c8ac5cb1434dac155772ed3e2692800130100002e003300240"
    "01d0020c9828876112095fe66762bdbf7c672e156d6cc253b833df1dd69b1b04e751f0f002b00020304"
)

# The TLS 1.2 PRF vectors posted to the IETF TLS list
# (https://www.ietf.org/mail-archive/web/tls/current/msg03416.html).
PRF_SHA256 = (
    "9bbe436ba940f017b17652849a71db35",
    "a0ba9f936cda311827a6f796ffd5198c",
    "e3f229ba727be17b8d122620557cd453c2aab21d07c3d495329b52d4e61edb5a6b301791e90d35c9c9a46b4e14baf9af0fa022f7077def"
    "17abfd3797c0564bab4fbc91666e9def9b97fce34f796789baa48082d122ee42c5a72e5a5110fff70187347b66",
)
PRF_SHA384 = (
    "b80b733d6ceefcdc71566ea48e5567df",
    "cd665cf6a8447dd6ff8b27555edb7465",
    "7b0c18e9ced410ed1804f2cfa34a336a1c14dffb4900bb5fd7942107e81c83cde9ca0faa60be9fe34f82b1233c9146a0e534cb400fed"
    "2700884f9dc236f80edd8bfa961144c9e8d792eca722a7b32fc3d416d473ebc2c5fd4abfdad05d9184259b5bf8cd4d90fa0d31e2dec4"
    "79e4f1a26066f2eea9a69236a3e52655c9e9aee691c8f3a26854308d5eaa3be85e0990703d73e56f",
)

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl binary")


def openssl_kdf(kind: str, length: int, *opts: str) -> bytes:
    """OpenSSL's own KDF (an implementation independent of ours)."""
    args = ["openssl", "kdf", "-binary", "-keylen", str(length)]
    for o in opts:
        args += ["-kdfopt", o]
    return subprocess.run(args + [kind], check=True, capture_output=True, timeout=30).stdout


# --- TLS 1.3 ------------------------------------------------------------------


def test_tls13_rfc8448_application_keys_split_for_ktls() -> None:
    server = K.tls13_traffic_keys(AES128_13, RFC8448_SERVER_AP)
    client = K.tls13_traffic_keys(AES128_13, RFC8448_CLIENT_AP)
    # RFC 8448: server write key 9f02..e356, iv cf782b88dd83549aadf1e984.
    assert server.key.hex() == "9f02283b6c9c07efc26bb9f2ac92e356"
    assert (server.salt + server.iv).hex() == "cf782b88dd83549aadf1e984"
    assert (server.salt.hex(), server.iv.hex()) == ("cf782b88", "dd83549aadf1e984")
    assert client.key.hex() == "17422dda596ed5d9acd890e3c63f5051"
    assert (client.salt.hex(), client.iv.hex()) == ("5b78923d", "ee08579033e523d9")
    assert client.rec_seq == server.rec_seq == 0


@needs_openssl
@pytest.mark.parametrize("suite,digest", [(AES256_13, "SHA384"), (CHACHA_13, "SHA256")])
def test_tls13_32_byte_keys_match_openssl_hkdf(suite: K.Suite, digest: str) -> None:
    """AES-256-GCM (SHA-384) and ChaCha20 (whole 12-byte iv, no salt): the
    HkdfLabel written out by hand per RFC 8446 7.1, expanded by OpenSSL."""
    secret = bytes(range(48 if digest == "SHA384" else 32))
    keys = K.tls13_traffic_keys(suite, secret, rec_seq=7)
    key_info = b"\x00\x20" + b"\x09tls13 key" + b"\x00"
    iv_info = b"\x00\x0c" + b"\x08tls13 iv" + b"\x00"
    want_key = openssl_kdf("HKDF", 32, f"digest:{digest}", "mode:EXPAND_ONLY", f"hexkey:{secret.hex()}", f"hexinfo:{key_info.hex()}")
    want_iv = openssl_kdf("HKDF", 12, f"digest:{digest}", "mode:EXPAND_ONLY", f"hexkey:{secret.hex()}", f"hexinfo:{iv_info.hex()}")
    assert keys.key == want_key
    assert keys.salt + keys.iv == want_iv
    assert len(keys.salt) == (0 if suite.is_chacha else 4)
    assert keys.rec_seq == 7


# --- TLS 1.2 ------------------------------------------------------------------


@pytest.mark.parametrize("hash_name,vector", [("sha256", PRF_SHA256), ("sha384", PRF_SHA384)])
def test_tls12_prf_ietf_vectors(hash_name: str, vector: tuple[str, str, str]) -> None:
    secret, seed, want = (bytes.fromhex(x) for x in vector)
    assert K.tls12_prf(hash_name, secret, b"test label", seed, len(want)) == want


@needs_openssl
@pytest.mark.parametrize("suite", [AES128_12, AES256_12, CHACHA_12], ids=lambda s: s.cipher)
def test_tls12_key_block_layout_matches_openssl_prf(suite: K.Suite) -> None:
    """key expansion over server_random + client_random (RFC 5246 6.3),
    split into client key, server key, client iv, server iv."""
    master = bytes(range(48))
    client_random, server_random = bytes([1]) * 32, bytes([2]) * 32
    iv_len = 12 if suite.is_chacha else 4
    n = suite.key_len
    block = openssl_kdf(
        "TLS1-PRF",
        2 * (n + iv_len),
        f"digest:{suite.hash_name.upper()}",
        f"hexsecret:{master.hex()}",
        f"hexseed:{(b'key expansion' + server_random + client_random).hex()}",
    )
    client, server = K.tls12_traffic_keys(suite, master, client_random, server_random, 1, 5)
    assert client.key == block[:n] and server.key == block[n : 2 * n]
    civ, siv = block[2 * n : 2 * n + iv_len], block[2 * n + iv_len :]
    if suite.is_chacha:
        assert (client.iv, client.salt, server.iv, server.salt) == (civ, b"", siv, b"")
    else:
        # The implicit salt; the explicit nonce is the record sequence number.
        assert (client.salt, server.salt) == (civ, siv)
        assert (client.iv.hex(), server.iv.hex()) == ("0000000000000001", "0000000000000005")
    assert (client.rec_seq, server.rec_seq) == (1, 5)


# --- kTLS structs ---------------------------------------------------------------


@pytest.mark.parametrize("suite,size", [(AES128_12, 40), (AES256_13, 56), (CHACHA_13, 56)], ids=["gcm128", "gcm256", "chacha"])
def test_crypto_info_sizes(suite: K.Suite, size: int) -> None:
    keys = K.tls13_traffic_keys(suite, bytes(48))
    version = suite.version
    assert len(pack_crypto_info(version, suite, keys)) == size


def test_crypto_info_layout() -> None:
    """struct tls12_crypto_info_aes_gcm_128: version, cipher_type (native
    u16), iv[8], key[16], salt[4], rec_seq[8] (big-endian, as on the wire)."""
    keys = K.DirectionKeys(key=bytes(range(16)), iv=b"IVIVIVIV", salt=b"SALT", rec_seq=0x0102)
    raw = pack_crypto_info("TLSv1.3", AES128_13, keys)
    assert struct.unpack("=HH", raw[:4]) == (0x0304, 51)
    assert raw[4:12] == b"IVIVIVIV" and raw[12:28] == bytes(range(16)) and raw[28:32] == b"SALT"
    assert raw[32:] == bytes(6) + b"\x01\x02"
    with pytest.raises(ValueError):
        pack_crypto_info("TLSv1.3", AES256_13, keys)  # a 16-byte key for AES-256


# --- hellos, key log, suites ---------------------------------------------------------


def test_server_hello_random_from_captured_record() -> None:
    body = RFC8448_SERVER_HELLO_RECORD[5:]
    assert K.server_random(body).hex() == "a6af06a4121860dc5e6e60249cd34c95930c8ac5cb1434dac155772ed3e26928"
    assert K.hello_random(RFC8448_CLIENT_HELLO, K.CLIENT_HELLO).hex() == (
        "cb34ecb1e78163ba1c38c6dacb196a6dffa21a8d9912ec18a2ef6283024dece7"
    )
    # A HelloRetryRequest is a ServerHello too: the random is the real one's.
    hrr = bytes([2]) + (38).to_bytes(3, "big") + b"\x03\x03" + K.HELLO_RETRY_RANDOM + bytes(4)
    assert K.server_random(hrr + body) == K.server_random(body)
    with pytest.raises(ValueError):
        K.hello_random(body[:20], K.SERVER_HELLO)  # cut short
    with pytest.raises(ValueError):
        K.hello_random(RFC8448_CLIENT_HELLO, K.SERVER_HELLO)


def test_keylog_lines_found_by_client_random() -> None:
    a, b = "aa" * 32, "bb" * 32
    log = (
        "# TLS secrets log file, generated by OpenSSL / Python\n"
        f"CLIENT_TRAFFIC_SECRET_0 {a} {'01' * 32}\n"
        f"SERVER_TRAFFIC_SECRET_0 {b} {'02' * 32}\n"
        f"SERVER_TRAFFIC_SECRET_0 {a} {'03' * 32}\n"
        f"CLIENT_RANDOM {b} {'04' * 48}\n"
    )
    assert K.keylog_secrets(log, bytes.fromhex(a)) == {
        "CLIENT_TRAFFIC_SECRET_0": bytes([1]) * 32,
        "SERVER_TRAFFIC_SECRET_0": bytes([3]) * 32,
    }
    assert K.keylog_secrets(log, bytes.fromhex(b))["CLIENT_RANDOM"] == bytes([4]) * 48
    assert K.keylog_secrets(log, bytes(32)) == {}


def test_suite_selection_by_family_and_name() -> None:
    assert [s.iana for s in K.select_suites(["aes-128-gcm"])] == [
        "TLS_AES_128_GCM_SHA256",
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    ]
    assert K.select_suites(["ECDHE-RSA-CHACHA20-POLY1305", "TLS_AES_256_GCM_SHA384"]) == (CHACHA_12, AES256_13)
    assert {s.cipher_type for s in K.SUITES} == {51, 52, 54}
    with pytest.raises(ValueError):
        K.select_suites(["AES128-SHA"])


# --- configs and handshakes (no kTLS needed until the install) -------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A self-signed EC P-256 server certificate for "localhost", and a second,
    unrelated one to stand for a wrong CA."""
    return make_pki(tmp_path_factory.mktemp("pki"))


def test_config_errors_name_the_problem(pki: dict[str, str], tmp_path: Path) -> None:
    with pytest.raises(TlsError) as e:
        ServerConfig(pki["server_cert"], pki["server_key"], ciphers=["AES-128-CBC"])
    assert e.value.errno == errno.EOPNOTSUPP
    assert str(e.value).startswith("cipher AES-128-CBC cannot be offloaded to kTLS (choose from AES-128-GCM, ")
    with pytest.raises(TlsError) as e:
        ServerConfig(pki["server_cert"], pki["server_key"], versions=["TLSv1.1"])
    assert str(e.value).startswith("TLS version TLSv1.1 cannot be offloaded to kTLS") and e.value.errno == errno.EOPNOTSUPP
    with pytest.raises(TlsError) as e:
        ServerConfig(pki["server_cert"], pki["server_key"], versions=["TLSv1.3"], ciphers=["ECDHE-RSA-AES128-GCM-SHA256"])
    assert (e.value.message, e.value.errno) == ("no chosen cipher suite is for TLSv1.3", errno.EOPNOTSUPP)
    with pytest.raises(TlsError) as e:
        ServerConfig(str(tmp_path / "missing.pem"), pki["server_key"])
    assert e.value.errno == errno.ENOENT and "cannot load certificate" in str(e.value)
    with pytest.raises(TlsError) as e:
        ServerConfig(pki["server_cert"], pki["other_key"])
    assert e.value.errno == errno.EINVAL and "key values mismatch" in str(e.value)
    with pytest.raises(TlsError) as e:
        ClientConfig(ca=pki["server_cert"])
    assert str(e.value) == (
        "checking the server's certificate needs its name (server_name), or check_hostname=False (EINVAL)"
    )
    assert isinstance(e.value, KproxyError)


def test_tls13_suite_choice_reaches_openssl(pki: dict[str, str]) -> None:
    """Python 3.11 cannot choose TLS 1.3 suites; kpctl.tls does (via OpenSSL)."""
    cfg = ServerConfig(pki["server_cert"], pki["server_key"], versions=["TLSv1.3"], ciphers=["CHACHA20-POLY1305"])
    with cfg._source.lease() as klc:
        tls13 = [c["name"] for c in klc.ctx.get_ciphers() if c["protocol"] == "TLSv1.3"]
        assert tls13 == ["TLS_CHACHA20_POLY1305_SHA256"]
        assert klc.ctx.minimum_version == klc.ctx.maximum_version == ssl.TLSVersion.TLSv1_3
        assert klc.ctx.num_tickets == 0
        assert klc.ctx.options & ssl.OP_NO_RENEGOTIATION
    cfg.close()


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as lsn:
        c = socket.create_connection(lsn.getsockname(), timeout=10)
        s, _ = lsn.accept()
    return c, s


def test_handshake_then_install_or_no_ktls(pki: dict[str, str]) -> None:
    """A full handshake against Python's ssl; then the kernel: on a kernel
    without kTLS (this host's) the install fails with the documented error,
    on one with kTLS both directions are installed."""
    cfg = ServerConfig(pki["server_cert"], pki["server_key"])
    c, s = tcp_pair()
    peer_ctx = ssl.create_default_context(cafile=pki["server_cert"])
    peer = threading.Thread(target=lambda: peer_ctx.wrap_socket(c, server_hostname="localhost"), daemon=True)
    peer.start()
    try:
        session = accept_tls(s, cfg, timeout=10)
    except TlsError as e:
        assert not kernel_has_ktls()
        assert str(e) in ("kernel has no kTLS (CONFIG_TLS) (ENOENT)", "kernel has no kTLS (CONFIG_TLS) (ENOPROTOOPT)")
        assert s.fileno() >= 0  # left open for the caller to close
    else:
        assert kernel_has_ktls()
        assert (session.version, session.cipher) == ("TLSv1.3", "TLS_AES_256_GCM_SHA384")
    finally:
        peer.join(10)
        c.close()
        s.close()
        cfg.close()


def test_garbage_instead_of_client_hello(pki: dict[str, str]) -> None:
    cfg = ServerConfig(pki["server_cert"], pki["server_key"])
    before = open_fds()
    c, s = tcp_pair()
    c.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    with pytest.raises(TlsError) as e:
        accept_tls(s, cfg, timeout=10)
    assert str(e.value) == "TLS handshake failed: the peer sent no TLS record (it began with b'GET /') (EPROTO)"
    assert s.gettimeout() is None  # the caller's blocking mode is back
    c.close()
    s.close()
    assert open_fds() == before
    cfg.close()


def test_peer_that_never_answers_times_out(pki: dict[str, str]) -> None:
    cfg = ClientConfig(ca=pki["server_cert"], server_name="localhost")
    c, s = tcp_pair()
    t0 = time.monotonic()
    with pytest.raises(TlsError) as e:
        connect_tls(c, cfg, timeout=0.5)
    took = time.monotonic() - t0
    assert str(e.value) == "TLS handshake timed out after 0.5 s (ETIMEDOUT)"
    assert 0.5 <= took < 3
    assert s.recv(5)[:1] == b"\x16"  # our ClientHello went out
    c.close()
    s.close()
    cfg.close()


def test_not_a_connected_tcp_socket(pki: dict[str, str]) -> None:
    cfg = ClientConfig(verify=False)
    with socket.socket() as unconnected, pytest.raises(TlsError) as e:
        connect_tls(unconnected, cfg)
    assert e.value.errno == errno.ENOTCONN and str(e.value).startswith("not a connected TCP socket")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, pytest.raises(TlsError) as e:
        connect_tls(udp, cfg)
    assert str(e.value) == "not a connected TCP socket (EINVAL)"
    cfg.close()


def test_wrong_ca_and_peer_alert(pki: dict[str, str]) -> None:
    """Our client refuses a certificate its CA did not sign; the peer server
    gets our alert and says so."""
    cfg = ClientConfig(ca=pki["other_cert"], server_name="localhost")
    c, s = tcp_pair()
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(pki["server_cert"], pki["server_key"])
    peer_error: list[BaseException] = []

    def serve() -> None:
        try:
            server_ctx.wrap_socket(s, server_side=True)
        except ssl.SSLError as e:
            peer_error.append(e)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    with pytest.raises(TlsError) as e:
        connect_tls(c, cfg, timeout=10)
    t.join(10)
    assert e.value.errno == errno.EPROTO
    assert str(e.value).startswith("TLS handshake failed: certificate verify failed: ")
    assert peer_error and "UNKNOWN_CA" in str(peer_error[0]).upper()
    c.close()
    s.close()
    cfg.close()


def test_key_log_is_in_memory_and_emptied(pki: dict[str, str]) -> None:
    """The key log is a memfd (no path on disk) and holds nothing once no
    handshake is in flight."""
    cfg = ServerConfig(pki["server_cert"], pki["server_key"])
    c, s = tcp_pair()
    peer_ctx = ssl.create_default_context(cafile=pki["server_cert"])
    threading.Thread(target=lambda: peer_ctx.wrap_socket(c, server_hostname="localhost"), daemon=True).start()
    with cfg._source.lease() as klc:
        assert os.readlink(f"/proc/self/fd/{klc.fd}").startswith("/memfd:kpctl-tls-keylog")
    try:
        accept_tls(s, cfg, timeout=10)
    except TlsError:
        pass  # no kTLS here: the handshake still ran and logged
    with cfg._source.lease() as klc:
        pass
    assert os.fstat(klc.fd).st_size == 0
    c.close()
    s.close()
    cfg.close()


def test_key_log_rotates_when_it_grows_while_busy(pki: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A log that passed the limit while handshakes were in flight is replaced
    for new handshakes and closed when its last one ends: memory and fds
    stay bounded."""
    from kpctl.tls import context

    monkeypatch.setattr(context, "LOG_LIMIT", 1000)
    cfg = ServerConfig(pki["server_cert"], pki["server_key"])
    baseline = open_fds()
    with cfg._source.lease() as first:
        os.write(first.fd, b"x" * 2000)  # as if many handshakes had logged
        with cfg._source.lease() as second:
            assert second is not first
            assert first.fd >= 0  # still in use
        assert open_fds() == baseline + 2  # the new memfd and its log file
    assert first.fd == -1
    assert open_fds() == baseline
    with cfg._source.lease() as third:
        assert third is second
    cfg.close()
    assert open_fds() == baseline - 2
