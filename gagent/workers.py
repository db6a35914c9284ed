"""How a miner's login becomes the worker name the pool sees (docs/protocol.md §5.4)."""
from .protocol.stratum import filter_worker_name

DEFAULT_WORKER = "__default__"


def split_login(login: str) -> "tuple[str, str]":
    """("sub-account", "worker") of a filtered login, split at the first dot; ("", login) without one."""
    name = filter_worker_name(login)
    sub_account, dot, worker = name.partition(".")
    if not dot:
        return "", sub_account
    return sub_account, worker


def worker_name(login: str, peer_ip: str, fixed_name: str = "", use_ip: bool = False,
                ip_format: str = "{1}x{2}x{3}x{4}") -> str:
    """The worker name registered upstream: fixed name > IP-derived name > login's worker part.

    A login without a dot is the worker name itself (the Go agent's behaviour; `__default__`
    would hide every such miner behind one pool worker)."""
    if fixed_name:
        return filter_worker_name(fixed_name) or DEFAULT_WORKER
    if use_ip:
        octets = peer_ip.split(".")
        if len(octets) == 4:
            return filter_worker_name(ip_format.format(None, *octets)) or DEFAULT_WORKER
    return split_login(login)[1] or DEFAULT_WORKER
