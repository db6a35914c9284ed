"""What every protocol session shares, whatever its pool speaks: its slot, miners, sending half and
traffic counts, once-per-slot reports of a pool's bad messages, and the targets shares are judged by."""
import logging
from typing import TYPE_CHECKING, Any, Dict, Optional

from .protocol.hashing import target_for_difficulty
from .slot import new_connection_tag
from .uplink import Uplink
from .upstream_api import Miner

if TYPE_CHECKING:  # pragma: no cover
    from .config import PoolEntry
    from .slot import UpstreamSlot

log = logging.getLogger("gagent.upstream")

TARGETS_KEPT = 64  # a few powers of two and pool difficulties in practice


class PoolSession:
    """The state and verbs both protocol sessions (`btcagent`, `stratumv1`) have alike."""

    def __init__(self, slot: "UpstreamSlot", pool: "PoolEntry", sock: Any) -> None:
        self.slot = slot
        self.config = slot.config
        self.counters = slot.counters
        self.pool = pool
        self.sock = sock
        self.miners: Dict[int, Miner] = {}
        self.ready = False
        self.bytes_received = self.frames_received = 0
        self.broken = ""  # why the sending half failed, if it did
        self.uplink: Optional[Uplink] = None   # the sending half, while ready
        self._sent = (0, 0)  # bytes and frames the uplink sent, once it is closed
        self._tag = new_connection_tag()
        self._closed = False
        self._reported = slot.reported  # once per slot, not per connection: no log line per reconnect
        self._targets: Dict[float, int] = {}  # difficulty -> target

    @property
    def name(self) -> str:
        """How log lines name this connection: its slot's name."""
        return self.slot.name

    def __repr__(self) -> str:
        return "<%s %s %s:%d%s>" % (type(self).__name__, self.name, self.pool.host, self.pool.port,
                                    " ready" if self.ready else "")

    @property
    def miner_count(self) -> int:
        return len(self.miners)

    @property
    def bytes_sent(self) -> int:
        return self.uplink.bytes_sent if self.uplink else self._sent[0]

    @property
    def frames_sent(self) -> int:
        return self.uplink.frames_sent if self.uplink else self._sent[1]

    def _target(self, difficulty: float) -> int:
        """The largest share hash that meets `difficulty`, computed once per difficulty in use."""
        target = self._targets.get(difficulty)
        if target is None:
            if len(self._targets) > TARGETS_KEPT:
                self._targets.clear()
            target = self._targets[difficulty] = target_for_difficulty(difficulty)
        return target

    def _report(self, key: str, text: str) -> None:
        """Log a pool's bad message once per kind per slot, not once per message."""
        if key not in self._reported:
            self._reported.add(key)
            log.warning("%s: %s (further ones are ignored silently)", self.name, text)

    def _uplink_broken(self, why: str) -> None:
        """The sending half failed: wake the reader so it ends the connection."""
        self.broken = why
        self.sock.close()
