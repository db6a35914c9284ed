"""open_pool_socket against real servers on loopback: an echo "pool", pproxy as the SOCKS5 and HTTP CONNECT
proxy (a subprocess, with and without user/password), small gevent servers that misbehave on purpose
(silent, slow, refusing the target), and TLS with a trustme CA."""
import socket as std_socket
import ssl
import time

import gevent
import pytest
import trustme
from gevent import socket
from gevent import ssl as gevent_ssl
from gevent.server import StreamServer

from gagent.connect import PoolConnectError, ProxySpec, open_pool_socket, parse_proxy_url

from conftest import PASSWORD, USER, free_port, wait

pytestmark = pytest.mark.timeout(wait(10))

TIMEOUT = wait(3)


def proxy(pproxy, name, password=PASSWORD) -> ProxySpec:
    auth = name.endswith("_auth")
    return ProxySpec(name.split("_")[0], "127.0.0.1", pproxy[name], USER if auth else None, password if auth else None)


@pytest.fixture
def serve():
    """Start a gevent server on a free loopback port: serve(handler) -> port; all stopped after the test."""
    servers = []

    def start(handle) -> int:
        server = StreamServer(("127.0.0.1", 0), handle)
        server.start()
        servers.append(server)
        return server.address[1]

    yield start
    for server in servers:
        server.stop(timeout=1)


def echo(sock, _address=None) -> None:
    try:
        while True:
            data = sock.recv(4096)
            if not data:
                break
            sock.sendall(data)
    except OSError:
        pass
    finally:
        sock.close()


def silent(sock, _address) -> None:
    """Accepts and reads, never answers."""
    try:
        while sock.recv(4096):
            pass
    except OSError:
        pass
    finally:
        sock.close()


def delaying_relay(target_port: int, delay: float):
    """A relay that sits on a new connection for `delay` seconds, then pipes it to target_port."""
    def handle(client, _address):
        gevent.sleep(delay)
        upstream = socket.create_connection(("127.0.0.1", target_port))
        back = gevent.spawn(pipe, upstream, client)
        pipe(client, upstream)
        back.join()
    return handle


def pipe(source, sink) -> None:
    try:
        while True:
            data = source.recv(65536)
            if not data:
                break
            sink.sendall(data)
    except OSError:
        pass
    finally:
        source.close()
        sink.close()


def socks5_target_refused(sock, _address) -> None:
    """A SOCKS5 proxy that accepts the client and answers every CONNECT with 'connection refused' (0x05)."""
    sock.recv(64)
    sock.sendall(b"\x05\x00")
    sock.recv(512)
    sock.sendall(b"\x05\x05\x00\x01" + bytes(6))
    sock.close()


def assert_echo(sock) -> None:
    sock.sendall(b"mining.subscribe\n")
    received = b""
    while len(received) < 17:
        data = sock.recv(64)
        assert data, "connection closed after %r" % received
        received += data
    assert received == b"mining.subscribe\n"


def assert_plain_socket(sock) -> None:
    assert isinstance(sock, socket.socket)
    assert (sock.family, sock.type) == (std_socket.AF_INET, std_socket.SOCK_STREAM)
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    assert sock.gettimeout() == TIMEOUT


class Ticker:
    """Counts hub iterations while it runs: proof that nothing blocked the hub."""

    def __init__(self) -> None:
        self.ticks = 0
        self.greenlet = gevent.spawn(self._run)

    def _run(self) -> None:
        while True:
            gevent.sleep(0.01)
            self.ticks += 1

    def stop(self) -> int:
        self.greenlet.kill()
        return self.ticks


# ---- direct --------------------------------------------------------------------------------------

def test_direct_connection_reaches_the_pool_with_nodelay_and_timeout(serve):
    sock = open_pool_socket("127.0.0.1", serve(echo), TIMEOUT)
    try:
        assert_plain_socket(sock)
        assert_echo(sock)
    finally:
        sock.close()


def test_direct_refused_names_the_pool():
    port = free_port()
    with pytest.raises(PoolConnectError) as caught:
        open_pool_socket("127.0.0.1", port, TIMEOUT)
    assert str(caught.value) == ("cannot connect to pool 127.0.0.1:%d: connection refused; "
                                 "check the pool address and port" % port)


def test_unresolvable_pool_host():
    with pytest.raises(PoolConnectError, match=r"^cannot connect to pool pool\.invalid:3333: cannot resolve host"):
        open_pool_socket("pool.invalid", 3333, TIMEOUT)


# ---- proxies -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["socks5", "socks5_auth", "http", "http_auth"])
def test_through_proxy(pproxy, serve, name):
    port = serve(echo)
    sock = open_pool_socket("127.0.0.1", port, TIMEOUT, proxies=[proxy(pproxy, name)])
    try:
        assert_plain_socket(sock)
        assert sock.getpeername() == ("127.0.0.1", pproxy[name])
        assert_echo(sock)
    finally:
        sock.close()


@pytest.mark.parametrize("name", ["socks5_auth", "http_auth"])
def test_wrong_proxy_password_names_the_proxy_not_the_password(pproxy, serve, name):
    spec = proxy(pproxy, name, password="wrong-one")
    with pytest.raises(PoolConnectError) as caught:
        open_pool_socket("127.0.0.1", serve(echo), TIMEOUT, proxies=[spec])
    message = str(caught.value)
    assert "through proxy %s://%s@127.0.0.1:%d: " % (spec.scheme, USER, spec.port) in message
    assert "user name and password" in message or "refused the user name or password" in message
    assert "proxy setting" in message and "wrong-one" not in message and "\n" not in message


def test_http_proxy_that_cannot_reach_the_pool(pproxy):
    with pytest.raises(PoolConnectError, match=r"through proxy http://127\.0\.0\.1:\d+: the proxy gave no usable answer"):
        open_pool_socket("127.0.0.1", free_port(), TIMEOUT, proxies=[proxy(pproxy, "http")])


def test_socks5_reply_code_is_the_reason(serve):
    port = serve(socks5_target_refused)
    with pytest.raises(PoolConnectError) as caught:
        open_pool_socket("127.0.0.1", 3333, TIMEOUT, proxies=[ProxySpec("socks5", "127.0.0.1", port, None, None)])
    assert "through proxy socks5://127.0.0.1:%d: " % port in str(caught.value)
    assert "Connection refused by destination host" in str(caught.value)


def test_refusing_proxy_then_a_working_one(pproxy, serve, caplog):
    dead = ProxySpec("socks5", "127.0.0.1", free_port(), None, None)
    sock = open_pool_socket("127.0.0.1", serve(echo), TIMEOUT, proxies=[dead, proxy(pproxy, "socks5_auth")])
    try:
        assert sock.getpeername() == ("127.0.0.1", pproxy["socks5_auth"])
        assert_echo(sock)
    finally:
        sock.close()
    assert "through proxy %s: proxy unreachable (connection refused)" % (dead,) in caplog.text
    assert "trying the next proxy" in caplog.text


def test_all_proxies_failing_names_the_last(pproxy, serve):
    dead = ProxySpec("socks5", "127.0.0.1", free_port(), None, None)
    last = proxy(pproxy, "http_auth", password="wrong-one")
    with pytest.raises(PoolConnectError) as caught:
        open_pool_socket("127.0.0.1", serve(echo), TIMEOUT, proxies=[dead, last])
    message = str(caught.value)
    assert message.startswith("all 2 proxies failed; the last: cannot connect to pool 127.0.0.1:")
    assert "through proxy %s: the proxy refused the user name or password (407 " % (last,) in message
    assert "wrong-one" not in message


def test_hub_keeps_running_during_a_slow_proxy_handshake(pproxy, serve):
    relay = ProxySpec("socks5", "127.0.0.1", serve(delaying_relay(pproxy["socks5"], 0.5)), None, None)
    ticker = Ticker()
    started = time.monotonic()
    sock = open_pool_socket("127.0.0.1", serve(echo), TIMEOUT, proxies=[relay])
    try:
        assert time.monotonic() - started >= 0.5
        assert ticker.stop() >= 20  # ~50 if the hub ran throughout, 0 if the handshake blocked it
        assert_plain_socket(sock)
        assert_echo(sock)
    finally:
        sock.close()


def test_silent_proxy_gives_up_after_the_timeout(serve):
    silent_proxy = ProxySpec("http", "127.0.0.1", serve(silent), None, None)
    ticker = Ticker()
    started = time.monotonic()
    with pytest.raises(PoolConnectError) as caught:
        open_pool_socket("127.0.0.1", 3333, 0.5, proxies=[silent_proxy])
    assert time.monotonic() - started < 0.5 + wait(0.5)
    assert ticker.stop() >= 20
    assert str(caught.value) == ("cannot connect to pool 127.0.0.1:3333 through proxy %s: no answer within 0.5s; "
                                 "check the proxy setting, the pool address and that the pool is up" % (silent_proxy,))


# ---- TLS -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


@pytest.fixture
def ca_file(ca, tmp_path):
    path = tmp_path / "pool-ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


def tls_echo(ca, *names):
    context = gevent_ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert(*names).configure_cert(context)

    def handle(sock, _address):
        try:
            tls = context.wrap_socket(sock, server_side=True)
        except OSError:  # the client refused our certificate
            sock.close()
            return
        echo(tls)
    return handle


def test_tls_with_the_pool_ca(serve, ca, ca_file):
    sock = open_pool_socket("127.0.0.1", serve(tls_echo(ca, "127.0.0.1")), TIMEOUT, tls=True, ca_file=ca_file)
    try:
        assert isinstance(sock, gevent_ssl.SSLSocket)
        assert_plain_socket(sock)
        assert sock.getpeercert()["subjectAltName"] == (("IP Address", "127.0.0.1"),)
        assert_echo(sock)
    finally:
        sock.close()


def test_untrusted_certificate_says_which_key_to_set(serve, ca):
    port = serve(tls_echo(ca, "127.0.0.1"))
    with pytest.raises(PoolConnectError) as caught:
        open_pool_socket("127.0.0.1", port, TIMEOUT, tls=True)
    assert str(caught.value) == (
        "TLS certificate of pool 127.0.0.1:%d is not trusted (unable to get local issuer certificate); set "
        "advanced.tls_skip_certificate_verify to true to connect anyway, or advanced.tls_ca_file to the pool's CA"
        % port)


def test_certificate_for_another_host_is_not_trusted(serve, ca, ca_file):
    port = serve(tls_echo(ca, "pool.example.com"))
    with pytest.raises(PoolConnectError, match=r"is not trusted \(.*mismatch.*tls_skip_certificate_verify"):
        open_pool_socket("127.0.0.1", port, TIMEOUT, tls=True, ca_file=ca_file)


def test_tls_without_verification(serve, ca):
    sock = open_pool_socket("127.0.0.1", serve(tls_echo(ca, "pool.example.com")), TIMEOUT, tls=True, verify=False)
    try:
        assert_echo(sock)
    finally:
        sock.close()


def test_tls_through_socks5_proxy(pproxy, serve, ca, ca_file):
    port = serve(tls_echo(ca, "127.0.0.1"))
    sock = open_pool_socket("127.0.0.1", port, TIMEOUT, proxies=[proxy(pproxy, "socks5_auth")], tls=True,
                            ca_file=ca_file)
    try:
        assert isinstance(sock, gevent_ssl.SSLSocket)
        assert sock.getpeername() == ("127.0.0.1", pproxy["socks5_auth"])
        assert_echo(sock)
    finally:
        sock.close()


def test_untrusted_certificate_does_not_try_the_next_proxy(pproxy, serve, ca, caplog):
    port = serve(tls_echo(ca, "127.0.0.1"))
    with pytest.raises(PoolConnectError, match="tls_skip_certificate_verify"):
        open_pool_socket("127.0.0.1", port, TIMEOUT, proxies=[proxy(pproxy, "socks5"), proxy(pproxy, "http")],
                         tls=True)
    assert "trying the next proxy" not in caplog.text


def test_tls_to_a_plain_port(serve):
    port = serve(echo)
    with pytest.raises(PoolConnectError, match=r"^TLS handshake with pool 127\.0\.0\.1:%d failed \(.+\); "
                                               r"check that this pool port speaks TLS \(pool_use_tls\)$" % port):
        open_pool_socket("127.0.0.1", port, TIMEOUT, tls=True, verify=False)


def test_tls_handshake_is_bounded_by_the_timeout(serve):
    port = serve(silent)
    started = time.monotonic()
    with pytest.raises(PoolConnectError, match=r"no answer within 0\.5s \(TLS handshake\)"):
        open_pool_socket("127.0.0.1", port, 0.5, tls=True)
    assert time.monotonic() - started < 0.5 + wait(0.5)


def test_missing_ca_file(tmp_path):
    with pytest.raises(PoolConnectError, match=r"cannot load the CA file .*; check advanced\.tls_ca_file"):
        open_pool_socket("127.0.0.1", 3333, TIMEOUT, tls=True, ca_file=str(tmp_path / "nope.pem"))


# ---- parse_proxy_url -----------------------------------------------------------------------------

@pytest.mark.parametrize("url, expected", [
    ("socks5://10.0.0.1:1080", ProxySpec("socks5", "10.0.0.1", 1080, None, None)),
    ("http://proxy.farm.lan:3128", ProxySpec("http", "proxy.farm.lan", 3128, None, None)),
    ("SOCKS5://u:p@Proxy:1", ProxySpec("socks5", "proxy", 1, "u", "p")),
    ("http://farm%40a:p%3Ass@10.0.0.1:8080/", ProxySpec("http", "10.0.0.1", 8080, "farm@a", "p:ss")),
    (" socks5://[::1]:1080 ", ProxySpec("socks5", "::1", 1080, None, None)),
])
def test_parse_good_urls(url, expected):
    assert parse_proxy_url(url) == expected


@pytest.mark.parametrize("url, reason", [
    ("https://proxy:443", "unknown scheme 'https'"),
    ("socks4://proxy:1080", "unknown scheme 'socks4'"),
    ("proxy:1080", "expected socks5://"),
    ("socks5://proxy", "missing port"),
    ("socks5://proxy:", "missing port"),
    ("socks5://proxy:99999", "bad port"),
    ("socks5://proxy:0", "bad port"),
    ("http://proxy:http", "bad port"),
    ("socks5://:1080", "missing host"),
    ("socks5://proxy:1080/path", "unexpected text after the port"),
    ("socks5://proxy:1080#u:p", "unexpected text after the port"),
    ("socks5://farm@proxy:1080", "a user name needs a password"),
])
def test_parse_bad_urls(url, reason):
    with pytest.raises(ValueError, match=reason):
        parse_proxy_url(url)


def test_password_never_shown():
    spec = parse_proxy_url("socks5://farm:s3cret@10.0.0.1:1080")
    assert str(spec) == "socks5://farm@10.0.0.1:1080"
    assert "s3cret" not in repr(spec) and "s3cret" not in "%s %r" % (spec, [spec])
    assert str(ProxySpec("http", "::1", 8080, None, None)) == "http://[::1]:8080"
    with pytest.raises(ValueError) as caught:
        parse_proxy_url("https://farm:s3cret@10.0.0.1:1080")
    assert "s3cret" not in str(caught.value) and "farm:***@10.0.0.1" in str(caught.value)
