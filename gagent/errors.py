"""Unexpected exceptions, logged once per cause: a bug that repeats must not bury the log."""
import logging
import traceback
from typing import Set, Tuple

_seen: Set[Tuple[str, str, int]] = set()


def log_unexpected(logger: logging.Logger, what: str, exc: BaseException) -> None:
    """Log `what` failed because of `exc`: with its traceback the first time this cause is seen,
    as one line after that. The cause is the exception type and the line that raised it."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = frames[-1] if frames else None
    key = (type(exc).__name__, where.filename if where else "", where.lineno if where else 0)
    if key in _seen:
        logger.error("%s: unexpected %s: %s (same cause as logged before)", what, type(exc).__name__, exc)
        return
    _seen.add(key)
    logger.error("%s: unexpected %s: %s", what, type(exc).__name__, exc, exc_info=exc)
