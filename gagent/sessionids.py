"""Miner session ids (u16, 0…0xFFFE): each is a miner's extranonce1 and names it in every frame."""
from typing import Optional

from .protocol.exmessage import MAX_SESSION_ID


class SessionIdAllocator:
    """Round-robin allocation: a freed id is handed out again only after every other free id."""

    __slots__ = ("_used", "_next", "in_use")

    def __init__(self, size: int = MAX_SESSION_ID + 1) -> None:
        self._used = bytearray(size)
        self._next = 0
        self.in_use = 0

    def allocate(self) -> Optional[int]:
        """A free id, or None when all are taken."""
        size = len(self._used)
        if self.in_use >= size:
            return None
        start = self._next
        found = self._used.find(0, start)
        if found < 0:
            found = self._used.find(0, 0, start)
        self._used[found] = 1
        self._next = (found + 1) % size
        self.in_use += 1
        return found

    def free(self, session_id: int) -> None:
        """Return an id to the pool."""
        if self._used[session_id]:
            self._used[session_id] = 0
            self.in_use -= 1
