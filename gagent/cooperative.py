"""Long walks over miners that let the hub serve everyone else in between."""
from typing import Iterable, Iterator, TypeVar

import gevent

T = TypeVar("T")


def yielding(items: Iterable[T], every: int, pause: float = 0.0) -> Iterator[T]:
    """Iterate over `items`, giving the hub a turn (`gevent.sleep(pause)`) after every `every` of them."""
    for count, item in enumerate(items, 1):
        yield item
        if not count % every:
            gevent.sleep(pause)
