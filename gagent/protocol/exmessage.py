"""BTCAgent ex-message codec and the mixed frame/line stream splitter (docs/protocol.md §3).

Frame layout: magic 0x7F | cmd u8 | length u16 LE (whole frame) | body. Integers are little-endian.
"""
import struct
from typing import List, NamedTuple, Optional, Tuple, Union

MAGIC = 0x7F
HEADER_SIZE = 4
MAX_FRAME_SIZE = 0xFFFF
MAX_SESSION_ID = 0xFFFE
MAX_REGISTER_SIZE = 100  # the pool silently drops longer REGISTER_WORKER frames

CMD_REGISTER_WORKER = 0x01
CMD_SUBMIT_SHARE = 0x02
CMD_SUBMIT_SHARE_WITH_TIME = 0x03
CMD_UNREGISTER_WORKER = 0x04
CMD_MINING_SET_DIFF = 0x05
CMD_SUBMIT_RESPONSE = 0x10
CMD_SUBMIT_SHARE_WITH_VER = 0x12
CMD_SUBMIT_SHARE_WITH_TIME_VER = 0x13

SUBMIT_COMMANDS = (CMD_SUBMIT_SHARE, CMD_SUBMIT_SHARE_WITH_TIME,
                   CMD_SUBMIT_SHARE_WITH_VER, CMD_SUBMIT_SHARE_WITH_TIME_VER)
SUBMIT_FRAME_SIZES = {CMD_SUBMIT_SHARE: 15, CMD_SUBMIT_SHARE_WITH_TIME: 19,
                      CMD_SUBMIT_SHARE_WITH_VER: 19, CMD_SUBMIT_SHARE_WITH_TIME_VER: 23}
MAX_SET_DIFF_IDS = (MAX_FRAME_SIZE - 7) // 2  # 32,764 session ids per MINING_SET_DIFF

_HEADER = struct.Struct("<BBH")
_SUBMIT_BASE = struct.Struct("<BBHBHII")
_SUBMIT_WITH_ONE = struct.Struct("<BBHBHIII")
_SUBMIT_WITH_TWO = struct.Struct("<BBHBHIIII")
_U16 = struct.Struct("<H")
_RESPONSE = struct.Struct("<HI")
_SET_DIFF_HEAD = struct.Struct("<BH")


class ProtocolError(ValueError):
    """The peer sent bytes that break the protocol; the connection should be closed."""


class Frame(NamedTuple):
    """One decoded ex-message: its command byte and body (header stripped)."""
    cmd: int
    body: bytes


class SubmitShare(NamedTuple):
    """A share as carried by the SUBMIT_SHARE family. ntime/version_mask are None when absent."""
    job_id: int
    session_id: int
    extra_nonce2: int
    nonce: int
    ntime: Optional[int]
    version_mask: Optional[int]


def _frame(cmd: int, body: bytes) -> bytes:
    return _HEADER.pack(MAGIC, cmd, HEADER_SIZE + len(body)) + body


def _fit_register_names(client_agent: bytes, worker_name: bytes) -> Tuple[bytes, bytes]:
    """Shorten agent, then worker, so the REGISTER frame stays within the pool's 100-byte limit."""
    room = MAX_REGISTER_SIZE - HEADER_SIZE - 2 - 2  # session id and two NULs
    overflow = len(client_agent) + len(worker_name) - room
    if overflow > 0:
        cut = min(overflow, len(client_agent))
        client_agent = client_agent[:len(client_agent) - cut]
        overflow -= cut
        if overflow > 0:
            worker_name = worker_name[:len(worker_name) - overflow]
    return client_agent, worker_name


def encode_register_worker(session_id: int, client_agent: str, worker_name: str) -> bytes:
    """REGISTER_WORKER; NUL bytes are dropped and names shortened to fit 100 bytes."""
    agent = client_agent.encode("utf-8", "replace").replace(b"\0", b"")
    worker = worker_name.encode("utf-8", "replace").replace(b"\0", b"")
    agent, worker = _fit_register_names(agent, worker)
    return _frame(CMD_REGISTER_WORKER, _U16.pack(session_id) + agent + b"\0" + worker + b"\0")


def encode_unregister_worker(session_id: int) -> bytes:
    """UNREGISTER_WORKER for one session id."""
    return _frame(CMD_UNREGISTER_WORKER, _U16.pack(session_id))


def encode_submit_share(job_id: int, session_id: int, extra_nonce2: int, nonce: int,
                        ntime: Optional[int] = None, version_mask: Optional[int] = None) -> bytes:
    """The smallest SUBMIT_SHARE variant that carries the given fields (ntime/mask None = absent)."""
    if ntime is None:
        if version_mask is None:
            return _SUBMIT_BASE.pack(MAGIC, CMD_SUBMIT_SHARE, 15, job_id, session_id, extra_nonce2, nonce)
        return _SUBMIT_WITH_ONE.pack(MAGIC, CMD_SUBMIT_SHARE_WITH_VER, 19, job_id, session_id,
                                     extra_nonce2, nonce, version_mask)
    if version_mask is None:
        return _SUBMIT_WITH_ONE.pack(MAGIC, CMD_SUBMIT_SHARE_WITH_TIME, 19, job_id, session_id,
                                     extra_nonce2, nonce, ntime)
    return _SUBMIT_WITH_TWO.pack(MAGIC, CMD_SUBMIT_SHARE_WITH_TIME_VER, 23, job_id, session_id,
                                 extra_nonce2, nonce, ntime, version_mask)


def encode_mining_set_diff(diff_exp: int, session_ids: List[int]) -> bytes:
    """MINING_SET_DIFF frames (pool side), split at 32,764 ids per frame."""
    frames = []
    for start in range(0, max(len(session_ids), 1), MAX_SET_DIFF_IDS):
        chunk = session_ids[start:start + MAX_SET_DIFF_IDS]
        body = _SET_DIFF_HEAD.pack(diff_exp, len(chunk)) + struct.pack("<%dH" % len(chunk), *chunk)
        frames.append(_frame(CMD_MINING_SET_DIFF, body))
    return b"".join(frames)


def encode_submit_response(index: int, status: int) -> bytes:
    """SUBMIT_RESPONSE (pool side)."""
    return _frame(CMD_SUBMIT_RESPONSE, _RESPONSE.pack(index & 0xFFFF, status & 0xFFFFFFFF))


def decode_mining_set_diff(body: bytes) -> Tuple[int, List[int]]:
    """(diff_exp, session ids) of a MINING_SET_DIFF body."""
    if len(body) < 3:
        raise ProtocolError("MINING_SET_DIFF body too short (%d bytes)" % len(body))
    diff_exp, count = _SET_DIFF_HEAD.unpack_from(body)
    if len(body) != 3 + 2 * count:
        raise ProtocolError("MINING_SET_DIFF announces %d ids in %d bytes" % (count, len(body)))
    return diff_exp, list(struct.unpack_from("<%dH" % count, body, 3))


def decode_submit_response(body: bytes) -> Tuple[int, int]:
    """(index, status) of a SUBMIT_RESPONSE body."""
    if len(body) != _RESPONSE.size:
        raise ProtocolError("SUBMIT_RESPONSE body must be 6 bytes, got %d" % len(body))
    return _RESPONSE.unpack(body)


def decode_register_worker(body: bytes) -> Tuple[int, str, str]:
    """(session id, client agent, worker name) of a REGISTER_WORKER body (pool side)."""
    if len(body) < 4:
        raise ProtocolError("REGISTER_WORKER body too short")
    (session_id,) = _U16.unpack_from(body)
    parts = body[2:-1].split(b"\0")  # the pool forces the last byte to NUL
    agent = parts[0].decode("utf-8", "replace")
    worker = parts[1].decode("utf-8", "replace") if len(parts) > 1 else ""
    return session_id, agent, worker


def decode_unregister_worker(body: bytes) -> int:
    """Session id of an UNREGISTER_WORKER body (pool side)."""
    if len(body) != 2:
        raise ProtocolError("UNREGISTER_WORKER body must be 2 bytes")
    return _U16.unpack(body)[0]


def decode_submit_share(cmd: int, body: bytes) -> SubmitShare:
    """A SUBMIT_SHARE-family body (pool side); wrong size raises ProtocolError."""
    size = SUBMIT_FRAME_SIZES.get(cmd)
    if size is None or len(body) != size - HEADER_SIZE:
        raise ProtocolError("submit command 0x%02x with %d-byte body" % (cmd, len(body)))
    job_id, session_id, extra_nonce2, nonce = struct.unpack_from("<BHII", body)
    ntime = version_mask = None
    if cmd == CMD_SUBMIT_SHARE_WITH_TIME:
        (ntime,) = struct.unpack_from("<I", body, 11)
    elif cmd == CMD_SUBMIT_SHARE_WITH_VER:
        (version_mask,) = struct.unpack_from("<I", body, 11)
    elif cmd == CMD_SUBMIT_SHARE_WITH_TIME_VER:
        ntime, version_mask = struct.unpack_from("<II", body, 11)
    return SubmitShare(job_id, session_id, extra_nonce2, nonce, ntime, version_mask)


Item = Union[bytes, Frame]


class StreamSplitter:
    """Incremental splitter for the mixed upstream stream: JSON lines and 0x7F frames.

    feed() returns complete items in arrival order: `bytes` for a JSON line (without the newline)
    and `Frame` for an ex-message. Partial input is kept until the rest arrives. A frame shorter
    than its header, or a line longer than `max_line` bytes, raises ProtocolError.
    """

    __slots__ = ("_buf", "max_line")

    def __init__(self, max_line: int = 1 << 20) -> None:
        self._buf = b""
        self.max_line = max_line

    def feed(self, data: bytes) -> List[Item]:
        buf = self._buf + data if self._buf else data
        items: List[Item] = []
        pos = 0
        end = len(buf)
        while pos < end:
            if buf[pos] == MAGIC:
                if end - pos < HEADER_SIZE:
                    break
                _, cmd, length = _HEADER.unpack_from(buf, pos)
                if length < HEADER_SIZE:
                    raise ProtocolError("ex-message length %d is shorter than its header" % length)
                if end - pos < length:
                    break
                items.append(Frame(cmd, buf[pos + HEADER_SIZE:pos + length]))
                pos += length
            else:
                newline = buf.find(b"\n", pos)
                if newline < 0:
                    if end - pos > self.max_line:
                        raise ProtocolError("line longer than %d bytes" % self.max_line)
                    break
                if newline - pos > self.max_line:
                    raise ProtocolError("line longer than %d bytes" % self.max_line)
                line = buf[pos:newline].strip()
                if line:
                    items.append(line)
                pos = newline + 1
        self._buf = buf[pos:]
        return items

    @property
    def pending(self) -> int:
        """Bytes held back waiting for the rest of a line or frame."""
        return len(self._buf)
