"""Configuration: file, environment and command line, and the refusals a person reads."""
import json
import subprocess
import sys

import pytest

from gagent.config import ConfigError, config_from_dict, load_config


def write_conf(tmp_path, data):
    path = tmp_path / "agent_conf.json"
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return str(path)


def run_gagent(*args, env=None):
    return subprocess.run([sys.executable, "-m", "gagent", *args], capture_output=True, text=True,
                          timeout=30, env=env)


def test_example_config_loads_with_seed_defaults():
    config = load_config(["-c", "etc/agent_conf.json"], environ={})
    assert (config.agent_listen_ip, config.agent_listen_port) == ("0.0.0.0", 3333)
    assert config.pools and all(pool.port == 1800 for pool in config.pools)
    assert config.pool_connection_number_per_subaccount == 5
    assert config.pool_connection_read_timeout_seconds == 60


def test_the_full_example_lists_every_key_with_its_default(caplog):
    from gagent.config import ADVANCED_DEFAULTS, TOP_LEVEL_DEFAULTS
    data = json.load(open("etc/agent_conf.full.json"))
    assert set(data) - {"advanced"} == set(TOP_LEVEL_DEFAULTS)
    assert set(data["advanced"]) == set(ADVANCED_DEFAULTS)
    full = config_from_dict(data)
    defaults = config_from_dict({"pools": data["pools"]})
    assert vars(full) == vars(defaults)
    assert "unknown key" not in caplog.text


def test_command_line_beats_environment_beats_file(tmp_path):
    path = write_conf(tmp_path, {"pools": [["pool.example", 1800, "sub"]], "agent_listen_port": 4000,
                                 "fixed_worker_name": "file", "advanced": {"pool_connection_number_per_subaccount": 2}})
    env = {"GAGENT_AGENT_LISTEN_PORT": "4001", "GAGENT_FIXED_WORKER_NAME": "env",
           "GAGENT_POOL_CONNECTION_NUMBER_PER_SUBACCOUNT": "3"}
    config = load_config(["-c", path, "--agent-listen-port", "4002"], environ=env)
    assert config.agent_listen_port == 4002
    assert config.fixed_worker_name == "env"
    assert config.pool_connection_number_per_subaccount == 3
    config = load_config(["-c", path], environ={})
    assert (config.agent_listen_port, config.fixed_worker_name) == (4000, "file")


def test_pools_from_command_line_and_environment():
    config = load_config(["--pools", "a.example:1800:s1,b.example:443:s2"], environ={})
    assert [tuple(p)[:3] for p in config.pools] == [("a.example", 1800, "s1"), ("b.example", 443, "s2")]
    assert {p.kind for p in config.pools} == {"btcagent"}
    config = load_config([], environ={"GAGENT_POOLS": '[["c.example", 3333, "s3"]]'})
    assert [tuple(p)[:3] for p in config.pools] == [("c.example", 3333, "s3")]


def test_pool_kinds_from_the_host_scheme():
    """A bare host speaks the BTCAgent protocol; stratum+tcp:// plain stratum, +ssl:// and +tls:// over
    TLS; the fourth element is the password; #xnsub asks the pool for mining.set_extranonce."""
    config = config_from_dict({"pools": [
        ["btc.example", 1800, "sub"],
        ["stratum+tcp://solo.example", 3333, "bc1qaddr"],
        ["stratum+ssl://ssl.example", 443, "acct.rig", "d=65536"],
        ["STRATUM+TLS://tls.example#xnsub", 443, "acct"],
        ["stratum+tcp://[2001:db8::1]", 3333, "acct"]]})
    pools = config.pools
    assert [(p.host, p.port, p.kind, p.tls, p.password) for p in pools] == [
        ("btc.example", 1800, "btcagent", None, "x"), ("solo.example", 3333, "stratum", False, "x"),
        ("ssl.example", 443, "stratum", True, "d=65536"), ("tls.example", 443, "stratum", True, "x"),
        ("2001:db8::1", 3333, "stratum", False, "x")]
    assert [p.extranonce_subscribe for p in pools] == [False, False, False, True, False]
    assert pools[1].label == "stratum+tcp://solo.example:3333" and pools[0].label == "btc.example:1800"


@pytest.mark.parametrize("data, key", [
    ({}, "pools"),
    ({"pools": []}, "pools"),
    ({"pools": [["h", 1800]]}, "pools[0]"),
    ({"pools": [["stratum+udp://h", 1800, "s"]]}, "pools[0]"),
    ({"pools": [["stratum+tcp://h:3333", 3333, "s"]]}, "pools[0]"),
    ({"pools": [["stratum+tcp://h#nope", 3333, "s"]]}, "pools[0]"),
    ({"pools": [["stratum+tcp://h", 3333, "s", 5]]}, "pools[0]"),
    ({"pools": [["h", 70000, "s"]]}, "pools[0] port"),
    ({"pools": [["h", 1, "s"]], "agent_listen_port": "http"}, "agent_listen_port"),
    ({"pools": [["h", 1, "s"]], "use_ip_as_worker_name": "maybe"}, "use_ip_as_worker_name"),
    ({"pools": [["h", 1, "s"]], "advanced": {"pool_connection_number_per_subaccount": 0}},
     "pool_connection_number_per_subaccount"),
    ({"pools": [["h", 1, "s"]], "proxy": ["ftp://proxy:21"]}, "proxy[0]"),
    ({"pools": [["h", 1, "s"]], "proxy": ["socks5://proxy"]}, "proxy[0]"),
    ({"pools": [["h", 1, "s"]], "advanced": {"share_answer_after": "never"}}, "share_answer_after"),
    ({"pools": [["h", 1, "s"]], "http_listen": "8080"}, "http_listen"),
])
def test_bad_values_are_refused_naming_the_key(data, key):
    with pytest.raises(ConfigError, match=r"^%s" % key.replace("[", r"\[").replace("]", r"\]")):
        config_from_dict(data)


def test_proxy_entries_as_the_go_agent_reads_them(monkeypatch):
    for name in ("ALL_PROXY", "all_proxy", "HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", "http://env-proxy:3128")
    config = config_from_dict({"pools": [["h", 1, "s"]], "proxy": [
        "system", "socks4://a:1080", "socks4a://b:1080", "https://c:443", "d:3128", "socks5://u:p@e:1080"]})
    assert config.proxy == ["http://env-proxy:3128", "socks5://a:1080", "socks5://b:1080", "http://c:443",
                            "http://d:3128", "socks5://u:p@e:1080"]
    assert config_from_dict({"pools": [["h", 1, "s"]], "proxy": ["x:1"], "use_proxy": False}).proxy == []


def test_unknown_keys_warn(caplog):
    config_from_dict({"pools": [["h", 1, "s"]], "pool_colour": "red", "advanced": {"turbo": 1}})
    assert "unknown key pool_colour" in caplog.text and "unknown key advanced.turbo" in caplog.text


@pytest.mark.timeout(60)
def test_cli_refuses_bad_config_with_exit_code_2_and_one_line(tmp_path):
    result = run_gagent("-c", write_conf(tmp_path, {"pools": [["h", "port", "s"]]}))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "gagent: configuration error: pools[0] port: expected an integer from 1 to 65535, got 'port'"]
    result = run_gagent("-c", write_conf(tmp_path, "{not json"))
    assert result.returncode == 2 and "is not valid JSON" in result.stderr
    result = run_gagent("-c", str(tmp_path / "missing.json"))
    assert result.returncode == 2 and "not found" in result.stderr


@pytest.mark.timeout(60)
def test_cli_says_when_the_port_is_in_use(tmp_path):
    import socket
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        path = write_conf(tmp_path, {"agent_listen_ip": "127.0.0.1", "agent_listen_port": taken.getsockname()[1],
                                     "pools": [["127.0.0.1", 9, "s"]]})
        result = run_gagent("-c", path)
    finally:
        taken.close()
    assert result.returncode == 1
    assert "the port is in use" in result.stderr


def test_listeners_take_the_top_level_keys_they_do_not_set():
    config = config_from_dict({
        "pools": [["btc.example", 1800, "farm"]], "fixed_worker_name": "", "advanced": {"upstream_grace_seconds": 20},
        "listeners": [
            {"agent_listen_port": 3333},
            {"name": "customer-b", "agent_listen_port": 3334, "multi_user_mode": True,
             "advanced": {"pool_connection_number_per_subaccount": 2}},
            {"agent_listen_ip": "127.0.0.1", "agent_listen_port": 3335, "use_ip_as_worker_name": True,
             "pools": [["stratum+tcp://other.example", 3333, "acct"]]}]})
    first, second, third = config.listeners
    assert [c.name for c in config.listeners] == ["0.0.0.0:3333", "customer-b", "127.0.0.1:3335"]
    assert [c.agent_listen_port for c in config.listeners] == [3333, 3334, 3335]
    assert (first.multi_user_mode, second.multi_user_mode, third.multi_user_mode) == (False, True, False)
    assert [c.pool_connection_number_per_subaccount for c in config.listeners] == [5, 2, 5]
    assert {c.upstream_grace_seconds for c in config.listeners} == {20.0}
    assert first.pools[0].host == "btc.example" and third.pools[0].kind == "stratum"
    assert third.use_ip_as_worker_name and not first.use_ip_as_worker_name


def test_without_listeners_the_top_level_keys_are_the_one_listener():
    config = config_from_dict({"pools": [["btc.example", 1800, "farm"]], "agent_listen_port": 3339})
    assert config.listeners == [config] and config.name == "0.0.0.0:3339"


@pytest.mark.parametrize("listeners, message", [
    ([{"agent_listen_port": 3333}, {"name": "b", "agent_listen_port": "x"}], r"^listeners\[1\] \(b\): agent_listen_port"),
    ([{"agent_listen_port": 3333, "pools": [["h", 70000, "s"]]}], r"^listeners\[0\]: pools\[0\] port"),
    ([{"agent_listen_port": 3333, "http_listen": "1.2.3.4:80"}], r"^listeners\[0\]: http_listen is one for the whole"),
    ([{"agent_listen_port": 3333}, {"agent_listen_port": 3333}], r"^listeners\[1\] \(0.0.0.0:3333\): 0.0.0.0:3333 is also"),
    ([{"name": "a", "agent_listen_port": 3333}, {"name": "a", "agent_listen_port": 3334}], r"^listeners: the name 'a'"),
    ([], r"^listeners: expected a non-empty list"),
    (["3333"], r"^listeners\[0\]: expected an object"),
])
def test_a_bad_listener_entry_is_named(listeners, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict({"pools": [["h", 1, "s"]], "listeners": listeners})


def test_listeners_need_pools_somewhere():
    with pytest.raises(ConfigError, match=r"^listeners\[0\]: pools: missing"):
        config_from_dict({"listeners": [{"agent_listen_port": 3333}]})


def test_the_listeners_example_loads():
    config = load_config(["-c", "etc/agent_conf.listeners.json"], environ={})
    assert [c.name for c in config.listeners] == ["main", "customer-b", "any-pool"]
    assert [c.pools[0].sub_account for c in config.listeners] == ["farm-main", "customer-b", "myaccount"]
