"""The status listener: /metrics, /status.json, /healthz and the page, on a small HTTP server of its own.

It runs in the agent's process and reads the agent's objects directly; a small request pool bounds
what a burst of scrapes or open browser tabs can take from the miners. GET and HEAD, one request per
connection (every answer says Connection: close). gevent's WSGI server did the same job but cost about
6 MB of resident memory (it imports http.client, email and ssl); prometheus-client (about 10 MB) is
imported by the first scrape of /metrics.
"""
import logging
import pkgutil
from typing import TYPE_CHECKING, Any, List, Optional, Tuple
from urllib.parse import unquote, urlsplit

import gevent
from gevent import socket
from gevent.pool import Pool
from gevent.server import StreamServer

from ..config import listen_address
from .snapshot import is_healthy, status_json

if TYPE_CHECKING:  # pragma: no cover
    from ..server import Agent

log = logging.getLogger("gagent.status")

MAX_REQUESTS = 16         # requests served at once; more wait in the kernel's accept queue
MAX_REQUEST_BYTES = 8192  # request line and headers; a longer request is answered 400
READ_SECONDS = 10.0       # to receive the whole request
SEND_SECONDS = 30.0       # to send the answer (/metrics with per-worker series can be megabytes)
LINGER_SECONDS = 2.0      # reading what the client still sends after the answer, before closing
TEXT = "text/plain; charset=utf-8"
Answer = Tuple[str, str, bytes, List[Tuple[str, str]]]  # status, content type, body, extra headers


class StatusServer:
    """HTTP status listener for one agent: `start()`, `.address`, `stop()`."""

    def __init__(self, agent: "Agent", address: Optional[Tuple[str, int]] = None) -> None:
        self.agent = agent
        self.registry: Any = None  # the Prometheus registry, made by the first scrape
        self.page = pkgutil.get_data(__name__.rpartition(".")[0], "page.html") or b""
        if address is None:
            address = listen_address(agent.config.http_listen)
        self._server = StreamServer(address, self._serve, spawn=Pool(MAX_REQUESTS))

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

    def answer(self, method: str, path: str) -> Answer:
        """What a request for `path` gets (the body also for HEAD: its length is the Content-Length)."""
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", TEXT, b"only GET and HEAD\n", [("Allow", "GET, HEAD")]
        if path in ("/", "/index.html"):
            return "200 OK", "text/html; charset=utf-8", self.page, []
        if path == "/status.json":
            return "200 OK", "application/json", status_json(self.agent), []
        if path == "/metrics":
            from . import metrics  # prometheus-client: paid by the first scrape, not by every agent
            if self.registry is None:
                self.registry = metrics.make_registry(self.agent)
            return "200 OK", metrics.CONTENT_TYPE_LATEST, metrics.metrics_text(self.registry), []
        if path == "/healthz":
            if is_healthy(self.agent):
                return "200 OK", TEXT, b"ok\n", []
            if not self.agent.listening:
                return "503 Service Unavailable", TEXT, b"miner port not listening\n", []
            return "503 Service Unavailable", TEXT, b"no pool connection ready\n", []
        return "404 Not Found", TEXT, b"not found\n", []

    def _serve(self, sock: socket.socket, _peer: Any) -> None:
        """One connection: read the request, send the answer, close."""
        try:
            head = _read_head(sock)
            words = head.split(b"\n", 1)[0].decode("latin-1").split()
            method = words[0] if words else ""
            if not _complete(head):
                if len(head) <= MAX_REQUEST_BYTES:
                    return  # closed or stalled before the end of the request: nobody to answer
                status, content_type, body, extra = "400 Bad Request", TEXT, b"request too large\n", []
            elif len(words) != 3 or not words[2].startswith("HTTP/1."):
                status, content_type, body, extra = "400 Bad Request", TEXT, b"bad request line\n", []
            else:
                target = urlsplit(words[1]).path if "://" in words[1] else words[1].partition("?")[0]
                try:
                    status, content_type, body, extra = self.answer(method, unquote(target or "/"))
                except Exception:
                    log.exception("status request %s %s failed", method, words[1][:200])
                    status, content_type, body, extra = "500 Internal Server Error", TEXT, b"internal error\n", []
            headers = [("Content-Type", content_type), ("Content-Length", str(len(body))),
                       ("Cache-Control", "no-store"), ("Connection", "close")] + extra
            response = "HTTP/1.1 %s\r\n%s\r\n\r\n" % (status, "\r\n".join("%s: %s" % h for h in headers))
            sock.settimeout(SEND_SECONDS)
            sock.sendall(response.encode("latin-1") + (b"" if method == "HEAD" else body))
            sock.shutdown(socket.SHUT_WR)
            # closing with unread bytes would reset the connection, and could lose the answer's end
            with gevent.Timeout(LINGER_SECONDS, False):
                while sock.recv(65536):
                    pass
        except OSError:
            pass  # the client went away (or stalled for SEND_SECONDS): nothing to tell it
        finally:
            sock.close()


def _complete(head: bytes) -> bool:
    return b"\r\n\r\n" in head or b"\n\n" in head


def _read_head(sock: socket.socket) -> bytes:
    """The request line and headers as received until they end, the client closes or stalls (READ_SECONDS
    for the whole request), or they exceed MAX_REQUEST_BYTES."""
    head = b""
    with gevent.Timeout(READ_SECONDS, False):
        while not _complete(head) and len(head) <= MAX_REQUEST_BYTES:
            chunk = sock.recv(4096)
            if not chunk:
                break
            head += chunk
    return head
