"""The one exception kpctl raises: an errno and the kernel's own words."""

from __future__ import annotations

import errno as _errno
import os
from typing import Any


class KproxyError(Exception):
    """A refused request.

    `errno` is the kernel's error number, `message` the extended-ack text
    when the kernel gave one (it names the attribute or the reason), else
    strerror.  str() is "message (ENAME)", e.g.
    "fd-a is not a socket (ENOTSOCK)".
    """

    def __init__(self, errno: int, message: str | None = None) -> None:
        self.errno: int = abs(int(errno))
        self.message: str = message or os.strerror(self.errno)
        super().__init__(self.errno, self.message)

    @property
    def errno_name(self) -> str:
        # Linux's ENOTSUP and EOPNOTSUPP are one number; the kernel and
        # strace say EOPNOTSUPP, Python's table ENOTSUP.
        if self.errno == _errno.EOPNOTSUPP:
            return "EOPNOTSUPP"
        return _errno.errorcode.get(self.errno, f"E{self.errno}")

    def __str__(self) -> str:
        return f"{self.message} ({self.errno_name})"

    def to_dict(self) -> dict[str, Any]:
        return {"errno": self.errno, "errno_name": self.errno_name, "message": self.message}
