"""Bitcoin share arithmetic (sha256d): coinbase, merkle root, 80-byte header, difficulty targets.

Used by the pool simulator to validate shares and by the miner simulator to find them.
"""
import hashlib
import struct
from typing import Iterable

# Difficulty 1 target as btcpool uses it: 0x00000000FFFF0000...0000.
DIFF1_TARGET = 0xFFFF << 208


def sha256d(data: bytes) -> bytes:
    """Double SHA-256, bytes in hash (internal) order."""
    return hashlib.sha256(hashlib.sha256(data).digest()).digest()


def coinbase(coinb1_hex: str, extranonce1_hex: str, extranonce2_hex: str, coinb2_hex: str) -> bytes:
    """The coinbase transaction bytes: coinb1 ‖ extranonce1 ‖ extranonce2 ‖ coinb2."""
    return bytes.fromhex(coinb1_hex + extranonce1_hex + extranonce2_hex + coinb2_hex)


def merkle_root(coinbase_tx: bytes, branches_hex: Iterable[str]) -> bytes:
    """Fold the coinbase hash with each branch: root = sha256d(root ‖ branch)."""
    root = sha256d(coinbase_tx)
    for branch in branches_hex:
        root = sha256d(root + bytes.fromhex(branch))
    return root


def swap_words(hex32: str) -> bytes:
    """A stratum prevhash (each 4-byte word printed big-endian) to internal byte order."""
    raw = bytes.fromhex(hex32)
    return b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))


def header(version: int, prevhash_hex: str, root: bytes, ntime: int, nbits: int, nonce: int) -> bytes:
    """The 80-byte block header."""
    return (struct.pack("<I", version) + swap_words(prevhash_hex) + root
            + struct.pack("<III", ntime, nbits, nonce))


def header_hash_int(header_bytes: bytes) -> int:
    """sha256d of a header as the integer compared against targets (display order)."""
    return int.from_bytes(sha256d(header_bytes), "little")


def target_for_difficulty(difficulty: float) -> int:
    """Largest header hash that meets `difficulty`."""
    if difficulty <= 0:
        raise ValueError("difficulty must be positive")
    if float(difficulty).is_integer():
        return DIFF1_TARGET // int(difficulty)
    return int(DIFF1_TARGET / difficulty)


def meets_difficulty(header_bytes: bytes, difficulty: float) -> bool:
    """True when the header's hash is at or below the target of `difficulty`."""
    return header_hash_int(header_bytes) <= target_for_difficulty(difficulty)
