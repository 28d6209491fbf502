"""kpctl: manage kproxy, the in-kernel joiner of two TCP sockets.

The library (this package minus cli.py and shell/) needs nothing beyond
the standard library: its netlink is kpctl.wire, the family definition
kpctl/family.py (generated from schema/kproxy.yaml).  PyYAML is imported
only to read a schema named by $KPROXY_SCHEMA, pyroute2 only by
kpctl.pyroute2_msgs, for outside clients.

Names are imported on first use so that `kpctl --help` pays for none of it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .client import Kproxy, Monitor
    from .errors import KproxyError
    from .model import DirStats, Endpoint, Event, Listener, ListenerEvent, Proxy, SockInfo, Totals

_LAZY = {
    "Kproxy": ".client",
    "Monitor": ".client",
    "KproxyError": ".errors",
    "DirStats": ".model",
    "Endpoint": ".model",
    "Event": ".model",
    "Listener": ".model",
    "ListenerEvent": ".model",
    "Proxy": ".model",
    "SockInfo": ".model",
    "Totals": ".model",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module, __name__), name)
