"""How one plain stratum v1 pool connection's extranonce2 space is shared by its miners.

The pool gives a connection an extranonce1 (en1) and an extranonce2 size. gagent cuts the pool's
extranonce2 into a per-miner **prefix** of fixed width and the miner's own extranonce2:

    coinbase = coinb1 ‖ pool en1 ‖ prefix ‖ miner en2 ‖ coinb2        (pool en2 = prefix ‖ miner en2)

Miners get 4 bytes of extranonce2 where the pool leaves room (pool 5 or more bytes: prefix = pool − 4,
so 8 → 4, 5–7 → 1–3), 3 when the pool gives 4 (AntPool, Luxor, Binance: a 1-byte prefix, 256 miners
per connection) and 2 when it gives 3 (NiceHash: 1-byte prefix). Miner firmware refuses sizes outside
2–16 (cgminer, bmminer, S19), Whatsminer fails above 8 and may duplicate work below 3, so 4 is the
sweet spot and 2 the floor; a pool giving fewer than 3 bytes cannot be shared and is refused. The prefix
width never varies within a connection: prefixes of different lengths overlap (prefix 01 followed by
miner bytes 02… equals prefix 0102 followed by …), and two miners would then hash the same work.

Where the pool's extranonce1 goes — the default here puts it in coinb1 (``en1_in_coinb1=True``, as the
Go BTCAgent does): a miner is told coinb1 ‖ pool en1 as its coinb1 and only its prefix as extranonce1.
Why: gagent moves miners between upstream connections on every pool outage and reconnect, and each
connection (and each pool) has its own extranonce1; NiceHash also changes it with mining.set_extranonce.
A miner cannot be told a new extranonce1 unless it sent mining.extranonce.subscribe (cgminer ignores
set_extranonce; bmminer and S19 apply it only when subscribed), so with the pool's en1 inside the miner's
extranonce1 every move or pool change would cost a disconnect and a re-subscribe of every miner — the
reconnect storm gagent exists to avoid. With en1 in coinb1, a miner's extranonce1 (its prefix) stays
valid on any connection of the same shape where that prefix is free, and the move costs one clean
mining.notify. The price is a coinb1 longer by the pool's en1 (4–5 bytes per notify line), sent
identically to all miners of a connection. ``en1_in_coinb1=False`` gives the classic layout (miner en1 =
pool en1 ‖ prefix, coinb1 untouched) for comparison or for pools whose jobs must reach miners verbatim.

Prefix allocation: one :class:`PrefixAllocator` shared by all connections of the same shape keeps every
moved miner's prefix valid while its capacity covers the farm (always so with a 4-byte prefix, capped at
MAX_PREFIXES); with a 1-byte prefix use one per connection and :meth:`PrefixAllocator.claim` a moved
miner's prefix on the new connection, re-subscribing only the miners whose prefix is taken there.
"""
from typing import Any, NamedTuple, Optional

from ..sessionids import SessionIdAllocator
from .stratum import is_hex

MINER_EXTRANONCE2_SIZE = 4   # what miners get whenever the pool leaves room for a prefix
MIN_POOL_EXTRANONCE2_SIZE = 3
MAX_POOL_EXTRANONCE2_SIZE = 32
MAX_POOL_EXTRANONCE1_SIZE = 32
MAX_PREFIXES = 1 << 16       # cap on one allocator (its table costs one byte per prefix)


class LayoutError(ValueError):
    """A pool connection whose extranonce space cannot be shared."""


class Layout(NamedTuple):
    """The split of one connection's extranonce2: fixed-width prefix per miner, then the miner's bytes."""
    pool_en1: bytes
    pool_en2_size: int
    prefix_size: int
    miner_en2_size: int
    capacity: int          # miners one allocator can hold: 256**prefix_size, capped at MAX_PREFIXES
    en1_in_coinb1: bool

    def prefix_bytes(self, prefix: int) -> bytes:
        """A prefix as the fixed-width bytes it puts in the coinbase."""
        return prefix.to_bytes(self.prefix_size, "big")

    def miner_extranonce1(self, prefix: int) -> str:
        """The extranonce1 (hex) a miner with `prefix` is told at subscribe."""
        own = self.prefix_bytes(prefix)
        return (own if self.en1_in_coinb1 else self.pool_en1 + own).hex()

    def miner_coinb1(self, coinb1: str) -> str:
        """The coinb1 (hex) miners are sent for a pool job's coinb1; the same for every miner."""
        return coinb1 + self.pool_en1.hex() if self.en1_in_coinb1 else coinb1

    def parse_miner_extranonce2(self, value: Any) -> Optional[bytes]:
        """A miner's submitted extranonce2: exactly miner_en2_size bytes of hex, else None."""
        if isinstance(value, str) and len(value) == 2 * self.miner_en2_size and is_hex(value):
            return bytes.fromhex(value)
        return None

    def pool_extranonce2(self, prefix: int, miner_en2: bytes) -> bytes:
        """The pool's extranonce2 of a miner's share: prefix ‖ the miner's extranonce2."""
        return self.prefix_bytes(prefix) + miner_en2

    def keeps_miners_of(self, old: "Layout") -> bool:
        """True when miners subscribed under `old` can work under this layout given new jobs only
        (a move to this connection, or the pool's mining.set_extranonce), keeping their prefixes."""
        same_shape = (self.prefix_size, self.miner_en2_size, self.en1_in_coinb1) == \
                     (old.prefix_size, old.miner_en2_size, old.en1_in_coinb1)
        return same_shape and (self.en1_in_coinb1 or self.pool_en1 == old.pool_en1)


def plan_layout(pool_en1: str, pool_en2_size: int, en1_in_coinb1: bool = True,
                max_prefixes: int = MAX_PREFIXES) -> Layout:
    """The layout for a connection from the pool's subscribe answer (extranonce1 hex, extranonce2
    size); raises LayoutError, with one sentence saying why, when the space cannot be shared."""
    if max_prefixes < 1:
        raise ValueError("max_prefixes must be at least 1")
    if not (is_hex(pool_en1) and len(pool_en1) <= 2 * MAX_POOL_EXTRANONCE1_SIZE):
        raise LayoutError("the pool's extranonce1 %r is not hex of at most %d bytes"
                          % (pool_en1, MAX_POOL_EXTRANONCE1_SIZE))
    if type(pool_en2_size) is not int or pool_en2_size > MAX_POOL_EXTRANONCE2_SIZE:
        raise LayoutError("the pool's extranonce2 size %r is not a byte count of at most %d"
                          % (pool_en2_size, MAX_POOL_EXTRANONCE2_SIZE))
    if pool_en2_size < MIN_POOL_EXTRANONCE2_SIZE:
        raise LayoutError("the pool gives an extranonce2 of %d byte(s), too few to share: each miner needs a"
                          " 1-byte prefix plus the 2 bytes miner firmware accepts at least, so use a pool"
                          " port with an extranonce2 size of 3 or more" % pool_en2_size)
    miner = min(MINER_EXTRANONCE2_SIZE, pool_en2_size - 1)
    prefix = pool_en2_size - miner
    return Layout(bytes.fromhex(pool_en1), pool_en2_size, prefix, miner, min(256 ** prefix, max_prefixes),
                  en1_in_coinb1)


class PrefixAllocator(SessionIdAllocator):
    """Miner prefixes 0…capacity−1, handed out round-robin (a freed one comes back last); None when full."""

    __slots__ = ()

    def __init__(self, layout: Layout) -> None:
        super().__init__(layout.capacity)

    def claim(self, prefix: int) -> bool:
        """Take this very prefix (a miner moved here keeps its extranonce1); False when taken or out of range."""
        if not 0 <= prefix < len(self._used) or self._used[prefix]:
            return False
        self._used[prefix] = 1
        self.in_use += 1
        return True
