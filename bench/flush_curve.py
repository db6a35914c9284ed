"""Flush-window curve (issue 12): the default scenario for several `advanced.upstream_flush_delay_ms`.

    python bench/flush_curve.py                                 # windows 0,5,20,50,100 ms, 10,000 miners
    python bench/flush_curve.py --windows 0,5,10,25 --miners 2000 --seconds 30 --repeat 2

Every option of bench/run.py applies (`--agent-config` is merged under each window's setting, so e.g.
`'{"advanced":{"pool_connection_number_per_subaccount":1}}'` gives the curve for one connection).
Values the agent's config validation rejects are passed through all the same: that run fails and its
row says so. Prints a table on stderr — window → upstream segments/s, wire kbps, payload kbps,
share-answer p99, share→pool p99, shares lost — and one JSON document on stdout
(``{"windows": [{"flush_delay_ms": …, "result": {…}}, …]}``, each result as bench/run.py prints it,
medians with ``--repeat``); every run is also appended to bench/out/results.jsonl.
"""
import json
import os
import sys
from typing import Any, Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import run  # noqa: E402  (monkey-patches with gevent on import, as bench/run.py does)

# (column title, path in a result object)
COLUMNS = [
    ("segments/s", ("upstream_segments_per_s",)),
    ("wire kbps", ("upstream_wire_kbps",)),
    ("payload kbps", ("upstream_payload_kbps",)),
    ("answer p99 ms", ("share_answer_latency_ms", "p99")),
    ("pool p99 ms", ("share_latency_ms", "p99")),
    ("shares lost", ("share_latency_ms", "unmatched")),
    ("cpu core", ("cpu_core_share",)),
]


def parse_windows(text: str) -> List[float]:
    """"0,5,20" → [0, 5, 20] (integers stay integers, as the config expects)."""
    out: List[Any] = []
    for part in text.split(","):
        value = float(part)
        out.append(int(value) if value.is_integer() else value)
    return out


def curve_table(rows: List[Dict[str, Any]]) -> str:
    """One line per window: the COLUMNS figures, or the error of a window whose runs failed."""
    header = ["window ms"] + [title for title, _ in COLUMNS]
    lines = [header]
    for row in rows:
        result = row["result"]
        if "error" in result:
            lines.append([str(row["flush_delay_ms"]), "failed: " + result["error"][:80]])
            continue
        lines.append([str(row["flush_delay_ms"])] + [run._fmt(run.dig(result, path)) for _, path in COLUMNS])
    widths = [max(len(line[i]) for line in lines if i < len(line)) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = run.build_parser()
    parser.description = "flush-window curve: the benchmark for several advanced.upstream_flush_delay_ms"
    parser.add_argument("--windows", default="0,5,20,50,100",
                        help="comma-separated advanced.upstream_flush_delay_ms values (default 0,5,20,50,100)")
    args = parser.parse_args(argv)
    if args.compare or args.compare_kinds or args.compare_listeners:
        parser.error("--compare, --compare-kinds and --compare-listeners are not supported here: run "
                     "bench/run.py per window")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    os.makedirs(run.OUT_DIR, exist_ok=True)
    base = json.loads(args.agent_config) if args.agent_config else None
    label = args.label
    rows: List[Dict[str, Any]] = []
    all_ok = True
    for window in parse_windows(args.windows):
        print("flush window %s ms" % window, file=sys.stderr, flush=True)
        config = run.deep_merge(base, {"advanced": {"upstream_flush_delay_ms": window}})
        args.label = ("%s flush=%sms" % (label, window)).strip()   # stored with each run's result
        runs, ok = run.run_all(args, config)
        all_ok = all_ok and ok
        rows.append({"flush_delay_ms": window, "result": run.median_result(runs["gagent"])})
    print(curve_table(rows), file=sys.stderr)
    print(json.dumps({"miners": args.miners, "seconds": args.seconds, "repeat": args.repeat,
                      "agent_config": args.agent_config, "windows": rows}))
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
