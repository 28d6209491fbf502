"""The error of kpctl.tls: a KproxyError with an errno that fits."""

from __future__ import annotations

from kpctl.errors import KproxyError


class TlsError(KproxyError):
    """A TLS handshake or kTLS install that did not happen.

    str() is "message (ENAME)" like every KproxyError, e.g.
    "TLS handshake failed: certificate verify failed: unable to get local
    issuer certificate (EPROTO)".
    """
