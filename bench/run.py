"""Benchmark driver: simulated pool (in-process) + gagent (subprocess) + load generator (subprocess).

    python bench/run.py --miners 10000 --seconds 60 [--share-interval 10] [--job-interval 30] [--storm]

Phases: idle (agent connected to the pool, no miners: idle RSS), connect (until every miner is authorized
and has a job), load (`--seconds` of shares and jobs: CPU, latencies, upstream traffic), optional storm
(the pool drops every agent connection; time until every miner is authorized and has a job again), teardown.
Prints one JSON object and appends it to bench/out/results.jsonl. See bench/RESULTS.md for the fields.
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
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from typing import Any, Dict, List, Optional, Tuple  # noqa: E402

import gevent  # noqa: E402
import psutil  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
OUT_DIR = os.path.join(HERE, "out")
HOST = "127.0.0.1"
HEADER_BYTES = 52          # IPv4 + TCP with timestamps, per segment
SAMPLE_EVERY = 0.5         # RSS sampling period

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

    def __init__(self, difficulty: float) -> None:
        from gagent.sim.pool import PoolSimulator
        self.share_times: Dict[Tuple[str, str, str], float] = {}
        self.notify_times: Dict[Tuple[str, str], float] = {}
        self.shares = 0
        self.statuses: Dict[str, int] = {}
        self.recording = False
        self.pool = PoolSimulator(host=HOST, port=0, default_difficulty=difficulty, job_interval=None,
                                  on_share=self._on_share, on_notify=self._on_notify)

    def _on_share(self, conn: Any, share: Any, status: Any, t_received: float) -> None:
        self.shares += 1
        self.statuses[str(status)] = self.statuses.get(str(status), 0) + 1
        key = share_key(share)
        if key is not None:
            self.share_times[key] = t_received

    def _on_notify(self, conn: Any, short_id: Any, t_sent: float) -> None:
        if self.recording:
            self.notify_times[(conn_extranonce1(conn), str(short_id))] = t_sent


def share_key(share: Any) -> Optional[Tuple[str, str, str]]:
    """(miner extranonce1, extranonce2, nonce) as the miner wrote them, from the pool's share record."""
    get = share.get if isinstance(share, dict) else lambda k, d=None: getattr(share, k, d)
    sid, en2, nonce = get("session_id"), get("extra_nonce2"), get("nonce")
    if sid is None or en2 is None or nonce is None:
        return None
    if isinstance(en2, int) and en2 > 0xFFFFFFFF:   # the pool's 8-byte extranonce2
        en2 &= 0xFFFFFFFF
    return ("%08x" % sid, "%08x" % en2 if isinstance(en2, int) else en2,
            "%08x" % nonce if isinstance(nonce, int) else nonce)


def conn_extranonce1(conn: Any) -> str:
    """The pool extranonce1 (8 hex) of a pool-side connection object."""
    en1 = getattr(conn, "extranonce1", None)
    if en1 is None:
        en1 = getattr(conn, "en1", "")
    return "%08x" % en1 if isinstance(en1, int) else str(en1)


# ---- the load generator -------------------------------------------------------------------------

class LoadGenProcess:
    """bench/loadgen.py in control mode: commands on stdin, status lines on stdout."""

    def __init__(self, port: int, miners: int, share_interval: float, max_seconds: float,
                 log_path: str, connect_batch: int) -> None:
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "loadgen.py"), "--control", "--host", HOST,
             "--port", str(port), "--miners", str(miners), "--share-interval", str(share_interval),
             "--max-seconds", str(max_seconds), "--connect-batch", str(connect_batch)],
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
        except OSError:
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
                extra_config: Optional[Dict[str, Any]] = None) -> Tuple[subprocess.Popen, int, Any]:
    """Write a config and start `python -m gagent -c CONF` (or `command -c CONF`); returns
    (process, miner port, log file)."""
    port = free_port()
    conf = {"agent_listen_ip": HOST, "agent_listen_port": port, "pools": [[HOST, pool_port, "bench"]]}
    conf.update(extra_config or {})
    conf_path = os.path.join(workdir, "agent.json")
    with open(conf_path, "w") as f:
        json.dump(conf, f)
    log = open(log_path, "w")
    argv = shlex.split(command) if command else [sys.executable, "-m", "gagent"]
    proc = subprocess.Popen(argv + ["-c", conf_path], cwd=ROOT,
                            stdout=log, stderr=subprocess.STDOUT)
    return proc, port, log


def wait_listening(port: int, proc: subprocess.Popen, timeout: float) -> bool:
    """Poll until the agent accepts a TCP connection."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        try:
            socket.create_connection((HOST, port), timeout=1).close()
            return True
        except OSError:
            gevent.sleep(0.1)
    return False


def upstream_count(pool_port: int) -> int:
    """How many agent→pool connections are established."""
    return segs_out(pool_port)[1]


# ---- the run ------------------------------------------------------------------------------------

class Run:
    """One benchmark run; `execute()` returns the result dict."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.result: Dict[str, Any] = {}
        self.stamp = time.strftime("%Y%m%d-%H%M%S")
        os.makedirs(OUT_DIR, exist_ok=True)
        self.workdir = tempfile.mkdtemp(prefix="gagent-bench-")

    def execute(self) -> Dict[str, Any]:
        args = self.args
        r = self.result
        r.update({"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": {
            "nproc": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
            "miners": args.miners, "seconds": args.seconds, "share_interval": args.share_interval,
            "job_interval": args.job_interval, "agent_revision": agent_revision(),
            "agent_command": args.agent_command, "agent_config": args.agent_config, "connect_batch": args.connect_batch, "file_limit": raise_file_limit()})
        self.recorder = PoolRecorder(args.difficulty)
        pool = self.recorder.pool
        pool.start()
        self.pool_port = pool.address[1]
        agent = loadgen = meter = None
        agent_log = None
        try:
            agent, agent_port, agent_log = start_agent(
                self.pool_port, self.workdir, os.path.join(OUT_DIR, "agent-%s.log" % self.stamp),
                args.agent_command, json.loads(args.agent_config) if args.agent_config else None)
            if not wait_listening(agent_port, agent, 30):
                raise RuntimeError("agent did not start listening (see %s)" % agent_log.name)
            self._wait_upstreams(agent)
            meter = ProcessMeter(agent.pid)
            gevent.sleep(1.0)
            r["rss_idle_mb"] = round(meter.rss() / 1e6, 2)
            idle = meter.rss()
            meter.reset_peak()
            loadgen = LoadGenProcess(agent_port, args.miners, args.share_interval,
                                     args.seconds + 600 + args.miners / 50,
                                     os.path.join(OUT_DIR, "loadgen-%s.log" % self.stamp),
                                     args.connect_batch)
            self._connect_phase(loadgen, meter)
            self._load_phase(loadgen, meter)
            r["rss_peak_mb"] = round(meter.peak / 1e6, 2)
            r["bytes_per_miner"] = int((meter.peak - idle) / max(1, args.miners))
            if args.storm:
                self._storm_phase(loadgen, meter)
            samples = loadgen.dump(os.path.join(OUT_DIR, "samples-%s.json" % self.stamp))
            self._latencies(samples)
            r["agent_log_errors"] = count_log_errors(agent_log.name)
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
        gevent.sleep(max(0.0, t0 + args.seconds - time.time()))
        jobs.kill()
        gevent.sleep(0.5)   # let the last shares and notifies land
        elapsed = time.time() - t0
        cpu = meter.cpu_seconds() - cpu0
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
            "answers_true": st.get("answers_true", 0) - before_status.get("answers_true", 0),
            "answers_error": st.get("answers_error", 0) - before_status.get("answers_error", 0),
            "disconnects_during_load": st.get("disconnects", 0) - before_status.get("disconnects", 0),
            "agent_cpu_seconds": round(cpu, 3), "cpu_core_share": round(cpu / elapsed, 4),
            "cpu_seconds_per_1000_shares": round(cpu / shares * 1000, 4) if shares else None,
            "upstream_payload_bytes_per_s": round(payload / elapsed, 1),
            "upstream_reads_per_s": round((rec.pool.reads - reads0) / elapsed, 1),
            "upstream_segments_per_s": round(segs / elapsed, 1), "upstream_sockets": nsock,
            "upstream_wire_kbps": round((payload + HEADER_BYTES * segs) * 8 / elapsed / 1000, 1),
            "upstream_payload_kbps": round(payload * 8 / elapsed / 1000, 1),
            "jobs_sent": len(rec.notify_times)})

    def _job_loop(self, t0: float) -> None:
        """A new job every job_interval seconds, the first half an interval into the load phase."""
        k = 0
        while True:
            due = t0 + self.args.job_interval * (k + 0.5)
            gevent.sleep(max(0.0, due - time.time()))
            self.recorder.pool.new_job(clean=False, branches=12)
            k += 1

    def _storm_phase(self, loadgen: LoadGenProcess, meter: ProcessMeter) -> None:
        n = self.args.miners
        meter.reset_peak()
        disc0 = loadgen.status.get("disconnects", 0)
        loadgen.command(cmd="mark")
        gevent.sleep(0.3)
        t0 = time.time()
        self.recorder.pool.close_all()
        ok = loadgen.wait_for(lambda s: s.get("all_fresh_time") is not None, self.args.storm_timeout)
        st = loadgen.status
        self.result["storm"] = {
            "seconds": round(st["all_fresh_time"] - t0, 3) if ok else None, "complete": ok,
            "disconnects": st.get("disconnects", 0) - disc0, "authorized": st.get("authorized"),
            "fresh": st.get("fresh"), "rss_peak_mb": round(meter.peak / 1e6, 2), "miners": n}

    def _latencies(self, samples: Dict[str, Any]) -> None:
        rec = self.recorder
        share_lat = []
        unmatched = 0
        for en1, en2, nonce, t_send in samples["submits"]:
            t = rec.share_times.get((en1, en2, nonce))
            if t is None:
                unmatched += 1
            else:
                share_lat.append(t - t_send)
        fan = []
        for pool_en1, job_id, clean, times in samples["notifies"]:
            t_sent = rec.notify_times.get((pool_en1, str(job_id)))
            if t_sent is not None and not clean:
                fan.extend(t - t_sent for t in times)
        self.result.update({
            "share_latency_ms": {"p50": ms(percentile(share_lat, 50)), "p99": ms(percentile(share_lat, 99)),
                                 "max": ms(max(share_lat) if share_lat else None),
                                 "samples": len(share_lat), "unmatched": unmatched},
            "fanout_latency_ms": {"p50": ms(percentile(fan, 50)), "p99": ms(percentile(fan, 99)),
                                  "max": ms(max(fan) if fan else None), "samples": len(fan)},
            "loadgen_errors": samples.get("errors", [])[:5],
            "loadgen_final": {k: samples["status"].get(k) for k in (
                "connects", "connect_errors", "disconnects", "errors_other", "reconnect_requests",
                "authorize_errors")}})


def agent_revision() -> str:
    """`git describe`-like revision of the agent source, with "+dirty" when gagent/ has local changes."""
    def git(*cmd: str) -> str:
        return subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
    try:
        rev = git("rev-parse", "--short", "HEAD")
        return rev + ("+dirty" if git("status", "--porcelain", "--", "gagent") else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def count_log_errors(path: str) -> Dict[str, Any]:
    """Count WARNING/ERROR lines in the agent log and keep a few distinct ones."""
    counts = {"WARNING": 0, "ERROR": 0}
    firsts: List[str] = []
    with open(path, errors="replace") as f:
        for line in f:
            for level in counts:
                if " %s " % level in line:
                    counts[level] += 1
                    msg = line.split(": ", 1)[-1].strip()[:160]
                    if len(firsts) < 5 and msg not in firsts:
                        firsts.append(msg)
    return {"warnings": counts["WARNING"], "errors": counts["ERROR"], "examples": firsts}


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="gagent benchmark driver (issue 3)")
    p.add_argument("--miners", type=int, default=10000)
    p.add_argument("--seconds", type=float, default=60.0, help="load phase length")
    p.add_argument("--share-interval", type=float, default=10.0, help="seconds between shares of a miner")
    p.add_argument("--job-interval", type=float, default=30.0, help="seconds between new jobs")
    p.add_argument("--storm", action="store_true", help="drop every upstream after the load phase")
    p.add_argument("--storm-timeout", type=float, default=60.0)
    p.add_argument("--connect-timeout", type=float, default=180.0)
    p.add_argument("--connect-batch", type=int, default=100,
                   help="load generator: miners between connect() and the authorize answer at once")
    p.add_argument("--difficulty", type=float, default=1.0, help="pool default difficulty (irrelevant)")
    p.add_argument("--agent-command", help="run this instead of `python -m gagent` (gets -c CONF "
                                            "appended), e.g. to compare another build of the agent")
    p.add_argument("--agent-config", help="JSON object merged into the agent's config, e.g. "
                                           "'{\"advanced\": {\"pool_connection_number_per_subaccount\": 1}}'")
    p.add_argument("--label", default="", help="free text stored with the result")
    return p.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    result = Run(args).execute()
    if args.label:
        result["label"] = args.label
    line = json.dumps(result, sort_keys=False)
    print(line)
    with open(os.path.join(OUT_DIR, "results.jsonl"), "a") as f:
        f.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
