"""The interfaces between miners, pool sets and pool connections, whatever protocol a pool speaks.

Each side depends on these `typing.Protocol`s, never on the other side's module, so `miner.py`,
`poolset.py`, `slot.py` and the protocol sessions (`btcagent.py`) import no one of each other:

- `Upstream`: what a miner may call on the work source it is attached to — a pool connection's
  protocol session, or the pool set's held-miners place while no connection is ready.
- `Miner`: what an upstream may use of a miner.
- `ProtocolSession`: one connected pool socket speaking one protocol; a slot runs one at a time.
- `SlotOwner`: what a slot tells its pool set.
"""
from typing import Any, Callable, Dict, List, Optional, Protocol

# submit() answers: 0 means the upstream answers the miner itself (now or later); any other value is
# the stratum error code the miner must get at once.
QUEUED = 0


class Miner(Protocol):
    """What an upstream may read and call of a miner session."""

    session_id: int
    worker_name: str
    sub_account: str
    user_agent: str
    version_rolling: int          # the mask the miner asked for (0: no version rolling)
    difficulty: Optional[float]   # the last difficulty sent to it
    upstream: Optional["Upstream"]
    closed: bool
    extranonce1_size: int         # bytes of extranonce1 and extranonce2 it was told at subscribe
    extranonce2_size: int
    set_extranonce_ok: bool       # it asked for mining.set_extranonce

    def fit_extranonce(self, extranonce1_size: int, extranonce2_size: int) -> bool:
        """Give it this extranonce layout (set_extranonce), or have it reconnect (False)."""

    def send(self, data: bytes) -> None:
        """Queue bytes for the miner; never blocks."""

    def share_answered(self, msg_id: Any, code: int) -> None:
        """Answer a share: `true` when `code` is 0, else that error."""


class Upstream(Protocol):
    """What a miner session may call on the upstream it is attached to."""

    ready: bool
    version_mask: Optional[int]   # the pool's version-rolling mask, once known

    @property
    def miner_count(self) -> int:
        """Miners attached."""

    def attach(self, miner: Miner) -> None:
        """Take the miner: register it and give it difficulty, version mask and a clean job."""

    def detach(self, miner: Miner) -> None:
        """Let the miner go (it closed or moves elsewhere): unregister it."""

    def submit(self, miner: Miner, msg_id: Any, job_id: Any, extra_nonce2: int, ntime: int, nonce: int,
               version_mask: Optional[int]) -> int:
        """Forward a share; QUEUED or an error code to answer at once."""

    def send_version_mask(self, miner: Miner) -> None:
        """Tell a version-rolling miner the mask it may roll."""


class ProtocolSession(Upstream, Protocol):
    """One connected pool socket speaking one protocol, from handshake to loss.

    A slot (`slot.UpstreamSlot`) dials, then calls `serve()`, which handshakes, calls the slot's
    `session_ready()` once miners can be attached, and reads until the connection ends (by raising).
    The slot then calls `close()`, which answers every unanswered share and returns the miners that
    were attached, for the pool set to hold or move.
    """

    miners: Dict[int, Miner]
    difficulty: Optional[float]
    extranonce1: str
    bytes_received: int
    bytes_sent: int
    frames_received: int
    frames_sent: int

    def can_take(self, miner: Miner) -> bool:
        """Room for this miner (its extranonce prefix is free here)."""

    def serve(self) -> None:
        """Handshake and read until the connection ends; always ends by raising."""

    def drain(self, deadline: float) -> None:
        """Write out what is queued and wait (until `deadline`, loop time) for the pool to confirm it."""

    def close(self, reason: str) -> List[Miner]:
        """Forget the connection; unanswered shares get an error. Returns the miners it had."""


class SlotOwner(Protocol):
    """What a slot tells the pool set it belongs to, and what it takes from it."""

    sub_account: str
    open_socket: Callable[[Any], Any]  # pool entry -> connected socket

    def connection_ready(self, slot: Any) -> None:
        """The slot's session can take miners."""

    def connection_lost(self, slot: Any, miners: List[Miner], reason: str) -> None:
        """The slot's session ended with these miners attached."""

    def authorization_refused(self, slot: Any, reason: str) -> None:
        """A pool refused the sub-account."""

    def layout_seen(self, prefix_size: int, miner_extranonce2_size: int) -> None:
        """A plain stratum pool's extranonce layout: what miners that subscribe from now on are told."""

    def failback_attempt_failed(self, slot: Any) -> None:
        """A failback attempt found the first pool still unavailable and ended."""

    def job_seen(self, params: List[Any]) -> None:
        """A real job's mining.notify params, for fake jobs to be built from."""
