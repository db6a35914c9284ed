"""Seeing the farm: Prometheus metrics, /status.json, /healthz and the live status page."""
from .server import StatusServer

__all__ = ["StatusServer"]
