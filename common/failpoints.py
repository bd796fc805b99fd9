"""Fault injection for tests: a named point where the process can be made to die abruptly.

`FORSAKEN_FAILPOINTS=name[,name...]` in a daemon's environment makes it SIGKILL itself when it
reaches a listed point, so integration tests can drop a real client at an exact protocol step
(for example right after it sent its shares) instead of racing a timer. Unset, it costs one
dictionary lookup.
"""

from __future__ import annotations

import logging
import os
import signal

ENV = "FORSAKEN_FAILPOINTS"
log = logging.getLogger(__name__)


def armed() -> frozenset[str]:
    return frozenset(p.strip() for p in os.environ.get(ENV, "").split(",") if p.strip())


def hit(name: str) -> None:
    """SIGKILL this process if the failpoint `name` is armed."""
    if name in armed():
        log.warning("failpoint %s: killing this process", name)
        logging.shutdown()
        os.kill(os.getpid(), signal.SIGKILL)
