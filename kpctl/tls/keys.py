"""TLS key derivation and the few record/handshake parsers it needs.

Pure functions, no sockets: the suites kTLS can take, TLS 1.3
HKDF-Expand-Label (RFC 8446 7.1, 7.3), the TLS 1.2 PRF and key block
(RFC 5246 5, 6.3; RFC 5288 for AES-GCM, RFC 7905 for ChaCha20-Poly1305),
the NSS key log lines OpenSSL writes, and the random of a Client/ServerHello.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

# Cipher types of include/uapi/linux/tls.h.
CIPHER_AES_GCM_128 = 51
CIPHER_AES_GCM_256 = 52
CIPHER_CHACHA20_POLY1305 = 54

TLS12 = "TLSv1.2"
TLS13 = "TLSv1.3"

# Record content types (RFC 8446 B.1).
CHANGE_CIPHER_SPEC = 20
ALERT = 21
HANDSHAKE = 22
APPLICATION_DATA = 23

# Handshake message types.
CLIENT_HELLO = 1
SERVER_HELLO = 2

# RFC 8446 4.1.3: a ServerHello with this random is a HelloRetryRequest.
HELLO_RETRY_RANDOM = bytes.fromhex("cf21ad74e59a6111be1d8c021e65b891c2a211167abb8c5e079e09e2c8a8339c")


@dataclass(frozen=True)
class Suite:
    """A cipher suite the kernel can take over."""

    iana: str  # the IANA name, e.g. "TLS_AES_128_GCM_SHA256"
    openssl: str  # what OpenSSL (and ssl.SSLObject.cipher()) calls it
    version: str  # TLS12 or TLS13
    cipher_type: int  # the kernel's TLS_CIPHER_*
    hash_name: str  # of HKDF (1.3) or the PRF (1.2)

    @property
    def key_len(self) -> int:
        return 16 if self.cipher_type == CIPHER_AES_GCM_128 else 32

    @property
    def is_chacha(self) -> bool:
        return self.cipher_type == CIPHER_CHACHA20_POLY1305

    @property
    def cipher(self) -> str:
        """The cipher family, as the caller may name it: "AES-128-GCM"..."""
        return CIPHER_NAMES[self.cipher_type]


CIPHER_NAMES = {
    CIPHER_AES_GCM_128: "AES-128-GCM",
    CIPHER_AES_GCM_256: "AES-256-GCM",
    CIPHER_CHACHA20_POLY1305: "CHACHA20-POLY1305",
}

# Every TLS 1.3 suite OpenSSL enables by default; for TLS 1.2 only the ECDHE
# AEAD suites (forward secrecy; the CBC and plain-RSA suites kTLS cannot take
# or should not be offered).
SUITES: tuple[Suite, ...] = (
    Suite("TLS_AES_128_GCM_SHA256", "TLS_AES_128_GCM_SHA256", TLS13, CIPHER_AES_GCM_128, "sha256"),
    Suite("TLS_AES_256_GCM_SHA384", "TLS_AES_256_GCM_SHA384", TLS13, CIPHER_AES_GCM_256, "sha384"),
    Suite("TLS_CHACHA20_POLY1305_SHA256", "TLS_CHACHA20_POLY1305_SHA256", TLS13, CIPHER_CHACHA20_POLY1305, "sha256"),
    Suite("TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", "ECDHE-ECDSA-AES128-GCM-SHA256", TLS12, CIPHER_AES_GCM_128, "sha256"),
    Suite("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", "ECDHE-RSA-AES128-GCM-SHA256", TLS12, CIPHER_AES_GCM_128, "sha256"),
    Suite("TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384", "ECDHE-ECDSA-AES256-GCM-SHA384", TLS12, CIPHER_AES_GCM_256, "sha384"),
    Suite("TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384", "ECDHE-RSA-AES256-GCM-SHA384", TLS12, CIPHER_AES_GCM_256, "sha384"),
    Suite("TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256", "ECDHE-ECDSA-CHACHA20-POLY1305", TLS12, CIPHER_CHACHA20_POLY1305, "sha256"),
    Suite("TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256", "ECDHE-RSA-CHACHA20-POLY1305", TLS12, CIPHER_CHACHA20_POLY1305, "sha256"),
)

BY_OPENSSL_NAME = {s.openssl: s for s in SUITES}


def select_suites(names: list[str] | tuple[str, ...] | None) -> tuple[Suite, ...]:
    """The suites `names` asks for: IANA or OpenSSL suite names, or a cipher
    family ("AES-128-GCM", "AES-256-GCM", "CHACHA20-POLY1305") meaning its
    suites of both versions; None: all. ValueError names what is unknown."""
    if names is None:
        return SUITES
    chosen: list[Suite] = []
    for name in names:
        wanted = name.strip().upper()
        found = [s for s in SUITES if wanted in (s.iana, s.openssl, s.cipher)]
        if not found:
            raise ValueError(name)
        chosen.extend(s for s in found if s not in chosen)
    return tuple(chosen)


@dataclass(frozen=True)
class DirectionKeys:
    """What kTLS needs for one direction, in its own terms: for AES-GCM the
    4-byte salt and the 8-byte iv, for ChaCha20-Poly1305 no salt and the
    12-byte iv; rec_seq is the sequence number of the next record."""

    key: bytes
    iv: bytes
    salt: bytes
    rec_seq: int


def hkdf_expand(hash_name: str, prk: bytes, info: bytes, length: int) -> bytes:
    """RFC 5869 2.3."""
    out = b""
    block = b""
    counter = 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hash_name).digest()
        out += block
        counter += 1
    return out[:length]


def hkdf_expand_label(hash_name: str, secret: bytes, label: str, context: bytes, length: int) -> bytes:
    """RFC 8446 7.1: HKDF-Expand(secret, HkdfLabel, length)."""
    full = b"tls13 " + label.encode()
    info = length.to_bytes(2, "big") + bytes([len(full)]) + full + bytes([len(context)]) + context
    return hkdf_expand(hash_name, secret, info, length)


def tls13_traffic_keys(suite: Suite, traffic_secret: bytes, rec_seq: int = 0) -> DirectionKeys:
    """The write key and iv of one direction from its application traffic
    secret (RFC 8446 7.3), split the way kTLS takes them."""
    key = hkdf_expand_label(suite.hash_name, traffic_secret, "key", b"", suite.key_len)
    iv = hkdf_expand_label(suite.hash_name, traffic_secret, "iv", b"", 12)
    if suite.is_chacha:
        return DirectionKeys(key, iv, b"", rec_seq)
    return DirectionKeys(key, iv[4:], iv[:4], rec_seq)


def tls12_prf(hash_name: str, secret: bytes, label: bytes, seed: bytes, length: int) -> bytes:
    """RFC 5246 5: PRF(secret, label, seed) = P_hash(secret, label + seed)."""
    seed = label + seed
    out = b""
    a = seed
    while len(out) < length:
        a = hmac.new(secret, a, hash_name).digest()
        out += hmac.new(secret, a + seed, hash_name).digest()
    return out[:length]


def tls12_traffic_keys(
    suite: Suite, master_secret: bytes, client_random: bytes, server_random: bytes, client_seq: int, server_seq: int
) -> tuple[DirectionKeys, DirectionKeys]:
    """(client write, server write) from the key block (RFC 5246 6.3), each
    starting at its record sequence number. AEAD
    suites have no MAC keys; AES-GCM has 4-byte implicit salts and an 8-byte
    explicit nonce per record, which OpenSSL (and so kTLS here) sets to the
    record sequence number; ChaCha20-Poly1305 has 12-byte ivs (RFC 7905)."""
    iv_len = 12 if suite.is_chacha else 4
    block = tls12_prf(
        suite.hash_name, master_secret, b"key expansion", server_random + client_random, 2 * (suite.key_len + iv_len)
    )
    k = suite.key_len
    client_key, server_key = block[:k], block[k : 2 * k]
    client_iv, server_iv = block[2 * k : 2 * k + iv_len], block[2 * k + iv_len :]
    if suite.is_chacha:
        return DirectionKeys(client_key, client_iv, b"", client_seq), DirectionKeys(server_key, server_iv, b"", server_seq)
    return (
        DirectionKeys(client_key, client_seq.to_bytes(8, "big"), client_iv, client_seq),
        DirectionKeys(server_key, server_seq.to_bytes(8, "big"), server_iv, server_seq),
    )


def keylog_secrets(text: str, client_random: bytes) -> dict[str, bytes]:
    """The secrets of one connection from an NSS key log (the format of
    SSLContext.keylog_filename): label -> secret, for the lines whose client
    random is `client_random` (one log serves many connections)."""
    want = client_random.hex()
    found: dict[str, bytes] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1].lower() == want:
            found[parts[0]] = bytes.fromhex(parts[2])
    return found


def hello_random(handshake: bytes, msg_type: int) -> bytes:
    """The 32-byte random of the first ClientHello/ServerHello in a stream of
    plaintext handshake messages (type, 24-bit length, then legacy_version
    and random: RFC 8446 4.1.2, 4.1.3). ValueError if there is none."""
    pos = 0
    while pos + 4 <= len(handshake):
        kind = handshake[pos]
        length = int.from_bytes(handshake[pos + 1 : pos + 4], "big")
        if kind == msg_type:
            body = handshake[pos + 4 : pos + 4 + length]
            if len(body) < 34:
                break
            return bytes(body[2:34])
        pos += 4 + length
    raise ValueError(f"no complete handshake message of type {msg_type}")


def server_random(handshake: bytes) -> bytes:
    """The random of the ServerHello that is not a HelloRetryRequest."""
    pos = 0
    while True:
        rnd = hello_random(handshake[pos:], SERVER_HELLO)
        if rnd != HELLO_RETRY_RANDOM:
            return rnd
        pos = handshake.index(rnd, pos) + 32
