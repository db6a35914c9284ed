"""``gagent-sim``: a pool simulator, an agent and N hashing miners in one process, then a share table.

    python -m gagent.sim.demo --miners 5 --seconds 20 [--pool stratum]

``--pool btcagent`` (the default) runs the BTCAgent pool simulator; ``--pool stratum`` the plain stratum v1
one (`StratumPoolSimulator`), which the agent reaches through a ``stratum+tcp://`` pool entry. A stratum
pool credits every share to the agent's account; the table credits each to its worker by the extranonce2
prefix the agent gave the miner (its extranonce1).

Everything listens on 127.0.0.1 on free ports. Exit status 0 when the pool accepted at least one share.
"""
import argparse
import logging
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

import gevent

from .miner import SimMiner

DEMO_DIFFICULTY = 1.0 / 65536   # ~65k hashes per share: several shares per second for Python miners
SUB_ACCOUNT = "demo"


def _counts(value: Any) -> Tuple[int, int]:
    """(accepted, rejected) from whatever one pool stats entry looks like."""
    if isinstance(value, dict):
        return int(value.get("accepted", 0)), int(value.get("rejected", 0))
    if isinstance(value, (tuple, list)) and len(value) >= 2:
        return int(value[0]), int(value[1])
    return int(getattr(value, "accepted", 0)), int(getattr(value, "rejected", 0))


def pool_table(stats: Any) -> Dict[Tuple[str, str], Tuple[int, int]]:
    """Normalize the pool simulator's stats to {(sub_account, worker): (accepted, rejected)}."""
    table: Dict[Tuple[str, str], Tuple[int, int]] = {}
    if isinstance(stats, dict):
        for key, value in stats.items():
            key = tuple(key) if isinstance(key, (tuple, list)) else (SUB_ACCOUNT, str(key))
            table[key] = _counts(value)
    return table


def stratum_table(verdicts: List[Tuple[str, bool]],
                  miners: List[SimMiner]) -> Dict[Tuple[str, str], Tuple[int, int]]:
    """{(sub_account, worker): (accepted, rejected)} from a stratum pool's (extranonce2, accepted)
    verdicts: a share is the worker's whose extranonce1 begins its extranonce2; others are listed
    under "en2 XXXX…" (a miner that reconnected has another extranonce1)."""
    prefixes = {m.extranonce1: m.worker for m in miners if m.extranonce1}
    table: Dict[Tuple[str, str], Tuple[int, int]] = {}
    for en2, ok in verdicts:
        worker = next((w for en1, w in prefixes.items() if en2.startswith(en1)), "en2 %s..." % en2[:8])
        acc, rej = table.get((SUB_ACCOUNT, worker), (0, 0))
        table[(SUB_ACCOUNT, worker)] = (acc + ok, rej + (not ok))
    return table


def _summary(pool: Any, miners: List[SimMiner]) -> str:
    table = pool_table(pool.stats)
    pool_acc = sum(a for a, _ in table.values())
    pool_rej = sum(r for _, r in table.values())
    return ("miners: %d connected, %d sent, %d accepted, %d rejected | pool: %d accepted, %d rejected"
            % (sum(1 for m in miners if m.connected and not m.closed),
               sum(m.shares_sent for m in miners), sum(m.accepted for m in miners),
               sum(m.rejected for m in miners), pool_acc, pool_rej))


def build_parser() -> argparse.ArgumentParser:
    """Command-line options of gagent-sim."""
    parser = argparse.ArgumentParser(prog="gagent-sim", description="A pool simulator, an agent and N hashing miners in one process.")
    parser.add_argument("--miners", type=int, default=5, help="number of simulated miners (default 5)")
    parser.add_argument("--seconds", type=float, default=20.0, help="how long to mine (default 20)")
    parser.add_argument("--pool", choices=("btcagent", "stratum"), default="btcagent",
                        help="the pool simulator's protocol: BTCAgent (default) or plain stratum v1")
    parser.add_argument("--difficulty", type=float, default=DEMO_DIFFICULTY,
                        help="pool starting difficulty (default 1/65536)")
    parser.add_argument("--report-every", type=float, default=3.0, help="seconds between progress lines")
    parser.add_argument("--version-rolling", action="store_true", help="miners negotiate version rolling")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the demo; returns the exit status (0: shares were accepted)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from ..config import config_from_dict   # imported late: `--help` works without them
    from ..server import Agent
    from .pool import PoolSimulator
    from .stratum_pool import Share, StratumPoolSimulator

    verdicts: List[Tuple[str, bool]] = []   # stratum: (extranonce2, accepted) of every share judged
    pool: Any
    if args.pool == "stratum":
        pool = StratumPoolSimulator(host="127.0.0.1", port=0, default_difficulty=args.difficulty,
                                    on_share=lambda conn, params, verdict, t: verdicts.append(
                                        (str(params[2] if len(params) > 2 else ""), isinstance(verdict, Share))))
        entry = ["stratum+tcp://127.0.0.1", 0, SUB_ACCOUNT, "x"]
    else:
        pool = PoolSimulator(host="127.0.0.1", port=0, default_difficulty=args.difficulty)
        entry = ["127.0.0.1", 0, SUB_ACCOUNT]
    agent = None
    miners: List[SimMiner] = []
    try:
        pool.start()
        print("%s pool simulator on %s:%d (difficulty %g)" % (args.pool, pool.address[0], pool.address[1],
                                                               args.difficulty))
        entry[1] = pool.address[1]
        agent = Agent(config_from_dict({
            "agent_listen_ip": "127.0.0.1", "agent_listen_port": 0, "pools": [entry]}))
        agent.start()
        if not agent.wait_ready(15):
            print("agent got no authorized pool connection within 15 s", file=sys.stderr)
            return 1
        host, port = agent.address
        print("agent on %s:%d, starting %d miners for %g s" % (host, port, args.miners, args.seconds))
        for i in range(args.miners):
            miners.append(SimMiner(host, port, username="%s.rig%02d" % (SUB_ACCOUNT, i + 1),
                                   version_rolling=args.version_rolling).start())
        loop = gevent.get_hub().loop
        start = loop.now()
        end = start + args.seconds
        while loop.now() < end:
            gevent.sleep(max(0.0, min(args.report_every, end - loop.now())))
            print("[%5.1fs] %s" % (loop.now() - start, _summary(pool, miners)))
        for miner in miners:
            if miner.error is not None:
                print("%s: error %r" % (miner.username, miner.error), file=sys.stderr)
            elif miner.closed:
                print("%s: connection closed by the agent" % miner.username, file=sys.stderr)
        for miner in miners:   # stop hashing, let the last answers and pool verdicts arrive
            miner.max_shares = miner.shares_sent
        if miners:
            miners[0].wait_for(lambda: all(m.closed or m.accepted + m.rejected >= m.shares_sent
                                           for m in miners), 2.0)
        gevent.sleep(0.1)
        for miner in miners:
            miner.stop()
        table = stratum_table(verdicts, miners) if args.pool == "stratum" else pool_table(pool.stats)
        print()
        print("%-12s %-12s %9s %9s   %s" % ("sub-account", "worker", "accepted", "rejected",
                                            "miner view (sent/acc/rej)"))
        by_worker = {m.username.split(".", 1)[1]: m for m in miners}
        for (sub, worker), (acc, rej) in sorted(table.items()):
            m = by_worker.get(worker)
            view = "%d/%d/%d" % (m.shares_sent, m.accepted, m.rejected) if m else "-"
            print("%-12s %-12s %9d %9d   %s" % (sub, worker, acc, rej, view))
        total_acc = sum(a for a, _ in table.values())
        total_rej = sum(r for _, r in table.values())
        print("%-25s %9d %9d" % ("total", total_acc, total_rej))
        return 0 if total_acc > 0 else 1
    finally:
        for miner in miners:
            miner.stop()
        if agent is not None:
            agent.stop()
        pool.stop()


if __name__ == "__main__":
    sys.exit(main())
