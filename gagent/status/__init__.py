"""Seeing the farm: Prometheus metrics, /status.json, /healthz and the live status page.

StatusServer is loaded on first use, so that importing gagent.status.snapshot (the log summary line
does) does not load the listener.
"""
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from .server import StatusServer

__all__ = ["StatusServer"]


def __getattr__(name: str) -> Any:
    if name == "StatusServer":
        from .server import StatusServer
        return StatusServer
    raise AttributeError("module %r has no attribute %r" % (__name__, name))
