"""The status listener: /metrics, /status.json, /healthz and the page, on a gevent WSGI server.

It runs in the agent's process and reads the agent's objects directly; a small request pool bounds
what a burst of scrapes or open browser tabs can take from the miners.
"""
import logging
import pkgutil
from typing import TYPE_CHECKING, Any, Callable, Iterable, List, Optional, Tuple

from gevent.pool import Pool
from gevent.pywsgi import WSGIServer
from prometheus_client import CONTENT_TYPE_LATEST

from ..config import listen_address
from .metrics import make_registry, metrics_text
from .snapshot import is_healthy, status_json

if TYPE_CHECKING:  # pragma: no cover
    from ..server import Agent

log = logging.getLogger("gagent.status")

MAX_REQUESTS = 16  # requests served at once; more wait in the kernel's accept queue
StartResponse = Callable[[str, List[Tuple[str, str]]], Any]


class StatusServer:
    """HTTP status listener for one agent: `start()`, `.address`, `stop()`."""

    def __init__(self, agent: "Agent", address: Optional[Tuple[str, int]] = None) -> None:
        self.agent = agent
        self.registry = make_registry(agent)
        self.page = pkgutil.get_data(__name__.rpartition(".")[0], "page.html") or b""
        if address is None:
            address = listen_address(agent.config.http_listen)
        self._server = WSGIServer(address, self.application, spawn=Pool(MAX_REQUESTS), log=None,
                                  error_log=log)

    @property
    def address(self) -> Tuple[str, int]:
        """(ip, port) actually bound."""
        return self._server.address[:2]

    def start(self) -> None:
        """Bind and serve (raises OSError if the port is taken)."""
        self._server.start()
        log.info("status page on http://%s:%d/ (metrics at /metrics)", *self.address)

    def stop(self, timeout: float = 2.0) -> None:
        self._server.stop(timeout=timeout)

    def application(self, environ: dict, start_response: StartResponse) -> Iterable[bytes]:
        method = environ["REQUEST_METHOD"]
        path = environ.get("PATH_INFO") or "/"
        if method not in ("GET", "HEAD"):
            return _respond(start_response, "405 Method Not Allowed", "text/plain; charset=utf-8",
                            b"only GET and HEAD\n", method, [("Allow", "GET, HEAD")])
        if path in ("/", "/index.html"):
            status, content_type, body = "200 OK", "text/html; charset=utf-8", self.page
        elif path == "/status.json":
            status, content_type, body = "200 OK", "application/json", status_json(self.agent)
        elif path == "/metrics":
            status, content_type, body = "200 OK", CONTENT_TYPE_LATEST, metrics_text(self.registry)
        elif path == "/healthz":
            content_type = "text/plain; charset=utf-8"
            if is_healthy(self.agent):
                status, body = "200 OK", b"ok\n"
            elif not self.agent.listening:
                status, body = "503 Service Unavailable", b"miner port not listening\n"
            else:
                status, body = "503 Service Unavailable", b"no pool connection ready\n"
        else:
            status, content_type, body = "404 Not Found", "text/plain; charset=utf-8", b"not found\n"
        return _respond(start_response, status, content_type, body, method)


def _respond(start_response: StartResponse, status: str, content_type: str, body: bytes, method: str,
             extra: Optional[List[Tuple[str, str]]] = None) -> List[bytes]:
    headers = [("Content-Type", content_type), ("Content-Length", str(len(body))),
               ("Cache-Control", "no-store")] + (extra or [])
    start_response(status, headers)
    return [] if method == "HEAD" else [body]
