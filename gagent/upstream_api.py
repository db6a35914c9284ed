"""The interface a miner session uses to reach its work source, whatever kind that source is.

A BTCAgent pool connection (`upstream.UpstreamSession`), the place where miners wait while no
connection is ready (`poolset.HeldMiners`), and later a plain stratum pool all offer these verbs;
`miner.py` depends on this module only.
"""
from typing import Any, Optional, Protocol

# submit() answers: 0 means the upstream answers the miner itself (now or later); any other value is
# the stratum error code the miner must get at once.
QUEUED = 0


class Upstream(Protocol):
    """What a miner session may call on the upstream it is attached to."""

    ready: bool

    @property
    def miner_count(self) -> int:
        """Miners attached."""

    def attach(self, miner: Any) -> None:
        """Take the miner: register it and give it difficulty, version mask and a clean job."""

    def detach(self, miner: Any) -> None:
        """Let the miner go (it closed or moves elsewhere): unregister it."""

    def submit(self, miner: Any, msg_id: Any, job_id: Any, extra_nonce2: int, ntime: int, nonce: int,
               version_mask: Optional[int]) -> int:
        """Forward a share; QUEUED or an error code to answer at once."""

    def send_version_mask(self, miner: Any) -> None:
        """Tell a version-rolling miner the mask it may roll."""
