"""Opening the TCP connection to a pool: direct or through SOCKS5 / HTTP CONNECT proxies, with or without TLS.

python-socks has no gevent flavour: its blocking sync API cooperates because the entry point
monkey-patches the socket module (`entry.py`), so a proxy that never answers holds up only its own
connection; the finished tunnel is rewrapped as a gevent socket. Every failure becomes a PoolConnectError
whose message is one line naming the pool, the proxy and the configuration key to change.

ssl (with gevent.ssl) and python-socks are imported by the first connection that uses TLS or a proxy:
about 7 MB of resident memory that an agent without either never pays.
"""
import functools
import logging
from typing import TYPE_CHECKING, Any, NamedTuple, Optional, Sequence, Tuple, Type
from urllib.parse import unquote, urlsplit

import gevent
from gevent import socket

if TYPE_CHECKING:  # pragma: no cover
    import ssl

log = logging.getLogger("gagent.connect")

_CHECK_POOL_UP = "the pool address and that the pool is up"
_SCHEMES = ("socks5", "http")  # python_socks.ProxyType.SOCKS5 and .HTTP


class _Never(Exception):
    """Stands in for the ssl or python-socks exception classes where that module is not in use (and not
    imported): no exception is an instance of it."""


def _proxy_errors() -> Tuple[Type[BaseException], Type[BaseException], Type[BaseException]]:
    """python-socks' (ProxyError, ProxyConnectionError, ProxyTimeoutError)."""
    from python_socks import ProxyConnectionError, ProxyError, ProxyTimeoutError
    return ProxyError, ProxyConnectionError, ProxyTimeoutError


class PoolConnectError(OSError):
    """Connecting failed; str() is one line an operator can act on (names host:port, the proxy, and the config
    key to change)."""


class CertificateNotTrusted(PoolConnectError):
    """The pool's certificate, not the proxy, is at fault: another proxy would get the same answer."""


class ProxySpec(NamedTuple):
    """A parsed proxy URL; str() and repr() never show the password."""
    scheme: str  # "socks5" or "http"
    host: str
    port: int
    username: Optional[str]
    password: Optional[str]

    def __str__(self) -> str:
        host = "[%s]" % self.host if ":" in self.host else self.host
        user = "%s@" % self.username if self.username else ""
        return "%s://%s%s:%d" % (self.scheme, user, host, self.port)

    def __repr__(self) -> str:
        return "ProxySpec(%r)" % str(self)


def parse_proxy_url(url: str) -> ProxySpec:
    """socks5://[user:pass@]host:port or http://[user:pass@]host:port; ValueError with a clear message otherwise."""
    shown = redact_url(url)
    expected = "expected socks5://[user:pass@]host:port or http://[user:pass@]host:port"
    if not isinstance(url, str) or "://" not in url:
        raise ValueError("proxy %r: %s" % (shown, expected))
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in _SCHEMES:
        raise ValueError("proxy %r: unknown scheme %r; %s" % (shown, parts.scheme, expected))
    if not parts.hostname:
        raise ValueError("proxy %r: missing host; %s" % (shown, expected))
    try:
        port = parts.port
    except ValueError:
        port = 0
    else:
        if port is None:
            raise ValueError("proxy %r: missing port; %s" % (shown, expected))
    if not 0 < port < 65536:
        raise ValueError("proxy %r: bad port (1-65535 expected); %s" % (shown, expected))
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError("proxy %r: unexpected text after the port; %s" % (shown, expected))
    if parts.username and not parts.password:
        raise ValueError("proxy %r: a user name needs a password (user:pass@host:port)" % shown)
    return ProxySpec(scheme, parts.hostname, port, unquote(parts.username) if parts.username else None,
                     unquote(parts.password) if parts.password else None)


def open_pool_socket(host: str, port: int, timeout: float, *, proxies: Sequence[ProxySpec] = (),
                     tls: bool = False, verify: bool = True, ca_file: Optional[str] = None) -> "socket.socket":
    """A connected gevent socket to host:port with `timeout` set on it and TCP_NODELAY, TLS-wrapped when `tls`.

    Each attempt (TCP connect, proxy handshake and TLS handshake together) takes at most `timeout`
    seconds. Proxies are tried in order and the first that connects wins; when all fail, the error
    names the last failure (the earlier ones are logged as warnings). An untrusted certificate stops at
    once: it is the pool's, and every proxy would lead to it.
    """
    context = _tls_context(verify, ca_file) if tls else None
    if not proxies:
        return _attempt(host, port, timeout, None, context)
    failure: Optional[PoolConnectError] = None
    for index, proxy in enumerate(proxies):
        try:
            return _attempt(host, port, timeout, proxy, context)
        except CertificateNotTrusted:
            raise
        except PoolConnectError as exc:
            failure = exc
            if index + 1 < len(proxies):
                log.warning("%s; trying the next proxy", exc)
    assert failure is not None
    if len(proxies) == 1:
        raise failure
    raise PoolConnectError("all %d proxies failed; the last: %s" % (len(proxies), failure)) from failure


def _attempt(host: str, port: int, timeout: float, proxy: Optional[ProxySpec],
             context: "Optional[ssl.SSLContext]") -> "socket.socket":
    where = "pool %s:%d" % (host, port) + (" through proxy %s" % (proxy,) if proxy else "")
    # only a TLS context (which imported ssl) makes ssl errors, only a proxy python-socks errors
    cert_error: Type[BaseException] = _Never
    if context is not None:
        import ssl
        cert_error = ssl.SSLCertVerificationError
    proxy_error = _proxy_errors()[0] if proxy is not None else _Never
    timer = gevent.Timeout(timeout)
    timer.start()
    sock = None
    in_tls = False
    try:
        if proxy is None:
            sock = socket.create_connection((host, port), timeout=timeout)
        else:
            sock = _tunnel(proxy, host, port, timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(timeout)
        if context is not None:
            in_tls = True
            # handshake after the assignment, so that whatever interrupts it closes the TLS socket
            sock = context.wrap_socket(sock, server_hostname=host, do_handshake_on_connect=False)
            sock.do_handshake()
        return sock
    except gevent.Timeout as exc:
        if exc is not timer:
            raise
        _close(sock)
        raise PoolConnectError("cannot connect to %s: no answer within %gs%s; %s" % (
            where, timeout, " (TLS handshake)" if in_tls else "", _hint(proxy, _CHECK_POOL_UP))) from None
    except cert_error as exc:
        _close(sock)
        raise CertificateNotTrusted(
            "TLS certificate of pool %s:%d is not trusted (%s); set advanced.tls_skip_certificate_verify to true"
            " to connect anyway, or advanced.tls_ca_file to the pool's CA"
            % (host, port, str(exc.verify_message or exc.reason).rstrip("."))) from None  # type: ignore
    except (OSError, proxy_error) as exc:
        _close(sock)
        if in_tls:
            reason = exc.reason.replace("_", " ").lower() if getattr(exc, "reason", None) else (exc.strerror or exc)
            raise PoolConnectError("TLS handshake with %s failed (%s); check that this pool port speaks TLS"
                                   " (pool_use_tls)" % (where, reason)) from None
        raise PoolConnectError("cannot connect to %s: %s" % (where, _describe(exc, proxy, timeout))) from None
    except BaseException:
        _close(sock)
        raise
    finally:
        timer.close()


def _tunnel(proxy: ProxySpec, host: str, port: int, timeout: float) -> "socket.socket":
    """python-socks' handshake over the patched socket module; the tunnel comes back as a gevent socket."""
    from python_socks import ProxyType
    from python_socks.sync import Proxy
    client = Proxy.create(ProxyType[proxy.scheme.upper()], proxy.host, proxy.port, proxy.username,
                          proxy.password)
    raw = client.connect(host, port, timeout=timeout)
    return socket.socket(fileno=raw.detach())


@functools.lru_cache(maxsize=8)
def _tls_context(verify: bool, ca_file: Optional[str]) -> "ssl.SSLContext":
    """One context per setting, shared by every connection (a changed CA file is read at the next start)."""
    import ssl

    from gevent import ssl as gevent_ssl
    # gevent.ssl.create_default_context() returns the stdlib class (its sockets would block the hub),
    # so build gevent's SSLContext with the same settings.
    context = gevent_ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if ca_file:
        try:
            context.load_verify_locations(cafile=ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise PoolConnectError("cannot load the CA file %s (%s); check advanced.tls_ca_file"
                                   % (ca_file, getattr(exc, "strerror", None) or exc)) from None
    return context


def _describe(exc: BaseException, proxy: Optional[ProxySpec], timeout: float) -> str:
    """The reason and what to check, for a failure before TLS."""
    ProxyError, ProxyConnectionError, ProxyTimeoutError = _proxy_errors() if proxy is not None else (_Never,) * 3
    if isinstance(exc, (ProxyTimeoutError, socket.timeout)):
        return "no answer within %gs; %s" % (timeout, _hint(proxy, _CHECK_POOL_UP))
    if isinstance(exc, ProxyConnectionError):  # the proxy itself is unreachable
        cause = exc.__cause__
        if isinstance(cause, socket.gaierror):
            return "cannot resolve the proxy host (%s); check the proxy setting" % cause.strerror
        reason = getattr(cause, "strerror", None) or str(cause or exc)
        return "proxy unreachable (%s); check the proxy setting" % reason.lower()
    if isinstance(exc, ProxyError) and proxy is not None:  # the proxy answered, but no tunnel
        if exc.error_code == 407 or "authentication" in str(exc).lower():
            return "the proxy refused the user name or password (%s); check them in the proxy setting" % exc
        if type(exc.__cause__).__name__ == "IncompleteReadError":
            return ("the proxy closed the connection during its handshake; check the user name and password"
                    " and that it is a %s proxy (proxy setting)" % proxy.scheme)
        if exc.error_code is None:  # no status line or reply code at all
            return ("the proxy gave no usable answer (%s); check the pool address and port, and that it is a %s"
                    " proxy (proxy setting)" % (exc, proxy.scheme))
        return "the proxy could not open a tunnel to the pool (%s); check the pool address and port" % exc
    if isinstance(exc, socket.gaierror):
        return "cannot resolve host (%s); %s" % (exc.strerror, _hint(proxy, "the pool address"))
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused; %s" % _hint(proxy, "the pool address and port")
    return "%s; %s" % (getattr(exc, "strerror", None) or exc, _hint(proxy, "the pool address and port"))


def _hint(proxy: Optional[ProxySpec], what: str) -> str:
    return ("check the proxy setting, " if proxy else "check ") + what


def _close(sock: Optional["socket.socket"]) -> None:
    if sock is not None:
        sock.close()


def redact_url(url: Any) -> Any:
    """`url` with the password replaced, for error messages."""
    if not isinstance(url, str) or "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    userinfo, at, tail = rest.rpartition("@")
    if ":" in userinfo:
        userinfo = userinfo.split(":", 1)[0] + ":***"
    return "%s://%s%s%s" % (scheme, userinfo, at, tail)
