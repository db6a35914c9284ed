"""Local share checking (gagent/protocol/sharecheck.py): real blocks, the worked share, properties."""
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gagent.protocol import hashing
from gagent.protocol.jobs import JobError
from gagent.protocol.sharecheck import (BAD_VERSION, LOW, MINER, POOL, SeenShares, check, prepare_job,
                                        share_difficulty)
from gagent.protocol.stratum import LOW_DIFFICULTY

EASY = hashing.target_for_difficulty(2.0 ** -40)   # every hash meets it

# Genesis block: its coinbase split as a pool with a 4-byte extranonce1 and an 8-byte extranonce2 would
# send it (the cut points fall inside the scriptSig's text).
GENESIS_CB = bytes.fromhex(
    "01000000010000000000000000000000000000000000000000000000000000000000000000ffffffff4d04ffff001d0104"
    "455468652054696d65732030332f4a616e2f32303039204368616e63656c6c6f72206f6e206272696e6b206f66207365"
    "636f6e64206261696c6f757420666f722062616e6b73ffffffff0100f2052a01000000434104678afdb0fe5548271967f1"
    "a67130b7105cd6a828e03909a67962e0ea1f61deb649f6bc3f4cef38c4f35504e51ec112de5c384df7ba0b8d578a4c702b"
    "6bf11d5fac00000000")
GENESIS_HASH = 0x000000000019D6689C085AE165831E934FF763AE46A2A6C172B3F1B60A8CE26F
G_EN1, G_EN2 = GENESIS_CB[60:64], GENESIS_CB[64:72]
GENESIS_JOB = ["0", "00" * 32, GENESIS_CB[:60].hex(), GENESIS_CB[72:].hex(), [], "00000001", "1d00ffff",
               "495fab29", True]
GENESIS_NONCE = 2083236893

# Block 100000: four transactions, so the coinbase needs two merkle branches. Its 8-byte scriptSig is cut
# as an AntPool-shaped job: extranonce1 044c8604, extranonce2 (4 bytes) 1b020602.
B100K_CB = bytes.fromhex(
    "01000000010000000000000000000000000000000000000000000000000000000000000000ffffffff08044c86041b020602"
    "ffffffff0100f2052a010000004341041b0e8c2567c12536aa13357b79a073dc4444acb83c4ec7a0e2f99dd7457516c581"
    "7242da796924ca4e99947d087fedf9ce467cb9f7c6287078f801df276fdf84ac00000000")
B100K_JOB = ["1", "1901125004612a1701c3a621d930d31d36b607df1fccc2160002d01c00000000",
             B100K_CB[:42].hex(), B100K_CB[50:].hex(),
             ["c40297f730dd7b5a99567eb8d27b78758f607507c52292d02d4031895b52f2ff",   # txid of tx 1
              "49aef42d78e3e9999c9e6ec9e1dddd6cb880bf3b076a03be1318ca789089308e"],  # sha256d(tx2 ‖ tx3)
             "00000001", "1b04864c", "4d1b2237", False]
B100K_HASH = 0x000000000003BA27AA200B1CECAAD478D2B00432346C3F1F3986DA1AFD33E506

# docs/protocol.md §4.6: the worked share, with version rolling.
WORKED_JOB = ["3", "4d16b6f85af6e2198f44ae2a6de67f78487ae5611b77c6c0440b921e00000000",
              "01000000010000000000000000000000000000000000000000000000000000000000000000ffffffff2503ef98030400ba7f5a",
              "0a2f6d792d706f6f6c2fffffffff0100f2052a010000001976a914000000000000000000000000000000000000000088ac00000000",
              ["1b2e4ca2dd5d4e87ac1bd6efa7a6b4f3a16c6e2ef7b6ee4c4a1de3c4b1d2e3f4",
               "5a6b7c8d9e0f112233445566778899aabbccddeeff00112233445566778899aa"],
              "20000000", "1a0ffff0", "5a7fba00", False]
WORKED_HASH = 0xFD3AE6E23AD538AC5FDC7C0A30FA79220581FF90414013DAC455004DD5F42ED6


def test_genesis_block_hashes_and_meets_difficulty_1():
    job = prepare_job(GENESIS_JOB, G_EN1, 1)
    result = check(job, G_EN2, 1231006505, GENESIS_NONCE, None, 0, job.pool_target)
    assert result == (GENESIS_HASH, POOL) and result.error is None
    assert result.difficulty == pytest.approx(2536.4263, rel=1e-6)
    assert check(prepare_job(GENESIS_JOB, G_EN1, 4096), G_EN2, 1231006505, GENESIS_NONCE, None, 0,
                 hashing.target_for_difficulty(1)).verdict == MINER
    low = check(prepare_job(GENESIS_JOB, G_EN1, 4096), G_EN2, 1231006505, GENESIS_NONCE, None, 0,
                hashing.target_for_difficulty(2600))
    assert low.verdict == LOW and low.error == LOW_DIFFICULTY


def test_block_100000_through_two_merkle_branches():
    job = prepare_job(B100K_JOB, B100K_CB[42:46], 1)
    assert job.ntime == 1293623863 and not job.clean
    result = check(job, B100K_CB[46:50], 1293623863, 274148111, None, 0, EASY)
    assert result == (B100K_HASH, POOL)
    assert check(job, B100K_CB[46:50], 1293623863, 274148112, None, 0, EASY).hash != B100K_HASH


def test_worked_share_with_version_rolling():
    job = prepare_job(WORKED_JOB, bytes.fromhex("9a3c01f2"), 1)
    en2 = bytes.fromhex("0000002a0000beef")
    result = check(job, en2, 0x5A7FBA00, 0x1C9F0A77, 0x00A4C000, 0x1FFFE000, hashing.target_for_difficulty(1))
    assert result == (WORKED_HASH, LOW) and result.error == LOW_DIFFICULTY
    assert check(job, en2, 0x5A7FBA00, 0x1C9F0A77, 0x00A4C000, 0x1FFFE000, EASY).verdict == MINER


def test_version_bits_outside_the_mask_are_refused_without_hashing():
    job = prepare_job(WORKED_JOB, bytes.fromhex("9a3c01f2"), 1)
    en2 = bytes(8)
    bad = check(job, en2, 0, 0, 0x00A4C000, 0x00004000, EASY)   # mask does not cover 0x00a08000
    assert bad == (0, BAD_VERSION) and bad.error == 33 and bad.difficulty == 0.0
    assert check(job, en2, 0, 0, 0x1, 0, EASY).verdict == BAD_VERSION   # no mask negotiated
    # zero bits with no mask, and no bits at all, both hash the job's own version
    assert check(job, en2, 0, 0, 0, 0, EASY) == check(job, en2, 0, 0, None, 0, EASY)


def test_bip310_version_replaces_masked_bits_of_the_job_version():
    job = prepare_job(WORKED_JOB[:5] + ["3fffe000"] + WORKED_JOB[6:], bytes(4), 1)
    root = hashing.merkle_root(hashing.coinbase(WORKED_JOB[2], "00000000", "00" * 8, WORKED_JOB[3]),
                               WORKED_JOB[4])
    head = hashing.header(0x20002000, WORKED_JOB[1], root, 5, 0x1A0FFFF0, 7)
    assert check(job, bytes(8), 5, 7, 0x00002000, 0x1FFFE000, EASY).hash == hashing.header_hash_int(head)


@pytest.mark.parametrize("bad", [
    WORKED_JOB[:8], "notalist", [3] + WORKED_JOB[1:], WORKED_JOB[:1] + ["00" * 31] + WORKED_JOB[2:],
    WORKED_JOB[:2] + ["0x01"] + WORKED_JOB[3:], WORKED_JOB[:4] + [["ab"]] + WORKED_JOB[5:],
    WORKED_JOB[:4] + ["ab" * 32] + WORKED_JOB[5:], WORKED_JOB[:6] + ["1a0fff"] + WORKED_JOB[7:]])
def test_prepare_job_refuses_malformed_params(bad):
    with pytest.raises(JobError):
        prepare_job(bad, bytes(4), 1)


def test_prepare_job_refuses_a_non_positive_pool_difficulty():
    with pytest.raises(JobError):
        prepare_job(WORKED_JOB, bytes(4), 0)


def test_difficulty_and_target_round_trip():
    for difficulty in (2.0 ** -30, 0.001, 1, 3, 65536, 1.5e6, 2.0 ** 40, 1e12):
        assert share_difficulty(hashing.target_for_difficulty(difficulty)) == pytest.approx(difficulty, rel=1e-9)
    assert share_difficulty(hashing.DIFF1_TARGET) == 1.0
    assert share_difficulty(0) == float("inf")


def test_seen_shares_finds_duplicates_and_stays_bounded():
    seen = SeenShares(cap=8)
    assert seen.add(b"\x01", 1, 2, None)
    assert not seen.add(b"\x01", 1, 2, None)
    assert not seen.add(b"\x01", 1, 2, 0)          # no version bits and zero bits are the same share
    assert seen.add(b"\x01", 1, 2, 0x2000) and seen.add(b"\x02", 1, 2, None) and seen.add(b"\x01", 1, 3, None)
    for nonce in range(100):
        seen.add(b"\x09", 0, nonce, None)
        assert len(seen) <= 8
    assert not seen.add(b"\x09", 0, 99, None)      # the latest cap/2 are always remembered
    assert seen.add(b"\x01", 1, 2, None)           # long forgotten: the pool will judge it
    job = prepare_job(WORKED_JOB, bytes(4), 1)
    assert job.seen.add(b"\x00" * 8, 0, 0, None) and not job.seen.add(b"\x00" * 8, 0, 0, None)
    with pytest.raises(ValueError):
        SeenShares(cap=1)


# ---------------------------------------------------------------------------------------- properties
hexbytes = st.binary
u32 = st.integers(0, 0xFFFFFFFF)
MASK = 0x1FFFE000


@st.composite
def jobs(draw):
    """(notify params, extranonce1) with random coinbase parts, 0-12 branches and header fields."""
    params = ["j", draw(hexbytes(min_size=32, max_size=32)).hex(), draw(hexbytes(min_size=1, max_size=120)).hex(),
              draw(hexbytes(min_size=1, max_size=200)).hex(),
              [b.hex() for b in draw(st.lists(hexbytes(min_size=32, max_size=32), max_size=12))],
              "%08x" % draw(u32), "%08x" % draw(u32), "%08x" % draw(u32), draw(st.booleans())]
    return params, draw(hexbytes(min_size=0, max_size=8))


def reference_hash(params, en1, en2, ntime, nonce, version):
    """The same share through hashing.py's slower helpers."""
    cb = hashing.coinbase(params[2], en1.hex(), en2.hex(), params[3])
    head = hashing.header(version, params[1], hashing.merkle_root(cb, params[4]), ntime, int(params[6], 16), nonce)
    return hashing.header_hash_int(head)


def reference_verdict(value, miner_difficulty, pool_difficulty):
    if value <= hashing.target_for_difficulty(pool_difficulty):
        return POOL
    return MINER if value <= hashing.target_for_difficulty(miner_difficulty) else LOW


@settings(max_examples=150, deadline=None)
@given(jobs(), hexbytes(min_size=1, max_size=16), u32, u32, st.one_of(st.none(), u32.map(lambda v: v & MASK)),
       st.sampled_from([2.0 ** -32, 2.0 ** -31, 2.0 ** -30]), st.sampled_from([2.0 ** -31, 2.0 ** -30]))
def test_check_agrees_with_hashing_helpers(job_en1, en2, ntime, nonce, bits, miner_diff, pool_diff):
    params, en1 = job_en1
    job = prepare_job(params, en1, pool_diff)
    result = check(job, en2, ntime, nonce, bits, MASK, hashing.target_for_difficulty(miner_diff))
    job_version = int(params[5], 16)
    version = job_version if bits is None else (job_version & ~MASK) | bits
    value = reference_hash(params, en1, en2, ntime, nonce, version)
    assert result.hash == value
    assert result.verdict == reference_verdict(value, miner_diff, pool_diff)


MINER_DIFF = 2.0 ** -24   # about 1 hash in 256 meets it


def brute_force(params, en1, en2, bits):
    """The first nonce whose share meets MINER_DIFF, found with hashing.py alone."""
    version = (int(params[5], 16) & ~MASK) | bits
    target = hashing.target_for_difficulty(MINER_DIFF)
    nonce = 0
    while reference_hash(params, en1, en2, int(params[7], 16), nonce, version) > target:
        nonce += 1
    return nonce


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(jobs(), hexbytes(min_size=4, max_size=8), u32.map(lambda v: v & MASK), st.data())
def test_brute_forced_share_is_accepted_and_any_flipped_byte_changes_it(job_en1, en2, bits, data):
    params, en1 = job_en1
    nonce = brute_force(params, en1, en2, bits)
    ntime = int(params[7], 16)
    miner_target = hashing.target_for_difficulty(MINER_DIFF)
    job = prepare_job(params, en1, 2.0 ** -20)
    found = check(job, en2, ntime, nonce, bits, MASK, miner_target)
    assert found.verdict in (MINER, POOL) and found.difficulty >= MINER_DIFF
    assert found.verdict == reference_verdict(found.hash, MINER_DIFF, 2.0 ** -20)

    def flip(raw: bytes) -> bytes:
        at = data.draw(st.integers(0, len(raw) - 1))
        return raw[:at] + bytes([raw[at] ^ data.draw(st.integers(1, 255))]) + raw[at + 1:]

    def flip_word(value: int) -> int:
        return int.from_bytes(flip(value.to_bytes(4, "little")), "little")

    def flip_field(index: int) -> list:
        changed = list(params)
        if index == 5:   # a job version bit outside the mask (bits inside it are the miner's)
            bit = data.draw(st.sampled_from([b for b in range(32) if not MASK >> b & 1]))
            changed[5] = "%08x" % (int(params[5], 16) ^ 1 << bit)
        elif index == 4:
            pick = data.draw(st.integers(0, len(params[4]) - 1))
            changed[4] = params[4][:pick] + [flip(bytes.fromhex(params[4][pick])).hex()] + params[4][pick + 1:]
        else:
            changed[index] = flip(bytes.fromhex(params[index])).hex()
        return changed

    shares = [(job, en1, params, flip(en2), ntime, nonce, bits), (job, en1, params, en2, flip_word(ntime), nonce, bits),
              (job, en1, params, en2, ntime, flip_word(nonce), bits),
              (job, en1, params, en2, ntime, nonce, bits ^ (1 << data.draw(st.integers(13, 28))))]
    fields = [1, 2, 3, 5, 6] + ([4] if params[4] else [])
    for index in fields:
        changed = flip_field(index)
        shares.append((prepare_job(changed, en1, 2.0 ** -20), en1, changed, en2, ntime, nonce, bits))
    if en1:
        other = flip(en1)
        shares.append((prepare_job(params, other, 2.0 ** -20), other, params, en2, ntime, nonce, bits))
    for share_job, share_en1, share_params, share_en2, share_ntime, share_nonce, share_bits in shares:
        result = check(share_job, share_en2, share_ntime, share_nonce, share_bits, MASK, miner_target)
        assert result.hash != found.hash
        version = (int(share_params[5], 16) & ~MASK) | share_bits
        assert result.hash == reference_hash(share_params, share_en1, share_en2, share_ntime, share_nonce, version)
        assert result.verdict == reference_verdict(result.hash, MINER_DIFF, 2.0 ** -20)
