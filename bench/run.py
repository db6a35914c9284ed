"""Benchmark driver: simulated pool (in this process) + agent (subprocess) + load generator (subprocess).

    python bench/run.py --miners 10000 --seconds 60 [--share-interval 10] [--job-interval 30]
    python bench/run.py --miners 1000 --seconds 30 --storm [restart|stall] [--storm-outage 3]
    python bench/run.py --miners 10000 --seconds 60 --compare /work/peers/btcagent --repeat 3
    python bench/run.py --miners 10000 --seconds 60 --pool-kind stratum [--pool-extranonce2-size 8]
    python bench/run.py --miners 10000 --seconds 60 --compare-kinds --repeat 2
    python bench/run.py --miners 10000 --seconds 60 --listeners 4
    python bench/run.py --miners 10000 --seconds 60 --compare-listeners 4 --repeat 2

Phases: idle (agent connected to the pool, no miners: idle RSS), connect (until every miner is authorized
and has a job), load (`--seconds` of shares and jobs: CPU, latencies, upstream traffic), optional storm
(the pool fails while the miners keep submitting; see `Run._storm_phase`), teardown.

`--compare CMD` runs the same scenario for gagent and then for the agent CMD (which gets
`-c CONF -l LOGDIR` appended), `--repeat N` runs each N times alternating; the figures are then medians
over the runs and a `ratio` object gives gagent / other for the headline figures.

`--pool-kind stratum` puts the plain stratum pool simulator (`StratumPoolSimulator`) in place of the
BTCAgent one, and gives the agent a ``stratum+tcp://`` pool entry. The agent then checks every share by
sha256d, so its config gets a tiny miner start difficulty (`--miner-difficulty`, default 1e-9, the
lowest it accepts: a random hash meets it with probability 0.23, and the load generator draws nonces
until one does) and the pool a difficulty that a share meeting the miner's meets with probability
`--pool-share-fraction`: that share of the shares goes upstream, the agent answers the rest itself.
Afterwards the driver hashes every submit as the miner saw its job to tell which shares had to reach
the pool (see `StratumPoolRecorder`). `--compare-kinds` runs gagent against both pool kinds,
alternating, `--repeat` times each, and gives stratum / btcagent ratios.

`--listeners N` gives the agent N listen ports in one process (a `listeners` list, entry i named ``li``
with its own sub-account ``benchi`` on the same pool) and the load generator spreads the miners evenly
over them. `--compare-listeners N` runs gagent with one listener and with N, alternating, `--repeat`
times each, and gives N / 1 ratios.

Prints one JSON document on stdout (a single run: the result object as before) and a short table on
stderr; appends every run's result object to bench/out/results.jsonl (raw samples of each run:
bench/out/samples-*.json). See bench/RESULTS.md for the fields.
"""
from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import resource  # noqa: E402
import shlex  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Set, Tuple  # noqa: E402

import gevent  # noqa: E402
import psutil  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
OUT_DIR = os.path.join(HERE, "out")
HOST = "127.0.0.1"
HEADER_BYTES = 52          # IPv4 + TCP with timestamps, per segment
SAMPLE_EVERY = 0.5         # RSS sampling period
STORM_LEAD = 2.0           # seconds of ordinary load before the pool fails
STORM_TAIL = 2.0           # seconds of load after every miner is mining again
SETTLE = 1.5               # seconds for the last answers and shares to land before counting

# BTCAgent pool: (miner extranonce1, extranonce2, nonce), hex as the miner wrote them;
# stratum pool: (pool extranonce1, the pool's extranonce2 = miner extranonce1 ‖ extranonce2, nonce)
ShareKey = Tuple[str, str, str]
Submit = List[Any]                # a load generator submit record (see bench/loadgen.py)

sys.path.insert(0, ROOT)


def raise_file_limit() -> int:
    """Raise the soft open-file limit to the hard one; returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def free_port() -> int:
    """A free TCP port on the loopback address."""
    s = socket.socket()
    s.bind((HOST, 0))
    port = s.getsockname()[1]
    s.close()
    return port


def percentile(values: List[float], q: float) -> Optional[float]:
    """The q-th percentile (0..100) of `values` by nearest rank, or None when empty."""
    if not values:
        return None
    values = sorted(values)
    k = min(len(values) - 1, max(0, int(round(q / 100.0 * len(values) + 0.5)) - 1))
    return values[k]


def ms(value: Optional[float]) -> Optional[float]:
    """Seconds → milliseconds, rounded; None stays None."""
    return None if value is None else round(value * 1000.0, 3)


def latency_summary(values: List[float]) -> Dict[str, Any]:
    """p50 / p99 / max in milliseconds and the sample count of latencies given in seconds."""
    return {"p50": ms(percentile(values, 50)), "p99": ms(percentile(values, 99)),
            "max": ms(max(values) if values else None), "samples": len(values)}


def deep_merge(base: Optional[Dict[str, Any]], extra: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """A copy of `base` with `extra` merged in; nested objects (``advanced``) are merged key by key."""
    out = dict(base or {})
    for key, value in (extra or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


# ---- measuring the agent process ----------------------------------------------------------------

class ProcessMeter:
    """RSS and CPU of a process and its children, RSS sampled in the background."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.peak = 0
        self.samples: List[Tuple[float, int]] = []
        self._sampler = gevent.spawn(self._sample_loop)

    def _tree(self) -> List[psutil.Process]:
        try:
            return [self.proc] + self.proc.children(recursive=True)
        except psutil.Error:
            return [self.proc]

    def rss(self) -> int:
        """Current RSS of the whole tree, bytes."""
        total = 0
        for p in self._tree():
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        return total

    def cpu_seconds(self) -> float:
        """user + system CPU seconds of the whole tree so far."""
        total = 0.0
        for p in self._tree():
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.Error:
                pass
        return total

    def reset_peak(self) -> None:
        """Start a new peak window."""
        self.peak = self.rss()

    def _sample_loop(self) -> None:
        while True:
            value = self.rss()
            self.samples.append((time.time(), value))
            self.peak = max(self.peak, value)
            gevent.sleep(SAMPLE_EVERY)

    def stop(self) -> None:
        self._sampler.kill(block=False)


def segs_out(pool_port: int) -> Tuple[int, int]:
    """(sum of segs_out, number of sockets) over the agent's sockets connected to the pool port."""
    out = subprocess.run(["/usr/bin/ss", "-tinH", "state", "established", "( dport = :%d )" % pool_port],
                         capture_output=True, text=True, timeout=10).stdout
    counts = [int(v) for v in re.findall(r"\bsegs_out:(\d+)", out)]
    return sum(counts), len(counts)


# ---- the pool side ------------------------------------------------------------------------------

class PoolRecorder:
    """The simulated pool plus what it saw: share receipt times and notify send times."""

    def __init__(self, difficulty: float, recv_buffer_size: Optional[int] = None) -> None:
        from gagent.sim.pool import PoolSimulator
        self.share_times: Dict[ShareKey, float] = {}
        self.notify_times: Dict[Tuple[str, str], float] = {}
        self.notify_keys: Set[Tuple[str, str]] = set()   # every (pool extranonce1, short id) sent
        self.shares = 0
        self.statuses: Dict[str, int] = {}
        self.recording = False
        self.by_account: Counter = Counter()   # shares read while recording, by sub-account
        extra = {"recv_buffer_size": recv_buffer_size} if recv_buffer_size else {}
        self.pool = PoolSimulator(host=HOST, port=0, default_difficulty=difficulty, job_interval=None,
                                  on_share=self._on_share, on_notify=self._on_notify, **extra)

    def _on_share(self, conn: Any, share: Any, status: Any, t_received: float) -> None:
        self.shares += 1
        self.statuses[str(status)] = self.statuses.get(str(status), 0) + 1
        if self.recording:
            self.by_account[conn.sub_account] += 1
        key = share_key(share)
        if key is not None:
            self.share_times[key] = t_received

    def _on_notify(self, conn: Any, short_id: Any, t_sent: float) -> None:
        key = (conn_extranonce1(conn), str(short_id))
        self.notify_keys.add(key)
        if self.recording:
            self.notify_times[key] = t_sent

    def read_keys(self) -> Set[ShareKey]:
        """Every share the pool read and judged, as (miner extranonce1, extranonce2, nonce)."""
        keys = set(self.share_times)
        for _conn_en1, sid, en2, nonce in self.pool.share_keys():
            key = normalize_share_key(sid, en2, nonce)
            if key is not None:
                keys.add(key)
        return keys

    @staticmethod
    def miner_key(submit: Submit, notifies: List[List[Any]]) -> ShareKey:
        """The key under which the pool records a submit of the load generator."""
        return submit[0], submit[1], submit[2]

    @staticmethod
    def pool_bound(submit: Submit, notifies: List[List[Any]]) -> bool:
        """Whether the share must reach the pool: every share does through a BTCAgent upstream."""
        return True


class StratumPoolRecorder:
    """The plain stratum pool simulator plus what it saw, with PoolRecorder's interface.

    The pool's difficulty is set so that a share meeting `miner_difficulty` (whose target may exceed
    2^256: every hash meets it) meets the pool's with probability `fraction`. A share that meets it must
    reach the pool; one that does not is answered by the agent alone.
    `pool_bound` tells them apart by hashing the share as the miner's job describes it (coinb1 there
    ends with the pool's extranonce1), independently of the agent.
    """

    def __init__(self, fraction: float, miner_difficulty: float, extranonce1_size: int, extranonce2_size: int,
                 recv_buffer_size: Optional[int] = None) -> None:
        from gagent.protocol import hashing
        from gagent.sim.stratum_pool import StratumPoolSimulator
        self.hashing = hashing
        miner_target = min(2.0 ** 256, hashing.DIFF1_TARGET / miner_difficulty)
        self.difficulty = hashing.DIFF1_TARGET / (fraction * miner_target)
        self.target = hashing.target_for_difficulty(self.difficulty)
        self.share_times: Dict[ShareKey, float] = {}
        self.notify_times: Dict[Tuple[str, str], float] = {}
        self.notify_keys: Set[Tuple[str, str]] = set()   # every (pool extranonce1, coinb2) sent
        self.shares = 0
        self.recording = False
        self.by_account: Counter = Counter()   # shares read while recording, by the user they went under
        self.pool = StratumPoolSimulator(
            host=HOST, port=0, default_difficulty=self.difficulty, extranonce1_size=extranonce1_size,
            extranonce2_size=extranonce2_size, recv_buffer_size=recv_buffer_size,
            on_share=self._on_share, on_notify=self._on_notify)

    @property
    def statuses(self) -> Dict[str, int]:
        """The pool's verdicts so far, by reason."""
        return dict(self.pool.statuses)

    def _on_share(self, conn: Any, params: list, verdict: Any, t_read: float) -> None:
        self.shares += 1
        if self.recording:
            self.by_account[conn.user] += 1
        if len(params) >= 5 and all(isinstance(p, str) for p in params[:5]):
            self.share_times[(conn.extranonce1, params[2].lower(), params[4].lower())] = t_read

    def _on_notify(self, conn: Any, job_id: str, t_sent: float) -> None:
        key = (conn.extranonce1, self.pool.jobs[job_id].coinb2)
        self.notify_keys.add(key)
        if self.recording:
            self.notify_times[key] = t_sent

    def read_keys(self) -> Set[ShareKey]:
        """Every share the pool read and judged."""
        return set(self.share_times)

    @staticmethod
    def miner_key(submit: Submit, notifies: List[List[Any]]) -> ShareKey:
        """The key under which the pool records a submit of the load generator."""
        en1, en2, nonce = submit[0], submit[1], submit[2]
        return notifies[submit[6]][0], en1 + en2, nonce

    def pool_bound(self, submit: Submit, notifies: List[List[Any]]) -> bool:
        """Whether the share's hash, from the miner's view of its job, meets the pool's difficulty."""
        h = self.hashing
        en1, en2, nonce = submit[0], submit[1], submit[2]
        _, prevhash, coinb1, coinb2, branches, version, nbits, ntime = notifies[submit[6]][4][:8]
        root = h.merkle_root(h.coinbase(coinb1, en1, en2, coinb2), branches)
        head = h.header(int(version, 16), prevhash, root, int(ntime, 16), int(nbits, 16), int(nonce, 16))
        return h.header_hash_int(head) <= self.target


def normalize_share_key(sid: Any, en2: Any, nonce: Any) -> Optional[ShareKey]:
    """(session id, extranonce2, nonce) from the pool → the hex strings the miner wrote."""
    if sid is None or en2 is None or nonce is None:
        return None
    if isinstance(en2, int) and en2 > 0xFFFFFFFF:   # the pool's 8-byte extranonce2
        en2 &= 0xFFFFFFFF
    return ("%08x" % sid if isinstance(sid, int) else str(sid),
            "%08x" % en2 if isinstance(en2, int) else en2,
            "%08x" % nonce if isinstance(nonce, int) else nonce)


def share_key(share: Any) -> Optional[ShareKey]:
    """(miner extranonce1, extranonce2, nonce) as the miner wrote them, from the pool's share record."""
    get = share.get if isinstance(share, dict) else lambda k, d=None: getattr(share, k, d)
    return normalize_share_key(get("session_id"), get("extra_nonce2"), get("nonce"))


def conn_extranonce1(conn: Any) -> str:
    """The pool extranonce1 (8 hex) of a pool-side connection object."""
    en1 = getattr(conn, "extranonce1", None)
    if en1 is None:
        en1 = getattr(conn, "en1", "")
    return "%08x" % en1 if isinstance(en1, int) else str(en1)


# ---- the load generator -------------------------------------------------------------------------

class LoadGenProcess:
    """bench/loadgen.py in control mode: commands on stdin, status lines on stdout. The miners spread
    evenly over `ports`."""

    def __init__(self, ports: List[int], miners: int, share_interval: float, max_seconds: float,
                 log_path: str, connect_batch: int, pool_kind: str = "btcagent",
                 pool_extranonce1_size: int = 4) -> None:
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "loadgen.py"), "--control", "--host", HOST,
             "--port", ",".join(map(str, ports)), "--miners", str(miners), "--share-interval", str(share_interval),
             "--max-seconds", str(max_seconds), "--connect-batch", str(connect_batch),
             "--pool-kind", pool_kind, "--pool-extranonce1-size", str(pool_extranonce1_size)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log)
        self.status: Dict[str, Any] = {}
        self.events: List[Dict[str, Any]] = []
        self._reader = gevent.spawn(self._read)

    def _read(self) -> None:
        for line in self.proc.stdout:
            msg = json.loads(line)
            if "event" in msg:
                self.events.append(msg)
            else:
                self.status = msg

    def command(self, **cmd: Any) -> None:
        """Send one control command; RuntimeError if the load generator has died."""
        try:
            self.proc.stdin.write((json.dumps(cmd) + "\n").encode())
            self.proc.stdin.flush()
        except OSError as exc:
            raise RuntimeError("load generator died (%s); see %s" % (exc, self.log.name)) from exc

    def wait_for(self, check: Any, timeout: float) -> bool:
        """Wait until check(status) is true; False on timeout or exit."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.status and check(self.status):
                return True
            if self.proc.poll() is not None:
                return False
            gevent.sleep(0.05)
        return False

    def dump(self, path: str, timeout: float = 60.0) -> Dict[str, Any]:
        self.command(cmd="dump", path=path)
        deadline = time.time() + timeout
        while time.time() < deadline and not any(e.get("path") == path for e in self.events):
            gevent.sleep(0.05)
        with open(path) as f:
            return json.load(f)

    def stop(self) -> None:
        try:
            self.command(cmd="quit")
        except (OSError, RuntimeError):
            pass
        stop_process(self.proc)
        self.log.close()


def stop_process(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """Terminate a subprocess we started, kill it if it lingers."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(grace)


# ---- the agent ----------------------------------------------------------------------------------

def start_agent(pool_port: int, workdir: str, log_path: str, command: Optional[str] = None,
                extra_config: Optional[Dict[str, Any]] = None, log_dir: Optional[str] = None,
                listeners: int = 1, listener_config: Optional[Dict[str, Any]] = None
                ) -> Tuple[subprocess.Popen, List[int], Any]:
    """Write a config and start `python -m gagent -c CONF` (or `command -c CONF`, plus `-l LOG_DIR`
    when `log_dir` is given: it is created first); returns (process, miner ports, stdout log file).

    With `listeners` > 1 the config gets that many `listeners` entries on free ports, entry i named
    ``li`` with the top-level pools under the sub-account ``benchi``, and `listener_config` merged in."""
    conf = deep_merge({"agent_listen_ip": HOST, "agent_listen_port": free_port(),
                       "pools": [[HOST, pool_port, "bench"]]}, extra_config)
    ports = [conf["agent_listen_port"]]
    if listeners > 1:
        ports = [free_port() for _ in range(listeners)]
        conf["listeners"] = [deep_merge(
            {"name": "l%d" % i, "agent_listen_port": port,
             "pools": [entry[:2] + ["bench%d" % i] + entry[3:] for entry in conf["pools"]]}, listener_config)
            for i, port in enumerate(ports, 1)]
    conf_path = os.path.join(workdir, "agent.json")
    with open(conf_path, "w") as f:
        json.dump(conf, f)
    log = open(log_path, "w")
    argv = shlex.split(command) if command else [sys.executable, "-m", "gagent"]
    argv += ["-c", conf_path]
    if log_dir is not None:
        os.makedirs(log_dir, exist_ok=True)
        argv += ["-l", log_dir]
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    return proc, ports, log


def wait_listening(ports: List[int], proc: subprocess.Popen, timeout: float) -> bool:
    """Poll until the agent accepts a TCP connection on every port."""
    deadline = time.time() + timeout
    waiting = list(ports)
    while waiting and time.time() < deadline and proc.poll() is None:
        try:
            socket.create_connection((HOST, waiting[0]), timeout=1).close()
            waiting.pop(0)
        except OSError:
            gevent.sleep(0.1)
    return not waiting


def upstream_count(pool_port: int) -> int:
    """How many agent→pool connections are established."""
    return segs_out(pool_port)[1]


# ---- the run ------------------------------------------------------------------------------------

class Run:
    """One benchmark run of one agent; `execute()` returns the result dict.

    `name` is stored as the result's ``agent``; `command` replaces `python -m gagent` (``-c CONF``
    appended, and ``-l LOGDIR`` too when `log_dir_flag`); `config` is merged into the agent's config;
    `kind` is the pool simulator's protocol, "btcagent" or "stratum" (default: ``--pool-kind``);
    `listeners` the agent's listen ports (default: ``--listeners``).
    """

    def __init__(self, args: argparse.Namespace, name: str = "gagent", command: Optional[str] = None,
                 config: Optional[Dict[str, Any]] = None, log_dir_flag: bool = False,
                 tag: str = "", kind: Optional[str] = None, listeners: Optional[int] = None) -> None:
        self.args = args
        self.name = name
        self.kind = kind or args.pool_kind
        self.listeners = listeners or args.listeners
        self.command = command
        self.config = config
        self.log_dir_flag = log_dir_flag
        self.result: Dict[str, Any] = {}
        self.stamp = time.strftime("%Y%m%d-%H%M%S") + tag
        os.makedirs(OUT_DIR, exist_ok=True)
        self.workdir = tempfile.mkdtemp(prefix="gagent-bench-")
        self.load_window = (0.0, 0.0)
        self.storm_window: Optional[Tuple[float, float]] = None

    def execute(self) -> Dict[str, Any]:
        args = self.args
        r = self.result
        r.update({"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": {
            "nproc": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
            "agent": self.name, "miners": args.miners, "seconds": args.seconds,
            "share_interval": args.share_interval, "job_interval": args.job_interval,
            "agent_revision": agent_revision() if self.command is None else "external",
            "agent_command": self.command,
            "agent_config": json.dumps(self.config) if self.config else None,
            "listener_config": args.listener_config if self.listeners > 1 else None,
            "connect_batch": args.connect_batch, "file_limit": raise_file_limit(), "pool_kind": self.kind,
            "listeners": self.listeners})
        config = self.config
        if self.kind == "stratum":
            self.recorder: Any = StratumPoolRecorder(args.pool_share_fraction, args.miner_difficulty,
                                                     args.pool_extranonce1_size, args.pool_extranonce2_size,
                                                     args.pool_recv_buffer)
            r.update({"pool_difficulty": self.recorder.difficulty, "pool_share_fraction": args.pool_share_fraction,
                      "pool_extranonce_sizes": [args.pool_extranonce1_size, args.pool_extranonce2_size],
                      "miner_start_difficulty": args.miner_difficulty})
        else:
            self.recorder = PoolRecorder(args.difficulty, args.pool_recv_buffer)
        pool = self.recorder.pool
        pool.start()
        self.pool_port = pool.address[1]
        if self.kind == "stratum":
            config = deep_merge({"pools": [["stratum+tcp://" + HOST, self.pool_port, "bench", "x"]],
                                 "advanced": {"miner_start_difficulty": args.miner_difficulty}}, config)
        agent = loadgen = meter = None
        agent_log = None
        log_dir = os.path.join(OUT_DIR, "agent-%s.d" % self.stamp) if self.log_dir_flag else None
        self.http_port = None
        if self.command is None:  # gagent: status listener off, or on a free port when scraped
            self.http_port = free_port() if self.args.scrape else None
            listen = "%s:%d" % (HOST, self.http_port) if self.http_port else ""
            config = deep_merge({"http_listen": listen}, config)
        try:
            agent, agent_ports, agent_log = start_agent(
                self.pool_port, self.workdir, os.path.join(OUT_DIR, "agent-%s.log" % self.stamp),
                self.command, config, log_dir, self.listeners,
                json.loads(args.listener_config) if args.listener_config else None)
            if not wait_listening(agent_ports, agent, 30):
                raise RuntimeError("agent did not start listening (see %s)" % agent_log.name)
            self._wait_upstreams(agent)
            meter = ProcessMeter(agent.pid)
            gevent.sleep(1.0)
            r["rss_idle_mb"] = round(meter.rss() / 1e6, 2)
            idle = meter.rss()
            meter.reset_peak()
            loadgen = LoadGenProcess(agent_ports, args.miners, args.share_interval,
                                     args.seconds + 600 + args.miners / 50,
                                     os.path.join(OUT_DIR, "loadgen-%s.log" % self.stamp),
                                     args.connect_batch, self.kind, args.pool_extranonce1_size)
            self._connect_phase(loadgen, meter)
            self._load_phase(loadgen, meter)
            r["rss_peak_mb"] = round(meter.peak / 1e6, 2)
            r["bytes_per_miner"] = int((meter.peak - idle) / max(1, args.miners))
            if args.storm:
                self._storm_phase(loadgen, meter)
            samples = loadgen.dump(os.path.join(OUT_DIR, "samples-%s.json" % self.stamp))
            self._latencies(samples)
            if args.storm:
                self._storm_shares(samples)
            r["agent_log_errors"] = count_log_errors(agent_log.name, log_dir)
        finally:
            if meter:
                meter.stop()
            if loadgen:
                loadgen.stop()
            if agent:
                stop_process(agent)
                agent_log.close()
            pool.stop()
        return r

    def _wait_upstreams(self, agent: subprocess.Popen, timeout: float = 20.0) -> None:
        """Wait until the agent's pool connections are up and settled (count stable for 1 s)."""
        deadline = time.time() + timeout
        last, since = -1, time.time()
        while time.time() < deadline and agent.poll() is None:
            n = upstream_count(self.pool_port)
            if n != last:
                last, since = n, time.time()
            elif n > 0 and time.time() - since >= 1.0:
                break
            gevent.sleep(0.2)
        self.result["upstream_connections"] = last

    def _connect_phase(self, loadgen: LoadGenProcess, meter: ProcessMeter) -> None:
        n = self.args.miners
        t0 = time.time()
        ok = loadgen.wait_for(lambda s: s["authorized"] >= n, self.args.connect_timeout)
        t_auth = time.time() - t0
        ok = ok and loadgen.wait_for(lambda s: s["with_job"] >= n, 30)
        st = loadgen.status
        self.result.update({
            "connect_seconds": round(t_auth, 3), "connect_to_job_seconds": round(time.time() - t0, 3),
            "connected": st.get("connected"), "authorized": st.get("authorized"),
            "with_job": st.get("with_job"), "connect_complete": ok,
            "rss_connected_mb": round(meter.rss() / 1e6, 2)})
        gevent.sleep(1.0)   # let the agent settle before the load window

    def _load_phase(self, loadgen: LoadGenProcess, meter: ProcessMeter) -> None:
        args = self.args
        rec = self.recorder
        before_status = dict(loadgen.status)
        bytes0, reads0, shares0 = rec.pool.bytes_received, rec.pool.reads, rec.shares
        segs0, _ = segs_out(self.pool_port)
        cpu0 = meter.cpu_seconds()
        t0 = time.time()
        rec.recording = True
        loadgen.command(cmd="load", seconds=args.seconds)
        jobs = gevent.spawn(self._job_loop, t0)
        scrapes: List[float] = []
        scraper = gevent.spawn(self._scrape_loop, scrapes) if self.http_port else None
        gevent.sleep(max(0.0, t0 + args.seconds - time.time()))
        jobs.kill()
        if scraper is not None:
            scraper.kill()
            self.result["scrapes"] = {"count": len(scrapes), "every_s": args.scrape,
                                      "mean_ms": ms(sum(scrapes) / len(scrapes)) if scrapes else None,
                                      "max_ms": ms(max(scrapes)) if scrapes else None}
        gevent.sleep(0.5)   # let the last shares and notifies land
        elapsed = time.time() - t0
        self.load_window = (t0, time.time())
        cpu = meter.cpu_seconds() - cpu0
        quarters = [[rss for t, rss in meter.samples if t <= t0 + elapsed * q / 4] for q in (1, 2, 3, 4)]
        segs1, nsock = segs_out(self.pool_port)
        rec.recording = False
        payload = rec.pool.bytes_received - bytes0
        segs = segs1 - segs0
        shares = rec.shares - shares0
        st = loadgen.status
        submitted = st.get("submitted", 0) - before_status.get("submitted", 0)
        self.result.update({
            "load_elapsed": round(elapsed, 3), "shares_submitted": submitted, "shares_at_pool": shares,
            "share_statuses": dict(rec.statuses),
            "shares_at_pool_by_account": dict(sorted(rec.by_account.items(), key=lambda kv: str(kv[0]))),
            "answers_true": st.get("answers_true", 0) - before_status.get("answers_true", 0),
            "answers_error": st.get("answers_error", 0) - before_status.get("answers_error", 0),
            "answers_error_codes": counter_delta(st.get("answers_error_codes"),
                                                 before_status.get("answers_error_codes")),
            "disconnects_during_load": st.get("disconnects", 0) - before_status.get("disconnects", 0),
            "rss_load_mb": [round(q[-1] / 1e6, 2) if q else None for q in quarters],
            "agent_cpu_seconds": round(cpu, 3), "cpu_core_share": round(cpu / elapsed, 4),
            "cpu_seconds_per_1000_shares": round(cpu / shares * 1000, 4) if shares else None,
            "cpu_seconds_per_1000_submits": round(cpu / submitted * 1000, 4) if submitted else None,
            "upstream_share_fraction": round(shares / submitted, 4) if submitted else None,
            "upstream_payload_bytes_per_s": round(payload / elapsed, 1),
            "upstream_reads_per_s": round((rec.pool.reads - reads0) / elapsed, 1),
            "upstream_segments_per_s": round(segs / elapsed, 1), "upstream_sockets": nsock,
            "upstream_wire_kbps": round((payload + HEADER_BYTES * segs) * 8 / elapsed / 1000, 1),
            "upstream_payload_kbps": round(payload * 8 / elapsed / 1000, 1),
            "jobs_sent": len(rec.notify_times)})

    def _scrape_loop(self, durations: List[float]) -> None:
        """GET /metrics and /status.json from the agent's status listener every --scrape seconds,
        as a Prometheus server and an open status page would; records how long each pair took."""
        while True:
            gevent.sleep(self.args.scrape)
            started = time.time()
            for path in ("/metrics", "/status.json"):
                with socket.create_connection((HOST, self.http_port), timeout=30) as sock:
                    sock.sendall(("GET %s HTTP/1.0\r\n\r\n" % path).encode())
                    while sock.recv(1 << 20):
                        pass
            durations.append(time.time() - started)

    def _job_loop(self, t0: float) -> None:
        """A new job every job_interval seconds, the first half an interval into the load phase."""
        k = 0
        while True:
            due = t0 + self.args.job_interval * (k + 0.5)
            gevent.sleep(max(0.0, due - time.time()))
            self.recorder.pool.new_job(clean=False, branches=12)
            k += 1

    def _storm_phase(self, loadgen: LoadGenProcess, meter: ProcessMeter) -> None:
        """The pool fails while every miner keeps submitting.

        `restart`: the pool resets (RST) every agent connection and refuses connects for
        `--storm-outage` seconds, then listens again. `stall`: the pool stops reading from every agent
        connection for `--storm-outage` seconds, then closes them all (a dead path; the agent's unread
        bytes are lost). "Resume" is the moment the pool accepts (restart) or closes (stall); a miner
        is mining again once it holds a `mining.notify` the pool sent after resume. The share figures
        are completed from the samples by `_storm_shares`.
        """
        args = self.args
        pool = self.recorder.pool
        kind, outage = args.storm, args.storm_outage
        meter.reset_peak()
        before = dict(loadgen.status)
        loadgen.command(cmd="storm_begin")
        t_load = time.time()
        loadgen.command(cmd="load", seconds=STORM_LEAD + outage + args.storm_timeout + STORM_TAIL + 60)
        gevent.sleep(STORM_LEAD)
        t_storm = time.time()
        if kind == "restart":
            pool.pause_listening()
            pool.reset_all()
        else:
            pool.stop_reading()   # every connection, and those accepted until resume_reading()
        gevent.sleep(outage)
        stale = sorted(self.recorder.notify_keys)   # every notify the pool sent before resume
        t_resume = time.time()
        if kind == "restart":
            pool.resume_listening()
        else:
            pool.close_all()        # first: the unread bytes go with the connections
            pool.resume_reading()
        # a notify sent after resume also to any connection the agent opened during the outage
        pool.new_job(clean=False, branches=12)
        loadgen.command(cmd="mark", stale=stale)
        ok = loadgen.wait_for(lambda s: (s.get("mark_time") or 0) >= t_resume
                              and s.get("all_fresh_time") is not None, args.storm_timeout)
        st = dict(loadgen.status)
        t_all = st["all_fresh_time"] if ok else None
        gevent.sleep(STORM_TAIL)
        loadgen.command(cmd="stop_load")
        gevent.sleep(SETTLE)
        end = dict(loadgen.status)
        self.storm_window = (t_load, time.time())
        self.result["storm"] = {
            "kind": kind, "outage_seconds": outage, "miners": args.miners,
            "seconds": round(t_all - t_storm, 3) if ok else None,
            "seconds_to_all_mining": round(t_all - t_resume, 3) if ok else None, "complete": ok,
            "miners_disconnected": end.get("miners_closed"),
            "disconnects": end.get("disconnects", 0) - before.get("disconnects", 0),
            "reconnects": end.get("connects", 0) - before.get("connects", 0),
            "reconnect_requests": end.get("reconnect_requests", 0) - before.get("reconnect_requests", 0),
            "authorized": st.get("authorized"), "with_job": st.get("with_job"), "fresh": st.get("fresh"),
            "rss_peak_mb": round(meter.peak / 1e6, 2)}

    def _storm_shares(self, samples: Dict[str, Any]) -> None:
        """Share figures of the storm window: answered `true` but never read by the pool, errors by
        code, unanswered, answer latency."""
        start, end = self.storm_window
        rec = self.recorder
        notifies = samples["notifies"]
        read = rec.read_keys()
        submitted = answered_true = true_lost = lost = unanswered = local = 0
        codes: Counter = Counter()
        answer_lat = []
        for submit in samples["submits"]:
            t_send, t_answer, answer = submit[3:6]
            if not start <= t_send <= end:
                continue
            submitted += 1
            at_pool = rec.miner_key(submit, notifies) in read
            if not at_pool and not rec.pool_bound(submit, notifies):
                at_pool = True   # below the pool's difficulty: the agent answers it alone
                local += 1
            lost += not at_pool
            if answer is None:
                unanswered += 1
                continue
            answer_lat.append(t_answer - t_send)
            if answer is True:
                answered_true += 1
                true_lost += not at_pool
            else:
                codes[str(answer)] += 1
        self.result["storm"].update({
            "shares_submitted": submitted, "shares_answered_true": answered_true,
            "shares_answered_true_not_received": true_lost, "shares_not_received": lost,
            "shares_unanswered": unanswered, "answers_error": dict(sorted(codes.items())),
            "share_answer_latency_ms": latency_summary(answer_lat)})
        if self.kind == "stratum":
            self.result["storm"]["shares_below_pool_difficulty"] = local

    def _latencies(self, samples: Dict[str, Any]) -> None:
        """Latency figures of the load phase (submits sent in its window); with a stratum pool also
        which shares went upstream (see `_upstream_shares`)."""
        rec = self.recorder
        notifies = samples["notifies"]
        start, end = self.load_window
        share_lat = []
        answer_lat = []
        answer_lat_by_path: Dict[bool, List[float]] = {True: [], False: []}
        unmatched = unanswered = 0
        paths: Counter = Counter()
        for submit in samples["submits"]:
            t_send, t_answer, answer = submit[3:6]
            if not start - 0.1 <= t_send <= end:
                continue
            t = rec.share_times.get(rec.miner_key(submit, notifies))
            bound = rec.pool_bound(submit, notifies)
            paths[(bound, t is not None, answer if answer is None or answer is True else "error")] += 1
            if t is not None:
                share_lat.append(t - t_send)
            elif bound:
                unmatched += 1
            if t_answer is None:
                unanswered += 1
            else:
                answer_lat.append(t_answer - t_send)
                answer_lat_by_path[bound].append(t_answer - t_send)
        if self.kind == "stratum":
            self._upstream_shares(paths, answer_lat_by_path)
        fan = []
        for pool_en1, job_id, clean, times, *_ in notifies:
            t_sent = rec.notify_times.get((pool_en1, str(job_id)))
            if t_sent is not None and not clean:
                fan.extend(t - t_sent for t in times)
        self.result.update({
            "share_latency_ms": dict(latency_summary(share_lat), unmatched=unmatched),
            "share_answer_latency_ms": dict(latency_summary(answer_lat), unanswered=unanswered),
            "fanout_latency_ms": latency_summary(fan),
            "loadgen_errors": samples.get("errors", [])[:5],
            "loadgen_final": {k: samples["status"].get(k) for k in (
                "connects", "connect_errors", "disconnects", "errors_other", "reconnect_requests",
                "authorize_errors")}})


    def _upstream_shares(self, paths: Counter, answer_lat: Dict[bool, List[float]]) -> None:
        """Stratum pool: the load phase's shares by path. `paths` counts submits by (meets the pool's
        difficulty, the pool read it, the agent's answer: True, "error" or None)."""
        def count(bound: Optional[bool] = None, read: Optional[bool] = None, answer: Any = "any") -> int:
            return sum(n for (b, r, a), n in paths.items()
                       if bound in (None, b) and read in (None, r) and answer in ("any", a))
        submitted = count()
        self.result["upstream_shares"] = {
            "submitted": submitted, "pool_share_fraction": self.args.pool_share_fraction,
            "meeting_pool_difficulty": count(True),
            "fraction_meeting_pool_difficulty": round(count(True) / submitted, 4) if submitted else None,
            "read_by_pool": count(read=True),
            "local_answered_true": count(False, False, True), "local_answered_error": count(False, False, "error"),
            # must be 0: a share that meets the pool's difficulty answered true but never read by the pool
            "pool_bound_answered_true_not_read": count(True, False, True),
            "pool_bound_not_read": count(True, False),
            # must be 0: the agent forwarded a share under the pool's difficulty
            "read_by_pool_below_its_difficulty": count(False, True),
            "answer_latency_local_ms": latency_summary(answer_lat[False]),
            "answer_latency_pool_ms": latency_summary(answer_lat[True])}


def counter_delta(after: Optional[Dict[str, int]], before: Optional[Dict[str, int]]) -> Dict[str, int]:
    """after − before of two {key: count} dicts, keeping the non-zero entries."""
    after, before = after or {}, before or {}
    return {k: after[k] - before.get(k, 0) for k in sorted(after) if after[k] - before.get(k, 0)}


def agent_revision() -> str:
    """`git describe`-like revision of the agent source, with "+dirty" when gagent/ has local changes."""
    def git(*cmd: str) -> str:
        return subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
    try:
        rev = git("rev-parse", "--short", "HEAD")
        return rev + ("+dirty" if git("status", "--porcelain", "--", "gagent") else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


_GLOG_LINE = re.compile(r"^([IWEF])\d{4} [\d:.]+\s+\d+ [^\]]*\] ?(.*)")


def count_log_errors(path: str, log_dir: Optional[str] = None) -> Dict[str, Any]:
    """Count WARNING/ERROR lines in the agent's output and in the glog files of `log_dir` (the other
    agents': ``W1125 …``/``E1125 …`` lines, counted in the ``*.INFO`` files only, which hold every
    level) and keep a few distinct ones."""
    counts = {"WARNING": 0, "ERROR": 0}
    firsts: List[str] = []
    paths = [path]
    if log_dir and os.path.isdir(log_dir):
        files = sorted(os.path.join(log_dir, f) for f in os.listdir(log_dir)
                       if not os.path.islink(os.path.join(log_dir, f)))
        info = [f for f in files if ".INFO." in os.path.basename(f)]
        paths += info or files
    for p in paths:
        with open(p, errors="replace") as f:
            for line in f:
                level = None
                glog = _GLOG_LINE.match(line)
                if glog:
                    level = {"W": "WARNING", "E": "ERROR", "F": "ERROR"}.get(glog.group(1))
                    msg = glog.group(2)
                else:
                    level = next((lv for lv in counts if " %s " % lv in line), None)
                    msg = line.split(": ", 1)[-1]
                if level is None:
                    continue
                counts[level] += 1
                msg = msg.strip()[:160]
                if len(firsts) < 5 and msg not in firsts:
                    firsts.append(msg)
    return {"warnings": counts["WARNING"], "errors": counts["ERROR"], "examples": firsts}


# ---- several runs: medians, ratios, the table ---------------------------------------------------

# (ratio key, path in the result object) of the figures compared between the agents
RATIO_FIGURES: List[Tuple[str, Tuple[str, ...]]] = [
    ("rss_peak_mb", ("rss_peak_mb",)),
    ("bytes_per_miner", ("bytes_per_miner",)),
    ("cpu_core_share", ("cpu_core_share",)),
    ("cpu_seconds_per_1000_shares", ("cpu_seconds_per_1000_shares",)),
    ("fanout_p99_ms", ("fanout_latency_ms", "p99")),
    ("share_answer_p99_ms", ("share_answer_latency_ms", "p99")),
    ("share_p99_ms", ("share_latency_ms", "p99")),
    ("upstream_segments_per_s", ("upstream_segments_per_s",)),
    ("upstream_wire_kbps", ("upstream_wire_kbps",)),
]

# (ratio key, path) of the figures compared between the pool kinds (--compare-kinds): stratum / btcagent
KIND_FIGURES: List[Tuple[str, Tuple[str, ...]]] = [
    ("rss_peak_mb", ("rss_peak_mb",)),
    ("bytes_per_miner", ("bytes_per_miner",)),
    ("cpu_core_share", ("cpu_core_share",)),
    ("cpu_seconds_per_1000_submits", ("cpu_seconds_per_1000_submits",)),
    ("upstream_wire_kbps", ("upstream_wire_kbps",)),
    ("upstream_payload_kbps", ("upstream_payload_kbps",)),
    ("upstream_segments_per_s", ("upstream_segments_per_s",)),
    ("upstream_share_fraction", ("upstream_share_fraction",)),
    ("share_answer_p99_ms", ("share_answer_latency_ms", "p99")),
    ("share_p99_ms", ("share_latency_ms", "p99")),
    ("fanout_p99_ms", ("fanout_latency_ms", "p99")),
]

# (ratio key, path) of the figures compared between one listener and several (--compare-listeners): N / 1
LISTENER_FIGURES: List[Tuple[str, Tuple[str, ...]]] = [
    ("rss_idle_mb", ("rss_idle_mb",)),
    ("rss_peak_mb", ("rss_peak_mb",)),
    ("bytes_per_miner", ("bytes_per_miner",)),
    ("cpu_core_share", ("cpu_core_share",)),
    ("cpu_seconds_per_1000_submits", ("cpu_seconds_per_1000_submits",)),
    ("connect_seconds", ("connect_seconds",)),
    ("upstream_sockets", ("upstream_sockets",)),
    ("upstream_wire_kbps", ("upstream_wire_kbps",)),
    ("upstream_segments_per_s", ("upstream_segments_per_s",)),
    ("share_answer_p99_ms", ("share_answer_latency_ms", "p99")),
    ("share_p99_ms", ("share_latency_ms", "p99")),
    ("fanout_p99_ms", ("fanout_latency_ms", "p99")),
]

# extra rows of the table when there was a storm
STORM_FIGURES: List[Tuple[str, Tuple[str, ...]]] = [
    ("storm miners_disconnected", ("storm", "miners_disconnected")),
    ("storm seconds_to_all_mining", ("storm", "seconds_to_all_mining")),
    ("storm answered true, not received", ("storm", "shares_answered_true_not_received")),
    ("storm shares unanswered", ("storm", "shares_unanswered")),
]


def dig(obj: Any, path: Sequence[str]) -> Any:
    """obj[path[0]][path[1]]…, None where a step is missing."""
    for key in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def median_value(values: List[Any]) -> Any:
    """The median of numbers (dicts: key by key); all() of booleans; the first value otherwise."""
    present = [v for v in values if v is not None]
    if not present:
        return None
    if all(isinstance(v, dict) for v in present):
        keys: List[str] = []
        for v in present:
            keys += [k for k in v if k not in keys]
        return {k: median_value([v.get(k) for v in present]) for k in keys}
    if all(_is_number(v) for v in present):
        m = statistics.median(present)
        if all(isinstance(v, int) for v in present) and float(m).is_integer():
            return int(m)
        return round(m, 4) if isinstance(m, float) else m
    if all(isinstance(v, bool) for v in present):
        return all(present)
    return present[0]


def median_result(runs: List[Dict[str, Any]]) -> Dict[str, Any]:
    """One result object from several runs of the same agent: medians per figure (see
    `median_value`); runs that failed are left out unless every run failed."""
    good = [r for r in runs if "error" not in r] or runs
    if len(good) == 1:
        return good[0]
    return median_value(good)


def ratios(ours: Dict[str, Any], other: Dict[str, Any],
           figures: Optional[List[Tuple[str, Tuple[str, ...]]]] = None) -> Dict[str, Optional[float]]:
    """ours / other for each of `figures` (default RATIO_FIGURES: gagent / other agent; None when either
    is missing or other is 0)."""
    out: Dict[str, Optional[float]] = {}
    for key, path in figures or RATIO_FIGURES:
        a, b = dig(ours, path), dig(other, path)
        out[key] = round(a / b, 3) if _is_number(a) and _is_number(b) and b else None
    return out


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return "%.4g" % v if abs(v) < 1000 else "%.0f" % v
    return str(v)


def table(columns: List[Tuple[str, Dict[str, Any], List[Dict[str, Any]]]],
          ratio: Optional[Dict[str, Optional[float]]] = None,
          figures: Optional[List[Tuple[str, Tuple[str, ...]]]] = None) -> str:
    """A plain-text table: one row per figure (default RATIO_FIGURES), one column per agent or pool
    kind (median, and every run's value when there were several), then the ratio column."""
    rows = list(figures or RATIO_FIGURES)
    if any(dig(result, ("storm",)) for _, result, _ in columns):
        rows += STORM_FIGURES
    header = ["figure"] + [name + (" (median; runs)" if len(runs) > 1 else "") for name, _, runs in columns]
    if ratio is not None:
        header.append("ratio")
    lines = [header]
    for key, path in rows:
        line = [key]
        for _, result, runs in columns:
            cell = _fmt(dig(result, path))
            if len(runs) > 1:
                cell += " (%s)" % " / ".join(_fmt(dig(r, path)) for r in runs)
            line.append(cell)
        if ratio is not None:
            line.append(_fmt(ratio.get(key)))
        lines.append(line)
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines)


# ---- command line -------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    """The driver's options (bench/flush_curve.py adds its own)."""
    p = argparse.ArgumentParser(description="gagent benchmark driver (issues 3, 10, 12)")
    p.add_argument("--miners", type=int, default=10000)
    p.add_argument("--seconds", type=float, default=60.0, help="load phase length")
    p.add_argument("--share-interval", type=float, default=10.0, help="seconds between shares of a miner")
    p.add_argument("--job-interval", type=float, default=30.0, help="seconds between new jobs")
    p.add_argument("--storm", nargs="?", const="restart", choices=("restart", "stall"), default=None,
                   help="after the load phase the pool fails while miners keep submitting: 'restart' "
                        "(default) resets every agent connection and refuses connects for "
                        "--storm-outage s; 'stall' stops reading for --storm-outage s, then closes all")
    p.add_argument("--storm-outage", type=float, default=3.0, help="seconds the pool stays down")
    p.add_argument("--storm-timeout", type=float, default=60.0,
                   help="seconds after resume to wait for every miner to be mining again")
    p.add_argument("--pool-recv-buffer", type=int, default=None, metavar="BYTES",
                   help="SO_RCVBUF of the pool's sockets (a stalled pool then blocks the agent's writes "
                        "after about this much)")
    p.add_argument("--connect-timeout", type=float, default=180.0)
    p.add_argument("--connect-batch", type=int, default=100,
                   help="load generator: miners between connect() and the authorize answer at once")
    p.add_argument("--difficulty", type=float, default=1.0,
                   help="BTCAgent pool: default difficulty (irrelevant to gagent; the C++ agent needs an "
                        "integer)")
    p.add_argument("--pool-kind", choices=("btcagent", "stratum"), default="btcagent",
                   help="the pool simulator's protocol; stratum: the agent gets a stratum+tcp:// pool entry")
    p.add_argument("--compare-kinds", action="store_true",
                   help="run gagent against a BTCAgent pool and a stratum pool, alternating (--repeat "
                        "times each); figures are medians, ratios stratum / btcagent")
    p.add_argument("--listeners", type=int, default=1,
                   help="gagent's listen ports in one process (a `listeners` entry each, sub-accounts "
                        "bench1..benchN on the same pool); the miners spread evenly over them")
    p.add_argument("--compare-listeners", type=int, default=None, metavar="N",
                   help="run gagent with one listener and with N, alternating (--repeat times each); "
                        "figures are medians, ratios N / 1")
    p.add_argument("--listener-config", help="JSON object merged into each `listeners` entry (with more than "
                                              "one listener), e.g. to give each fewer pool connections")
    p.add_argument("--pool-share-fraction", type=float, default=0.125,
                   help="stratum pool: its difficulty is set so that this fraction of the miners' shares "
                        "meets it and goes upstream; the agent answers the rest itself")
    p.add_argument("--miner-difficulty", type=float, default=1e-9,
                   help="stratum pool: the agent's advanced.miner_start_difficulty (default 1e-9, the "
                        "lowest it takes: the load generator hashes ~4.3 nonces per share; under 2^-32 "
                        "every nonce meets it and nothing is hashed)")
    p.add_argument("--pool-extranonce1-size", type=int, default=4, help="stratum pool: extranonce1 bytes")
    p.add_argument("--pool-extranonce2-size", type=int, default=8,
                   help="stratum pool: extranonce2 bytes (the agent gives miners a prefix of it)")
    p.add_argument("--agent-command", help="run this instead of `python -m gagent` (gets -c CONF "
                                            "appended), e.g. to compare another build of the agent")
    p.add_argument("--agent-config", help="JSON object merged into the agent's config (both agents' "
                                           "with --compare), e.g. "
                                           "'{\"advanced\": {\"pool_connection_number_per_subaccount\": 1}}'")
    p.add_argument("--compare", metavar="CMD",
                   help="also run the same scenario for the agent CMD (gets -c CONF -l LOGDIR appended; "
                        "LOGDIR is bench/out/agent-*.d) and report gagent / other ratios")
    p.add_argument("--compare-config", help="JSON object merged into the other agent's config only")
    p.add_argument("--repeat", type=int, default=1,
                   help="run each agent N times (alternating with --compare); figures are medians")
    p.add_argument("--scrape", type=float, default=None, metavar="SECONDS",
                   help="gagent only: turn the status listener on and GET /metrics and /status.json every "
                        "SECONDS during the load phase (result key: scrapes)")
    p.add_argument("--label", default="", help="free text stored with the result")
    return p


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    if args.repeat < 1:
        raise SystemExit("--repeat must be at least 1")
    if sum(map(bool, (args.compare_kinds, args.compare, args.compare_listeners))) > 1:
        raise SystemExit("--compare, --compare-kinds and --compare-listeners do not go together")
    if args.listeners < 1 or (args.compare_listeners is not None and args.compare_listeners < 2):
        raise SystemExit("--listeners must be at least 1, --compare-listeners at least 2")
    if args.listeners > 1 and args.compare:
        raise SystemExit("--listeners is gagent's: the other agents listen on one port")
    if not 0 < args.pool_share_fraction <= 1:
        raise SystemExit("--pool-share-fraction must be in (0, 1]")
    if args.compare and not float(args.difficulty).is_integer():
        print("warning: the C++ agent needs an integer --difficulty (it parses it with strtoul)",
              file=sys.stderr)
    return args


class Side(NamedTuple):
    """One column of a comparison: what `Run` gets."""
    column: str
    name: str
    command: Optional[str]
    config: Optional[Dict[str, Any]]
    log_dir_flag: bool
    kind: str
    listeners: int


def listener_columns(n: int) -> Tuple[str, str]:
    """The two columns of --compare-listeners N."""
    return "1 listener", "%d listeners" % n


def run_all(args: argparse.Namespace, base_config: Optional[Dict[str, Any]] = None,
            quiet: bool = False) -> Tuple[Dict[str, List[Dict[str, Any]]], bool]:
    """Run gagent (and the --compare agent, or gagent against both pool kinds with --compare-kinds, or
    with one listener and N with --compare-listeners N) `--repeat` times, alternating; appends each
    result to bench/out/results.jsonl. Returns ({column: [result, ...]}, every run succeeded); the
    columns are "gagent" (and "other"), "btcagent" and "stratum", or `listener_columns(N)`."""
    if base_config is None:
        base_config = json.loads(args.agent_config) if args.agent_config else None
    gagent = Side("gagent", "gagent", args.agent_command, base_config, False, args.pool_kind, args.listeners)
    sides = [gagent]
    if args.compare:
        other = deep_merge(base_config, json.loads(args.compare_config) if args.compare_config else None)
        sides.append(Side("other", "other", args.compare, other or None, True, args.pool_kind, 1))
    if args.compare_kinds:
        sides = [gagent._replace(column=kind, kind=kind) for kind in ("btcagent", "stratum")]
    if args.compare_listeners:
        sides = [gagent._replace(column=column, listeners=n) for column, n in
                 zip(listener_columns(args.compare_listeners), (1, args.compare_listeners))]
    runs: Dict[str, List[Dict[str, Any]]] = {side.column: [] for side in sides}
    several = args.repeat > 1 or len(sides) > 1
    ok = True
    for i in range(args.repeat):
        for column, name, command, config, log_dir_flag, kind, listeners in sides:
            tag = "-%s-%d" % (column.replace(" ", "-"), i + 1) if several else ""
            if not quiet:
                print("run %d/%d: %s ..." % (i + 1, args.repeat, column), file=sys.stderr, flush=True)
            try:
                result = Run(args, name, command, config, log_dir_flag, tag, kind, listeners).execute()
            except Exception as exc:   # one failed run must not lose the others' figures
                ok = False
                result = {"agent": name, "agent_command": command, "pool_kind": kind, "error": "%s: %s" % (
                    exc.__class__.__name__, exc)}
                print("run %d/%d: %s failed: %s" % (i + 1, args.repeat, column, result["error"]),
                      file=sys.stderr, flush=True)
            if args.label:
                result["label"] = args.label
            with open(os.path.join(OUT_DIR, "results.jsonl"), "a") as f:
                f.write(json.dumps(result) + "\n")
            runs[column].append(result)
    return runs, ok


def comparison(head: Dict[str, Any], runs: Dict[str, List[Dict[str, Any]]], columns: Tuple[str, str],
               numerator: str, figures: Optional[List[Tuple[str, Tuple[str, ...]]]] = None) -> Dict[str, Any]:
    """Two columns of runs: prints their table (medians, each run, and the ratio `numerator` / the other
    column) on stderr; returns `head` with each column's median result, the ratios and the runs."""
    medians = {column: median_result(runs[column]) for column in columns}
    denominator = columns[1] if numerator == columns[0] else columns[0]
    ratio = ratios(medians[numerator], medians[denominator], figures)
    print(table([(column, medians[column], runs[column]) for column in columns], ratio, figures),
          file=sys.stderr)
    return dict(head, **medians, ratio=ratio, runs=runs)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    os.makedirs(OUT_DIR, exist_ok=True)
    runs, ok = run_all(args)
    if args.compare_kinds:
        doc = comparison({"compare_kinds": True, "repeat": args.repeat}, runs, ("btcagent", "stratum"),
                         "stratum", KIND_FIGURES)
    elif args.compare_listeners:
        columns = listener_columns(args.compare_listeners)
        doc = comparison({"compare_listeners": args.compare_listeners, "repeat": args.repeat}, runs, columns,
                         columns[1], LISTENER_FIGURES)
    elif args.compare:
        doc = comparison({"compare": args.compare, "repeat": args.repeat}, runs, ("gagent", "other"), "gagent")
    else:
        ours = median_result(runs["gagent"])
        doc = ours if args.repeat == 1 else dict(ours, repeat=args.repeat, runs=runs["gagent"])
        figures = KIND_FIGURES if args.pool_kind == "stratum" else None
        print(table([("gagent", ours, runs["gagent"])], figures=figures), file=sys.stderr)
    print(json.dumps(doc, sort_keys=False))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
