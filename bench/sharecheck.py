"""Cost per share of the plain-pool building blocks: local share check, extranonce and vardiff bookkeeping.

    python bench/sharecheck.py                 # 7 runs of 20,000 shares each
    python bench/sharecheck.py --runs 11 --shares 50000

Prints the median over runs of µs per share (min and max beside it); no assertions. The job is shaped
like a real one: a 51-byte coinb1, a 4-byte pool extranonce1, an 8-byte extranonce2 cut into a 4-byte
prefix and the miner's 4 bytes, a 170-byte coinb2 (reward, witness commitment, one more output) and
version rolling under mask 1fffe000.
"""
import argparse
import os
import statistics
import sys
import time
from typing import Callable, List

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gagent.protocol import hashing  # noqa: E402
from gagent.protocol.extranonce import PrefixAllocator, plan_layout  # noqa: E402
from gagent.protocol.sharecheck import check, prepare_job  # noqa: E402
from gagent.protocol.vardiff import Vardiff  # noqa: E402

MASK = 0x1FFFE000
POOL_EN1 = "9a3c01f2"


def job_params(branches: int) -> list:
    rng = os.urandom
    return ["6a1f", rng(32).hex(), "01000000010000000000000000000000000000000000000000000000000000000000000000"
            "ffffffff2503ef98030400ba7f5a", rng(170).hex(), [rng(32).hex() for _ in range(branches)],
            "20000000", "17034219", "65a1b2c3", True]


def per_share(body: Callable[[int], object], shares: int, runs: int) -> List[float]:
    """µs per share of `body(i)` for i in range(shares), once per run."""
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        for i in range(shares):
            body(i)
        out.append((time.perf_counter() - start) / shares * 1e6)
    return out


def report(name: str, figures: List[float]) -> None:
    print("%-58s %7.2f µs   (min %.2f, max %.2f)" % (name, statistics.median(figures), min(figures), max(figures)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--shares", type=int, default=20000)
    args = parser.parse_args()
    runs, shares = args.runs, args.shares
    print("python %s, %d runs x %d shares, median per share" % (sys.version.split()[0], runs, shares))

    layout = plan_layout(POOL_EN1, 8)
    prefix = PrefixAllocator(layout).allocate()
    miner_target = hashing.target_for_difficulty(65536)
    for branches in (12, 0):
        params = job_params(branches)
        job = prepare_job(params, layout.pool_en1, 2.0 ** 20)
        en2 = layout.pool_extranonce2(prefix, bytes(4))
        report("check(), %d merkle branches" % branches,
               per_share(lambda i: check(job, en2, 0x65A1B2C3, i, 0x00A4C000, MASK, miner_target), shares, runs))

        def reference(i: int) -> None:
            cb = hashing.coinbase(params[2], POOL_EN1, en2.hex(), params[3])
            root = hashing.merkle_root(cb, params[4])
            hashing.header_hash_int(hashing.header(0x20A4C000, params[1], root, 0x65A1B2C3, 0x17034219, i))
        report("  hashing.py helpers for the same, for comparison", per_share(reference, shares, runs))
    params = job_params(12)
    report("prepare_job(), once per notify, 12 branches",
           per_share(lambda i: prepare_job(params, layout.pool_en1, 2.0 ** 20), shares // 10, runs))

    job = prepare_job(params, layout.pool_en1, 2.0 ** 20)
    hex_en2 = ["%08x" % i for i in range(shares)]

    pool_en2s = [layout.pool_extranonce2(prefix, bytes.fromhex(h)) for h in hex_en2]

    def extranonce(i: int) -> None:
        # the miner's en2 checked, the pool's en2 built, and its hex for the upstream submit
        layout.pool_extranonce2(prefix, layout.parse_miner_extranonce2(hex_en2[i])).hex()
    report("extranonce: parse miner en2, build pool en2, hex", per_share(extranonce, shares, runs))
    report("duplicate memory: job.seen.add()",
           per_share(lambda i: job.seen.add(pool_en2s[i], 0x65A1B2C3, i, 0x00A4C000), shares, runs))

    vardiff = Vardiff()
    state = vardiff.start(0.0, 2.0 ** 40)
    # a miner on the aim: one share every 10 s, a (no-change) retarget every 60 shares
    report("vardiff: share()", per_share(lambda i: vardiff.share(state, i * 10.0, state.difficulty, 2.0 ** 40),
                                          shares, runs))
    report("vardiff: tick() of a miner between retargets",
           per_share(lambda i: vardiff.tick(state, 1.0, 2.0 ** 40), shares, runs))
    report("(loop and call overhead, included in every line)", per_share(lambda i: None, shares, runs))


if __name__ == "__main__":
    main()
