"""Extranonce subdivision (gagent/protocol/extranonce.py): sizes per pool, refusal, allocation, no collisions."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gagent.protocol import hashing
from gagent.protocol.extranonce import MAX_PREFIXES, LayoutError, PrefixAllocator, plan_layout
from gagent.protocol.sharecheck import POOL, check, prepare_job
from test_sharecheck import B100K_CB, B100K_HASH, B100K_JOB


@pytest.mark.parametrize("pool, en1, size, prefix, miner, capacity", [
    ("ckpool", "a1b2c3d4", 8, 4, 4, MAX_PREFIXES),
    ("btcpool", "0001e240", 8, 4, 4, MAX_PREFIXES),
    ("ViaBTC", "ffffffff", 8, 4, 4, MAX_PREFIXES),
    ("btcpool configured 7", "00000001", 7, 3, 4, MAX_PREFIXES),
    ("btcpool configured 6", "00000001", 6, 2, 4, MAX_PREFIXES),
    ("btcpool configured 5", "00000001", 5, 1, 4, 256),
    ("AntPool", "7d7d0000", 4, 1, 3, 256),
    ("Luxor / Binance", "00000000", 4, 1, 3, 256),
    ("NiceHash", "6351117f64", 3, 1, 2, 256),
    ("wide", "01020304", 16, 12, 4, MAX_PREFIXES),
])
def test_layout_per_pool_extranonce2_size(pool, en1, size, prefix, miner, capacity):
    layout = plan_layout(en1, size)
    assert (layout.prefix_size, layout.miner_en2_size, layout.capacity) == (prefix, miner, capacity), pool
    assert layout.prefix_size + layout.miner_en2_size == size and 2 <= layout.miner_en2_size <= 8
    assert layout.pool_en1 == bytes.fromhex(en1) and layout.en1_in_coinb1


def test_capacity_can_be_capped_lower():
    assert plan_layout("00000000", 8, max_prefixes=500).capacity == 500
    assert plan_layout("00000000", 4, max_prefixes=1000).capacity == 256
    with pytest.raises(ValueError):
        plan_layout("00000000", 8, max_prefixes=0)


@pytest.mark.parametrize("size", [2, 1, 0, -1])
def test_pools_with_under_3_bytes_are_refused_with_the_reason(size):
    with pytest.raises(LayoutError, match="too few to share.*3 or more"):
        plan_layout("00000000", size)


@pytest.mark.parametrize("en1, size", [("xyz0", 8), ("0x1234", 8), ("abc", 8), (None, 8), ("00" * 33, 8),
                                       ("00000000", "8"), ("00000000", 8.0), ("00000000", True),
                                       ("00000000", 33)])
def test_malformed_subscribe_answers_are_refused(en1, size):
    with pytest.raises(LayoutError):
        plan_layout(en1, size)


def test_what_a_miner_is_told_en1_in_coinb1():
    layout = plan_layout("6351117f64", 3)
    assert layout.miner_extranonce1(0x2A) == "2a" and layout.miner_en2_size == 2
    assert layout.miner_coinb1("abcd") == "abcd6351117f64"
    assert plan_layout("a1b2c3d4", 8).miner_extranonce1(0x2A) == "0000002a"
    assert layout.pool_extranonce2(0x2A, bytes.fromhex("beef")).hex() == "2abeef"


def test_what_a_miner_is_told_en1_in_extranonce1():
    layout = plan_layout("6351117f64", 3, en1_in_coinb1=False)
    assert layout.miner_extranonce1(0x2A) == "6351117f642a"
    assert layout.miner_coinb1("abcd") == "abcd"
    assert layout.pool_extranonce2(0x2A, bytes.fromhex("beef")).hex() == "2abeef"


def test_parse_miner_extranonce2_wants_exactly_the_miner_size():
    layout = plan_layout("00000000", 4)
    assert layout.parse_miner_extranonce2("00beEF") == bytes.fromhex("00beef")
    for bad in ("beef", "00beef00", "0xbeef", "00bexf", 0xBEEF, None, ["00beef"]):
        assert layout.parse_miner_extranonce2(bad) is None


def test_keeps_miners_of():
    home = plan_layout("00000001", 8)
    assert home.keeps_miners_of(plan_layout("0a0b0c0d", 8))          # another connection, another en1
    assert home.keeps_miners_of(plan_layout("0a0b0c0d0e", 8))        # even an en1 of another length
    assert not home.keeps_miners_of(plan_layout("00000001", 4))      # other shape: miners must re-subscribe
    assert not home.keeps_miners_of(plan_layout("00000001", 8, en1_in_coinb1=False))
    classic = plan_layout("00000001", 8, en1_in_coinb1=False)
    assert classic.keeps_miners_of(plan_layout("00000001", 8, en1_in_coinb1=False))
    assert not classic.keeps_miners_of(plan_layout("0a0b0c0d", 8, en1_in_coinb1=False))


def test_allocator_exhaustion_and_round_robin_reuse():
    prefixes = PrefixAllocator(plan_layout("7d7d0000", 4))
    taken = [prefixes.allocate() for _ in range(256)]
    assert taken == list(range(256)) and prefixes.in_use == 256
    assert prefixes.allocate() is None
    prefixes.free(7)
    prefixes.free(3)
    assert prefixes.allocate() == 3 and prefixes.allocate() == 7 and prefixes.allocate() is None
    prefixes.free(200)
    prefixes.free(200)                      # freeing twice changes nothing
    assert prefixes.in_use == 255


def test_allocator_claims_a_moved_miners_prefix():
    prefixes = PrefixAllocator(plan_layout("00000000", 3))
    assert prefixes.claim(0x2A) and not prefixes.claim(0x2A)
    assert not prefixes.claim(256) and not prefixes.claim(-1)
    assert prefixes.in_use == 1
    assert 0x2A not in [prefixes.allocate() for _ in range(255)]
    assert prefixes.allocate() is None
    prefixes.free(0x2A)
    assert prefixes.claim(0x2A)


@settings(max_examples=200, deadline=None)
@given(st.integers(3, 16), st.binary(min_size=0, max_size=8), st.booleans(), st.data())
def test_two_miners_never_share_pool_work_and_miners_hash_the_pools_coinbase(size, en1, in_coinb1, data):
    layout = plan_layout(en1.hex(), size, en1_in_coinb1=in_coinb1)
    top = 256 ** layout.prefix_size - 1
    first, second = data.draw(st.lists(st.integers(0, top), min_size=2, max_size=2, unique=True))
    en2 = st.binary(min_size=layout.miner_en2_size, max_size=layout.miner_en2_size)
    mine, theirs = data.draw(en2), data.draw(en2)
    ours = layout.pool_extranonce2(first, mine)
    assert len(ours) == size and ours != layout.pool_extranonce2(second, theirs)
    coinb1, coinb2 = data.draw(st.binary(max_size=60)).hex(), data.draw(st.binary(max_size=60)).hex()
    as_miner = hashing.coinbase(layout.miner_coinb1(coinb1), layout.miner_extranonce1(first), mine.hex(), coinb2)
    as_pool = hashing.coinbase(coinb1, en1.hex(), ours.hex(), coinb2)
    assert as_miner == as_pool


def test_block_100000_as_an_antpool_shaped_job_through_a_miners_prefix():
    pool_en1 = B100K_CB[42:46].hex()                     # 044c8604; the pool's extranonce2 is 4 bytes
    layout = plan_layout(pool_en1, 4)
    prefixes = PrefixAllocator(layout)
    assert prefixes.claim(0x1B)
    assert layout.miner_extranonce1(0x1B) == "1b" and layout.miner_en2_size == 3
    miner_en2 = layout.parse_miner_extranonce2("020602")
    as_miner = hashing.coinbase(layout.miner_coinb1(B100K_JOB[2]), "1b", "020602", B100K_JOB[3])
    assert as_miner == B100K_CB
    job = prepare_job(B100K_JOB, layout.pool_en1, 1)
    result = check(job, layout.pool_extranonce2(0x1B, miner_en2), 1293623863, 274148111, None, 0, job.pool_target)
    assert result == (B100K_HASH, POOL)
