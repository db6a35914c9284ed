"""TCP socket tuning and the kernel's view of what the peer acknowledged (Linux; no-ops elsewhere)."""
import socket
import struct
from typing import Any, Optional

try:
    import fcntl
    import termios
    _OUTQ: Optional[int] = termios.TIOCOUTQ  # == SIOCOUTQ: bytes not yet acknowledged by the peer
except (ImportError, AttributeError):  # pragma: no cover - not Linux
    fcntl = None  # type: ignore
    _OUTQ = None

_TCP_INFO = getattr(socket, "TCP_INFO", None)
_BYTES_ACKED_OFFSET = 120  # struct tcp_info.tcpi_bytes_acked (u64), Linux 4.1+
_TCP_INFO_SIZE = 128
_U64 = struct.Struct("<Q")
_INT = struct.Struct("i")

POOL_USER_TIMEOUT_MS = 20000  # unacknowledged data older than this: the path is dead
POOL_KEEPALIVE = (10, 5, 3)   # idle, interval, probes: a silent dead path is noticed in ~25 s
MINER_KEEPALIVE = (60, 10, 3)  # a miner that lost power is noticed in ~90 s


def _set(sock: Any, level: int, name: Optional[int], value: int) -> None:
    if name is None:
        return
    try:
        sock.setsockopt(level, name, value)
    except OSError:
        pass  # not supported by this kernel or socket kind: keep the default


def _keepalive(sock: Any, idle: int, interval: int, probes: int) -> None:
    _set(sock, socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    _set(sock, socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPIDLE", None), idle)
    _set(sock, socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPINTVL", None), interval)
    _set(sock, socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPCNT", None), probes)


def tune_pool_socket(sock: Any) -> None:
    """No Nagle delay (we batch ourselves), keepalive, and a bounded wait for acknowledgements."""
    _set(sock, socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    _keepalive(sock, *POOL_KEEPALIVE)
    _set(sock, socket.IPPROTO_TCP, getattr(socket, "TCP_USER_TIMEOUT", None), POOL_USER_TIMEOUT_MS)


def tune_miner_socket(sock: Any) -> None:
    """Answers and jobs leave at once; a miner that vanished without a FIN is noticed."""
    _set(sock, socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    _keepalive(sock, *MINER_KEEPALIVE)


def bytes_acked(sock: Any) -> Optional[int]:
    """The kernel's count of bytes the peer acknowledged (plus one for the SYN), or None if unknown."""
    if _TCP_INFO is None:
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, _TCP_INFO_SIZE)
    except OSError:
        return None
    if len(info) < _BYTES_ACKED_OFFSET + 8:
        return None
    return _U64.unpack_from(info, _BYTES_ACKED_OFFSET)[0]


def stream_end(sock: Any) -> Optional[int]:
    """Where the bytes written so far end, on the bytes_acked() scale; None if unknown.

    Everything written is either acknowledged or still queued. The queue is read before the
    acknowledged count, so an ACK arriving in between can only make the result too large, which
    delays an answer but never gives one early. Works for TLS too: both counts are in wire bytes.
    """
    if _OUTQ is None:
        return None
    try:
        queued = _INT.unpack(fcntl.ioctl(sock.fileno(), _OUTQ, b"\0\0\0\0"))[0]
    except OSError:
        return None
    acked = bytes_acked(sock)
    return None if acked is None else acked + queued
