"""The kernel's TLS ULP: attach it, install keys, read back what is set.

Layouts and constants from include/uapi/linux/tls.h (taken from
/usr/src/linux-headers-6.12.118+deb12-common/include/uapi/linux/tls.h; the
same in 6.1 and 7.2): struct tls_crypto_info { __u16 version; __u16
cipher_type; } followed by iv, key, salt and rec_seq as unsigned char arrays,
native byte order for the two u16:
  tls12_crypto_info_aes_gcm_128      iv[8]  key[16] salt[4] rec_seq[8] = 40
  tls12_crypto_info_aes_gcm_256      iv[8]  key[32] salt[4] rec_seq[8] = 56
  tls12_crypto_info_chacha20_poly1305 iv[12] key[32] salt[0] rec_seq[8] = 56
"""

from __future__ import annotations

import errno
import socket
import struct
from dataclasses import dataclass

from kpctl.tls.errors import TlsError
from kpctl.tls.keys import CIPHER_NAMES, TLS12, TLS13, DirectionKeys, Suite

TCP_ULP = 31  # include/uapi/linux/tcp.h
SOL_TLS = 282  # include/linux/socket.h
TLS_TX = 1
TLS_RX = 2
TLS_GET_RECORD_TYPE = 2  # cmsg type of a received record's content type

VERSION_NUMBERS = {TLS12: 0x0303, TLS13: 0x0304}
VERSION_NAMES = {v: k for k, v in VERSION_NUMBERS.items()}

_INFO = struct.Struct("=HH")  # struct tls_crypto_info

NO_KTLS = "kernel has no kTLS (CONFIG_TLS)"


def pack_crypto_info(version: str, suite: Suite, keys: DirectionKeys) -> bytes:
    """The tls12_crypto_info_* struct for setsockopt(SOL_TLS, TLS_TX/TLS_RX)."""
    iv_len, salt_len = (12, 0) if suite.is_chacha else (8, 4)
    if len(keys.key) != suite.key_len or len(keys.iv) != iv_len or len(keys.salt) != salt_len:
        raise ValueError(f"key material does not fit {suite.iana}")
    return (
        _INFO.pack(VERSION_NUMBERS[version], suite.cipher_type)
        + keys.iv
        + keys.key
        + keys.salt
        + keys.rec_seq.to_bytes(8, "big")
    )


def attach_ulp(sock: socket.socket) -> None:
    """Turn the socket into a TLS ULP socket (keys still to come)."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, TCP_ULP, b"tls")
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ENOPROTOOPT):
            raise TlsError(e.errno, NO_KTLS) from None
        if e.errno == errno.ENOTCONN:
            raise TlsError(e.errno, "the connection ended right after the TLS handshake (kTLS needs an established socket)") from None
        if e.errno == errno.EEXIST:
            raise TlsError(e.errno, "the socket already has a TLS (or other) ULP") from None
        raise TlsError(e.errno, f"cannot attach the kernel's TLS layer: {e.strerror}") from None


def install(sock: socket.socket, version: str, suite: Suite, tx: DirectionKeys, rx: DirectionKeys) -> None:
    """Attach the ULP and install both directions' keys."""
    attach_ulp(sock)
    for name, opt, keys in (("TX", TLS_TX, tx), ("RX", TLS_RX, rx)):
        try:
            sock.setsockopt(SOL_TLS, opt, pack_crypto_info(version, suite, keys))
        except OSError as e:
            if e.errno in (errno.EINVAL, errno.ENOENT, errno.EOPNOTSUPP, errno.ENOPROTOOPT):
                # The kernel's crypto API lacks the AEAD (e.g. no chacha20poly1305).
                raise TlsError(
                    errno.EOPNOTSUPP, f"kernel kTLS cannot take {suite.cipher} for {version} ({name}: {e.strerror})"
                ) from None
            raise TlsError(e.errno, f"cannot install the kTLS {name} key: {e.strerror}") from None


@dataclass(frozen=True)
class KtlsDirection:
    """What one direction of a kTLS socket has: version and cipher."""

    version: str  # "TLSv1.2" / "TLSv1.3", or "0x...." for one kpctl does not know
    cipher_type: int

    @property
    def cipher(self) -> str:
        return CIPHER_NAMES.get(self.cipher_type, str(self.cipher_type))


def ktls_info(sock: socket.socket | int) -> dict[str, KtlsDirection | None]:
    """{"tx": ..., "rx": ...}: what kTLS has for each direction of a socket
    (None: no key installed there). Reads only struct tls_crypto_info, never
    the keys. A socket without the TLS ULP gives None for both."""
    fd = sock if isinstance(sock, int) else sock.fileno()
    with socket.socket(fileno=fd) as s:
        try:
            return {"tx": _direction(s, TLS_TX), "rx": _direction(s, TLS_RX)}
        finally:
            s.detach()


def _direction(s: socket.socket, opt: int) -> KtlsDirection | None:
    try:
        raw = s.getsockopt(SOL_TLS, opt, _INFO.size)
    except OSError as e:
        # ENOPROTOOPT: no TLS ULP (TCP passes SOL_TLS to IP); EBUSY: the ULP
        # is there but this direction has no key yet.
        if e.errno in (errno.ENOPROTOOPT, errno.EBUSY, errno.EOPNOTSUPP):
            return None
        raise TlsError(e.errno, f"cannot read the socket's kTLS state: {e.strerror}") from None
    version, cipher_type = _INFO.unpack(raw)
    return KtlsDirection(VERSION_NAMES.get(version, f"0x{version:04x}"), cipher_type)


def kernel_has_ktls() -> bool:
    """Whether this kernel has the TLS ULP (loading tls.ko as a side effect,
    as any setsockopt(TCP_ULP, "tls") does when the caller may load modules).
    Asked on an unconnected socket: the kernel finds the ULP, then refuses it
    (ENOTCONN) because the socket is not established."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.setsockopt(socket.IPPROTO_TCP, TCP_ULP, b"tls")
        except OSError as e:
            return e.errno not in (errno.ENOENT, errno.ENOPROTOOPT)
    return True
