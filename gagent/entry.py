"""Process entry points: patch the standard library for gevent first, then run.

`monkey.patch_all()` makes every blocking call in the process cooperative — sockets, time.sleep, and
python-socks' proxy handshakes, which have no gevent flavour of their own — and the c-ares
resolver answers DNS look-ups on the event loop, so gagent runs no thread at all.
"""
from typing import List, Optional


def patch() -> None:
    """Patch before anything else is imported (idempotent)."""
    from gevent import config, monkey
    if not monkey.is_module_patched("socket"):
        config.resolver = "ares"  # the default resolver runs each look-up in a thread
        # ssl stays unpatched (and unimported, 4.5 MB) until a pool uses TLS: connect.py builds its TLS
        # sockets with gevent.ssl itself, which cooperates without the patch.
        monkey.patch_all(ssl=False)


def main(argv: Optional[List[str]] = None) -> int:
    """`gagent`."""
    patch()
    from .cli import main as run
    return run(argv)


def demo(argv: Optional[List[str]] = None) -> int:
    """`gagent-sim`."""
    patch()
    from .sim.demo import main as run
    return run(argv)
