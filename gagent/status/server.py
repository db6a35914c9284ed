"""The status listener: /metrics, /status.json, /history.json, /healthz and the page, on a small HTTP server
of its own.

It runs in the agent's process and reads the agent's objects directly; a small request pool bounds
what a burst of scrapes or open browser tabs can take from the miners. GET and HEAD, one request per
connection (every answer says Connection: close). gevent's WSGI server did the same job but cost about
6 MB of resident memory (it imports http.client, email and ssl); prometheus-client (about 10 MB) is
imported by the first scrape of /metrics.

Requests for /status.json, /history.json or /metrics that come while one is being built wait for that
build and get the same body, instead of starting their own; /metrics is also answered again for
METRICS_CACHE_SECONDS.
"""
import logging
import pkgutil
import time
from typing import TYPE_CHECKING, Any, Callable, List, Optional, Sequence, Tuple, Union
from urllib.parse import unquote, urlsplit

import gevent
from gevent import socket
from gevent.event import AsyncResult
from gevent.pool import Pool
from gevent.server import StreamServer

from ..config import listen_address
from .history import History, sample_agents
from .snapshot import farm_health_problem, status_json_chunks

if TYPE_CHECKING:  # pragma: no cover
    from ..farm import Farm

log = logging.getLogger("gagent.status")

MAX_REQUESTS = 16         # requests served at once; more wait in the kernel's accept queue
MAX_REQUEST_BYTES = 8192  # request line and headers; a longer request is answered 400
READ_SECONDS = 10.0       # to receive the whole request
SEND_SECONDS = 30.0       # to send the answer (/metrics with per-worker series can be megabytes)
LINGER_SECONDS = 2.0      # reading what the client still sends after the answer, before closing
# A built body is answered again for this long. /metrics is a few kB: kept, it spares a second Prometheus
# server (or a quick re-scrape) a rebuild. /status.json is about 2.7 MB at 10,000 miners: kept for 2 s,
# it raised the agent's resident memory by as much in the benchmark (one page, scraped every 5 s)
# and saved nothing; requests that come while it is being built still share that build.
METRICS_CACHE_SECONDS = 2.0
STATUS_CACHE_SECONDS = 0.0
# /history.json is about 40 kB per series (a full day); a page asks for it once, when it opens.
HISTORY_CACHE_SECONDS = 0.0
TEXT = "text/plain; charset=utf-8"
Body = Union[bytes, Sequence[bytes]]  # one piece, or pieces sent one after the other
Answer = Tuple[str, str, Body, List[Tuple[str, str]]]  # status, content type, body, extra headers


class Cached:
    """A body built by `build()` when asked and shared: every request that comes while it is being
    built gets it too, and so does every request in the `seconds` after its build began (0: none).

    A kept body is let go when it expires (a timer), not when the next request comes.
    """

    def __init__(self, build: Callable[[], Body], seconds: float) -> None:
        self.build = build
        self.seconds = seconds
        self.body: Optional[Body] = None
        self.expires = 0.0
        self._building: Optional[AsyncResult] = None
        self._timer: Any = None

    def get(self) -> Body:
        if self.body is not None and time.monotonic() < self.expires:
            return self.body
        building = self._building
        if building is not None:
            building.wait()
            if building.successful():
                return building.value
        result = self._building = AsyncResult()  # a failed build is not shared: each request tries its own
        started = time.monotonic()
        try:
            body = self.build()
        except BaseException as exc:
            result.set_exception(exc)
            raise
        finally:
            if self._building is result:
                self._building = None
        result.set(body)
        if self.seconds > 0:
            self.body, self.expires = body, started + self.seconds
            if self._timer is None:  # fires `seconds` after the last build ended: it has expired by then
                self._timer = gevent.get_hub().loop.timer(self.seconds, ref=False)
            self._timer.stop()
            self._timer.start(self._drop)
        return body

    def _drop(self) -> None:
        if time.monotonic() >= self.expires:
            self.body = None

    def close(self) -> None:
        self.body = None
        if self._timer is not None:
            self._timer.stop()
            self._timer.close()
            self._timer = None


class StatusServer:
    """HTTP status listener for the farm (every listener): `start()`, `.address`, `stop()`.

    It keeps the farm's History (its own unless one is given), sampled from `start()` to `stop()`: one
    series per listener, by its name, and their total.
    """

    def __init__(self, farm: "Farm", address: Optional[Tuple[str, int]] = None,
                 history: Optional[History] = None) -> None:
        self.farm = farm
        self.registry: Any = None  # the Prometheus registry, made by the first scrape
        self.page = pkgutil.get_data(__name__.rpartition(".")[0], "page.html") or b""
        if address is None:
            address = listen_address(farm.config.http_listen)
        self._server = StreamServer(address, self._serve, spawn=Pool(MAX_REQUESTS))
        self._status_json = Cached(lambda: status_json_chunks(self.farm), STATUS_CACHE_SECONDS)
        self._metrics = Cached(self._metrics_text, METRICS_CACHE_SECONDS)
        if history is None:
            history = History(lambda: sample_agents([(agent.name, agent) for agent in self.farm.agents]))
        self.history = history
        self._history_json = Cached(history.to_json, HISTORY_CACHE_SECONDS)

    @property
    def address(self) -> Tuple[str, int]:
        """(ip, port) actually bound."""
        return self._server.address[:2]

    def start(self) -> None:
        """Bind and serve (raises OSError if the port is taken)."""
        self._server.start()
        self.history.start()
        log.info("status page on http://%s:%d/ (metrics at /metrics)", *self.address)

    def stop(self, timeout: float = 2.0) -> None:
        self._server.stop(timeout=timeout)
        self.history.stop()
        self._status_json.close()
        self._history_json.close()
        self._metrics.close()

    def _metrics_text(self) -> bytes:
        from . import metrics  # prometheus-client: paid by the first scrape, not by every agent
        if self.registry is None:
            self.registry = metrics.make_registry(self.farm)
        return metrics.metrics_text(self.registry)

    def answer(self, method: str, path: str) -> Answer:
        """What a request for `path` gets (the body also for HEAD: its length is the Content-Length)."""
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", TEXT, b"only GET and HEAD\n", [("Allow", "GET, HEAD")]
        if path in ("/", "/index.html"):
            return "200 OK", "text/html; charset=utf-8", self.page, []
        if path == "/status.json":
            return "200 OK", "application/json", self._status_json.get(), []
        if path == "/history.json":
            return "200 OK", "application/json", self._history_json.get(), []
        if path == "/metrics":
            body = self._metrics.get()
            from .metrics import CONTENT_TYPE_LATEST  # loaded by the build
            return "200 OK", CONTENT_TYPE_LATEST, body, []
        if path == "/healthz":
            problem = farm_health_problem(self.farm)
            if problem is None:
                return "200 OK", TEXT, b"ok\n", []
            return "503 Service Unavailable", TEXT, problem.encode() + b"\n", []
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
            pieces = [body] if isinstance(body, bytes) else body
            headers = [("Content-Type", content_type), ("Content-Length", str(sum(map(len, pieces)))),
                       ("Cache-Control", "no-store"), ("Connection", "close")] + extra
            response = "HTTP/1.1 %s\r\n%s\r\n\r\n" % (status, "\r\n".join("%s: %s" % h for h in headers))
            sock.settimeout(SEND_SECONDS)
            if method == "HEAD" or not pieces:
                sock.sendall(response.encode("latin-1"))
            else:  # the head with the first piece, then the rest as they are (never joined into one copy)
                if len(pieces) > 1:  # no piece's tail waits for an ACK of the one before (Nagle)
                    _no_delay(sock)
                sock.sendall(response.encode("latin-1") + pieces[0])
                for piece in pieces[1:]:
                    sock.sendall(piece)
            sock.shutdown(socket.SHUT_WR)
            # closing with unread bytes would reset the connection, and could lose the answer's end
            with gevent.Timeout(LINGER_SECONDS, False):
                while sock.recv(65536):
                    pass
        except OSError:
            pass  # the client went away (or stalled for SEND_SECONDS): nothing to tell it
        finally:
            sock.close()


def _no_delay(sock: socket.socket) -> None:
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass


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
