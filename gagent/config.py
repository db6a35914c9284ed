"""Configuration: the JSON file, environment variables (GAGENT_…) and the command line, validated.

Precedence: command line > environment > config file > defaults. Every key of etc/agent_conf.full.json can be
given in all three places; nested `advanced` keys are flat options (`--pool-connection-number-per-subaccount`).
"""
import logging
import os
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import configargparse
import simplejson

log = logging.getLogger("gagent.config")

ENV_PREFIX = "GAGENT_"


class ConfigError(ValueError):
    """A configuration value is missing or wrong; the message names the key and what is expected."""


class PoolEntry(NamedTuple):
    """One pool of the `pools` list. `host` has no scheme; `kind` is "btcagent" (a bare host) or "stratum"
    (`stratum+tcp://`, `stratum+ssl://`, `stratum+tls://`); `tls` None means `pool_use_tls`."""
    host: str
    port: int
    sub_account: str
    kind: str = "btcagent"
    password: str = "x"
    tls: Optional[bool] = None
    extranonce_subscribe: bool = False  # "#xnsub" after the host: ask for mining.set_extranonce
    worker_names: bool = False  # authorize each worker upstream as user.worker and submit under its name

    @property
    def label(self) -> str:
        """host:port as an operator wrote it, with the kind."""
        scheme = "" if self.kind == "btcagent" else ("stratum+ssl://" if self.tls else "stratum+tcp://")
        return "%s%s:%d" % (scheme, self.host, self.port)


POOL_SCHEMES = {"stratum+tcp": False, "stratum+ssl": True, "stratum+tls": True}


# key: (default, type name for messages, section) — section "advanced" keys live under "advanced" in JSON.
TOP_LEVEL_DEFAULTS: Dict[str, Any] = {
    "agent_listen_ip": "0.0.0.0",
    "agent_listen_port": 3333,
    "pools": None,
    "multi_user_mode": False,
    "always_keep_downconn": False,
    "disconnect_when_lost_asicboost": True,
    "use_ip_as_worker_name": False,
    "ip_worker_name_format": "{1}x{2}x{3}x{4}",
    "fixed_worker_name": "",
    "submit_response_from_server": False,
    "pool_use_tls": False,
    "proxy": [],
    "use_proxy": True,
    "direct_connect_with_proxy": False,
    "direct_connect_after_proxy": True,
    "http_listen": "127.0.0.1:8080",
    "http_per_worker_metrics": False,
    "log_max_bytes": 50 << 20,
    "log_backups": 5,
    "listeners": None,
}
ADVANCED_DEFAULTS: Dict[str, Any] = {
    "pool_connection_number_per_subaccount": 5,
    "pool_connection_dial_timeout_seconds": 15.0,
    "pool_connection_read_timeout_seconds": 60.0,
    "fake_job_notify_interval_seconds": 30.0,
    "tls_skip_certificate_verify": False,
    "tls_ca_file": "",
    "upstream_flush_delay_ms": 100.0,
    "miner_backlog_limit_bytes": 1 << 20,
    "upstream_grace_seconds": 30.0,
    "share_answer_after": "tcp",
    "miner_share_interval_seconds": 10.0,
    "miner_start_difficulty": 65536.0,
    "check_shares_locally": False,
    "pool_failback_seconds": 300.0,
}
# Keys of the original agents that have no meaning here; accepted silently.
IGNORED_KEYS = ("agent_type", "use_iocp", "http_debug")
# One value for the whole process; every other key may differ per listener (`listeners`).
PROCESS_KEYS = ("http_listen", "http_per_worker_metrics", "log_max_bytes", "log_backups", "listeners")
IGNORED_ADVANCED_KEYS = ("message_queue_size",)


class Config:
    """Validated settings. Attribute names are the JSON keys (advanced ones flattened)."""

    agent_listen_ip: str
    agent_listen_port: int
    pools: List[PoolEntry]
    multi_user_mode: bool
    always_keep_downconn: bool
    disconnect_when_lost_asicboost: bool
    use_ip_as_worker_name: bool
    ip_worker_name_format: str
    fixed_worker_name: str
    submit_response_from_server: bool
    pool_use_tls: bool
    proxy: List[str]
    use_proxy: bool
    direct_connect_with_proxy: bool
    direct_connect_after_proxy: bool
    http_listen: str
    http_per_worker_metrics: bool
    log_max_bytes: int
    log_backups: int
    pool_connection_number_per_subaccount: int
    pool_connection_dial_timeout_seconds: float
    pool_connection_read_timeout_seconds: float
    fake_job_notify_interval_seconds: float
    tls_skip_certificate_verify: bool
    tls_ca_file: str
    upstream_flush_delay_ms: float
    miner_backlog_limit_bytes: int
    upstream_grace_seconds: float
    share_answer_after: str
    miner_share_interval_seconds: float
    miner_start_difficulty: float
    check_shares_locally: bool
    pool_failback_seconds: float
    log_dir: Optional[str]
    log_level: str
    check_config: bool
    name: str                   # the listener's name (default "HOST:PORT")

    def __init__(self, values: Dict[str, Any]) -> None:
        self.__dict__.update(values)

    @property
    def listeners(self) -> List["Config"]:
        """Every listener's config; without `listeners` in the file, this config alone."""
        return self.__dict__.get("_listeners") or [self]

    def __repr__(self) -> str:
        return "Config(%r)" % self.__dict__


def _expect_bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.lower() in ("true", "1", "yes")
    raise ConfigError("%s: expected true or false, got %r" % (key, value))


def _expect_number(key: str, value: Any, integer: bool, low: float, high: float) -> Any:
    if isinstance(value, str):
        try:
            value = int(value) if integer else float(value)
        except ValueError:
            pass
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type or not low <= value <= high:
        kind = "an integer" if integer else "a number"
        raise ConfigError("%s: expected %s from %s to %s, got %r" % (key, kind, low, high, value))
    return value


def _expect_str(key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ConfigError("%s: expected a string, got %r" % (key, value))
    return value


def _parse_pools(value: Any) -> List[PoolEntry]:
    expected = ('pools: expected a non-empty list of [host, port, sub-account] or [host, port, user, password], '
                'e.g. [["btc.pool.example", 1800, "mysub"]] or [["stratum+tcp://pool.example.com", 3333, "me", "x"]]')
    if isinstance(value, str):
        try:
            value = simplejson.loads(value)
        except ValueError:
            value = [item.split(":") for item in value.split(",") if item]
    if not isinstance(value, list) or not value:
        raise ConfigError(expected + ", got %r" % (value,))
    pools = []
    for n, entry in enumerate(value):
        if not isinstance(entry, (list, tuple)) or len(entry) not in (3, 4, 5):
            raise ConfigError("pools[%d]: expected [host, port, sub-account] or [host, port, user, password"
                              "(, options)], got %r" % (n, entry))
        host, port, sub = entry[:3]
        password = entry[3] if len(entry) >= 4 else "x"
        options = entry[4] if len(entry) == 5 else {}
        if not isinstance(host, str) or not host:
            raise ConfigError("pools[%d]: host must be a non-empty string, got %r" % (n, host))
        port = _expect_number("pools[%d] port" % n, port, True, 1, 65535)
        if not isinstance(sub, str):
            raise ConfigError("pools[%d]: sub-account must be a string, got %r" % (n, sub))
        if not isinstance(password, str):
            raise ConfigError("pools[%d]: password must be a string, got %r" % (n, password))
        pool = _pool_entry(n, host, port, sub, password)
        pools.append(pool._replace(**_pool_options(n, pool, options)) if options else pool)
    return pools


POOL_OPTIONS = ("worker_names", "extranonce_subscribe")


def _pool_options(n: int, pool: PoolEntry, options: Any) -> Dict[str, bool]:
    """The fifth element of a plain stratum pool entry: {"worker_names": true, "extranonce_subscribe": true}."""
    if not isinstance(options, dict):
        raise ConfigError("pools[%d]: the fifth element must be an object of options, got %r" % (n, options))
    if pool.kind != "stratum":
        raise ConfigError("pools[%d]: options are for stratum+tcp:// pools only" % n)
    unknown = sorted(set(options) - set(POOL_OPTIONS))
    if unknown:
        raise ConfigError("pools[%d]: unknown option %r; expected %s" % (n, unknown[0], ", ".join(POOL_OPTIONS)))
    return {key: _expect_bool("pools[%d] %s" % (n, key), value) for key, value in options.items()}


def _pool_entry(n: int, host: str, port: int, sub: str, password: str) -> PoolEntry:
    """A bare host speaks the BTCAgent protocol; stratum+tcp:// (or +ssl://, +tls://) plain stratum v1."""
    if "://" not in host:
        return PoolEntry(host, port, sub, password=password)
    scheme, _, rest = host.partition("://")
    if scheme.lower() not in POOL_SCHEMES:
        raise ConfigError("pools[%d]: unknown scheme %r; expected a bare host (BTCAgent protocol) or "
                          "stratum+tcp://, stratum+ssl:// or stratum+tls://" % (n, scheme))
    rest, _, fragment = rest.partition("#")
    rest = rest.rstrip("/")
    if not rest or "/" in rest or (":" in rest and not rest.startswith("[")):
        raise ConfigError("pools[%d]: expected stratum+tcp://HOST with the port as the second element, got %r"
                          % (n, host))
    if fragment not in ("", "xnsub"):
        raise ConfigError("pools[%d]: unknown option #%s (only #xnsub, to ask for mining.set_extranonce)"
                          % (n, fragment))
    return PoolEntry(rest.strip("[]"), port, sub, "stratum", password, POOL_SCHEMES[scheme.lower()],
                     fragment == "xnsub")


# The Go agent's spellings: "system" is the first proxy environment variable that is set; socks4 and
# socks4a are dialled as SOCKS5; https:// and entries without a scheme go through HTTP CONNECT.
PROXY_ENVIRONMENT = ("ALL_PROXY", "all_proxy", "HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy")
_PROXY_SCHEME_ALIASES = {"socks4": "socks5", "socks4a": "socks5", "https": "http"}


def _as_the_go_agent_reads(url: str) -> Optional[str]:
    if url.strip().lower() == "system":
        url = next((os.environ[name] for name in PROXY_ENVIRONMENT if os.environ.get(name)), "")
        if not url:
            return None
    if "://" not in url:
        url = "http://" + url.strip()
    scheme, rest = url.split("://", 1)
    return _PROXY_SCHEME_ALIASES.get(scheme.lower(), scheme) + "://" + rest


def _parse_proxy(value: Any) -> List[str]:
    if isinstance(value, str):
        value = [item for item in value.split(",") if item]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError("proxy: expected a list of proxy URLs (socks5://…, http://…), got %r" % (value,))
    from .connect import parse_proxy_url
    urls = []
    for n, entry in enumerate(value):
        url = _as_the_go_agent_reads(entry)
        if url is None:
            log.warning('proxy[%d] is "system" but no proxy environment variable is set (%s); ignored',
                        n, ", ".join(PROXY_ENVIRONMENT))
            continue
        try:
            parse_proxy_url(url)
        except ValueError as exc:
            raise ConfigError("proxy[%d]: %s" % (n, exc)) from None
        urls.append(url)
    return urls


def _parse_listen_address(key: str, value: str) -> "tuple[str, int]":
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError('%s: expected "host:port" (e.g. "127.0.0.1:8080") or "" to turn it off, got %r'
                          % (key, value))
    return host.strip("[]") or "0.0.0.0", int(port)


def listen_address(value: str) -> "tuple[str, int]":
    """(host, port) of a validated "host:port" option such as http_listen."""
    return _parse_listen_address("address", value)


def validate(raw: Dict[str, Any]) -> Config:
    """Apply defaults and check every key, each listener's too; raises ConfigError naming the first bad key
    (and the listener entry)."""
    entries = raw.get("listeners")
    if entries is None:
        return _validate_one(raw)
    if isinstance(entries, str):
        try:
            entries = simplejson.loads(entries)
        except ValueError:
            raise ConfigError("listeners: expected a JSON list of objects, got %r" % entries[:80]) from None
    if not isinstance(entries, list) or not entries:
        raise ConfigError("listeners: expected a non-empty list of objects (each with agent_listen_port and "
                          "pools, and any per-listener key), got %r" % (entries,))
    base = {key: value for key, value in raw.items() if key != "listeners"}
    top = _validate_one(dict(base, pools=base.get("pools") or [["-", 1, ""]]))
    listeners: List[Config] = []
    seen: Dict[Tuple[str, int], str] = {}
    for n, entry in enumerate(entries):
        config = _validate_listener(n, entry, base)
        address = (config.agent_listen_ip, config.agent_listen_port)
        if address in seen and config.agent_listen_port:
            raise ConfigError("listeners[%d] (%s): %s:%d is also the address of listener %s"
                              % (n, config.name, address[0], address[1], seen[address]))
        seen[address] = config.name
        listeners.append(config)
    names = [config.name for config in listeners]
    duplicate = next((name for name in names if names.count(name) > 1), None)
    if duplicate is not None:
        raise ConfigError("listeners: the name %r is given to more than one listener" % duplicate)
    top._listeners = listeners
    return top


def _validate_listener(n: int, entry: Any, base: Dict[str, Any]) -> Config:
    """One `listeners` entry: its keys over the top-level ones."""
    if not isinstance(entry, dict):
        raise ConfigError("listeners[%d]: expected an object, got %r" % (n, entry))
    name = entry.get("name")
    label = "listeners[%d]%s" % (n, " (%s)" % name if isinstance(name, str) and name else "")
    if name is not None and not (isinstance(name, str) and name.strip()):
        raise ConfigError("%s: name must be a non-empty string, got %r" % (label, name))
    own = {key: value for key, value in entry.items() if key != "name"}
    for key in PROCESS_KEYS:
        if key in own:
            raise ConfigError("%s: %s is one for the whole process; set it at the top level" % (label, key))
    try:
        flat = flatten_file_config(own, label)
        merged = dict(base)
        merged.update(flat)
        config = _validate_one(merged)
    except ConfigError as exc:
        raise ConfigError("%s: %s" % (label, exc)) from None
    config.name = name.strip() if name else config.name
    if config.name == "total":
        raise ConfigError('%s: "total" names the sum of all listeners on the status page; choose another name'
                          % label)
    return config


def _validate_one(raw: Dict[str, Any]) -> Config:
    values: Dict[str, Any] = {}
    for key, default in list(TOP_LEVEL_DEFAULTS.items()) + list(ADVANCED_DEFAULTS.items()):
        values[key] = raw.get(key, default)
    if values["pools"] is None:
        raise ConfigError("pools: missing; expected a list of [host, port, sub-account]")
    values["pools"] = _parse_pools(values["pools"])
    values["proxy"] = _parse_proxy(values["proxy"])
    for key in ("agent_listen_ip", "ip_worker_name_format", "fixed_worker_name", "http_listen", "tls_ca_file"):
        values[key] = _expect_str(key, values[key])
    for key in ("multi_user_mode", "always_keep_downconn", "disconnect_when_lost_asicboost",
                "use_ip_as_worker_name", "submit_response_from_server", "pool_use_tls",
                "tls_skip_certificate_verify", "http_per_worker_metrics", "use_proxy",
                "direct_connect_with_proxy", "direct_connect_after_proxy", "check_shares_locally"):
        values[key] = _expect_bool(key, values[key])
    values["agent_listen_port"] = _expect_number("agent_listen_port", values["agent_listen_port"], True, 0, 65535)
    values["pool_connection_number_per_subaccount"] = _expect_number(
        "pool_connection_number_per_subaccount", values["pool_connection_number_per_subaccount"], True, 1, 100)
    for key, low, high in (("pool_connection_dial_timeout_seconds", 0.1, 3600),
                           ("pool_connection_read_timeout_seconds", 0.1, 86400),
                           ("fake_job_notify_interval_seconds", 1, 3600),
                           ("upstream_flush_delay_ms", 0, 1000),
                           ("upstream_grace_seconds", 0, 86400),
                           ("pool_failback_seconds", 1, 86400),
                           ("miner_share_interval_seconds", 1, 3600),
                           ("miner_start_difficulty", 1e-9, 2 ** 64)):
        values[key] = float(_expect_number(key, values[key], False, low, high))
    values["miner_backlog_limit_bytes"] = _expect_number(
        "miner_backlog_limit_bytes", values["miner_backlog_limit_bytes"], True, 4096, 1 << 30)
    if values["share_answer_after"] not in ("tcp", "pool", "write"):
        raise ConfigError('share_answer_after: expected "tcp", "pool" or "write", got %r' % (values["share_answer_after"],))
    values["log_max_bytes"] = _expect_number("log_max_bytes", values["log_max_bytes"], True, 4096, 1 << 40)
    values["log_backups"] = _expect_number("log_backups", values["log_backups"], True, 0, 1000)
    if values["http_listen"]:
        _parse_listen_address("http_listen", values["http_listen"])
    values["log_dir"] = raw.get("log_dir")
    values["check_config"] = bool(raw.get("check_config", False))
    values["log_level"] = str(raw.get("log_level", "INFO")).upper()
    if values["log_level"] not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError("log_level: expected DEBUG, INFO, WARNING or ERROR, got %r" % raw.get("log_level"))
    if not values["use_proxy"]:
        values["proxy"] = []  # the Go agent's switch: the list stays in the file, unused
    values["name"] = "%s:%d" % (values["agent_listen_ip"], values["agent_listen_port"])
    values.pop("listeners", None)
    return Config(values)


def flatten_file_config(data: Any, source: str) -> Dict[str, Any]:
    """The JSON document as flat keys; unknown keys are logged as warnings and dropped."""
    if not isinstance(data, dict):
        raise ConfigError("%s: expected a JSON object at the top level" % source)
    flat: Dict[str, Any] = {}
    for key, value in data.items():
        if key == "advanced":
            if not isinstance(value, dict):
                raise ConfigError("advanced: expected a JSON object, got %r" % (value,))
            for sub_key, sub_value in value.items():
                if sub_key in ADVANCED_DEFAULTS:
                    flat[sub_key] = sub_value
                elif sub_key not in IGNORED_ADVANCED_KEYS:
                    log.warning("%s: unknown key advanced.%s ignored", source, sub_key)
        elif key in TOP_LEVEL_DEFAULTS:
            flat[key] = value
        elif key not in IGNORED_KEYS:
            log.warning("%s: unknown key %s ignored", source, key)
    return flat


def config_from_dict(data: Dict[str, Any]) -> Config:
    """A Config from a dict shaped like agent_conf.json (used by tests, the demo and the benchmark)."""
    return validate(flatten_file_config(data, "config"))


def _option(key: str) -> str:
    return "--" + key.replace("_", "-")


def build_parser() -> configargparse.ArgumentParser:
    """The command-line parser; each config key is an option and a GAGENT_<KEY> variable."""
    parser = configargparse.ArgumentParser(
        prog="gagent", description="Stratum proxy for mining farms (BTCAgent protocol upstream).")
    parser.add_argument("-c", "--config", env_var=ENV_PREFIX + "CONFIG",
                        help="JSON config file (agent_conf.json)")
    parser.add_argument("-l", "--log-dir", env_var=ENV_PREFIX + "LOG_DIR",
                        help="directory for log files (default: log to stderr)")
    parser.add_argument("--log-level", env_var=ENV_PREFIX + "LOG_LEVEL", help="DEBUG, INFO (default), WARNING, ERROR")
    parser.add_argument("--check-config", action="store_true",
                        help="validate the configuration, print the effective settings and exit (0 ok, 2 bad)")
    for key in list(TOP_LEVEL_DEFAULTS) + list(ADVANCED_DEFAULTS):
        default = TOP_LEVEL_DEFAULTS.get(key, ADVANCED_DEFAULTS.get(key))
        help_text = "default: %s" % simplejson.dumps(default)
        if key == "pools":
            help_text = 'JSON list of [host, port, sub-account] or "host:port:sub,host:port:sub"'
        parser.add_argument(_option(key), dest=key, env_var=ENV_PREFIX + key.upper(),
                            default=None, help=help_text)
    return parser


def load_config(argv: Optional[Sequence[str]] = None, environ: Optional[Dict[str, str]] = None) -> Config:
    """Parse the command line and environment, read the config file, validate."""
    parser = build_parser()
    args = parser.parse_args(args=argv, env_vars=os.environ if environ is None else environ)
    raw: Dict[str, Any] = {}
    if args.config:
        raw.update(read_config_file(args.config))
    for key in list(TOP_LEVEL_DEFAULTS) + list(ADVANCED_DEFAULTS):
        value = getattr(args, key)
        if value is not None:
            raw[key] = value
    if args.log_dir is not None:
        raw["log_dir"] = args.log_dir
    if args.log_level is not None:
        raw["log_level"] = args.log_level
    raw["check_config"] = args.check_config
    return validate(raw)


def read_config_file(path: str) -> Dict[str, Any]:
    """Read and flatten a JSON config file, with errors that say what to fix."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = simplejson.load(handle)
    except FileNotFoundError:
        raise ConfigError("config file %s not found; pass -c with the path of agent_conf.json" % path) from None
    except OSError as exc:
        raise ConfigError("config file %s cannot be read: %s" % (path, exc.strerror)) from None
    except ValueError as exc:
        raise ConfigError("config file %s is not valid JSON: %s" % (path, exc)) from None
    return flatten_file_config(data, path)


