"""One daemon per state directory: an exclusive flock on STATE_DIR/daemon.lock.

Two servers on one ledger would both resume from the same round and overwrite each other's
checkpoints; two clients on one node key would fight over one identity. The lock is an
`fcntl.flock` on an open file, so the kernel drops it when its holder dies, even by SIGKILL:
a stale lock never blocks a restart. The holder's pid and command are written into the file
only so that the refusal can name them; the flock alone decides.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sys
from pathlib import Path

from forsaken.common.errors import ConfigError

log = logging.getLogger(__name__)

LOCK_FILE = "daemon.lock"


class StateDirLocked(ConfigError):
    """Another live process holds the state directory's lock."""


class StateLock:
    """The held lock of one state directory; `release` (or process exit) gives it back."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, state_dir: Path, what: str) -> StateLock:
        """Lock `state_dir` for this process or raise StateDirLocked naming the holder."""
        path = Path(state_dir) / LOCK_FILE
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise ConfigError(f"cannot open the lock file {path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe(_read(fd))
            os.close(fd)
            who = holder or "a process that has not written its pid yet"
            raise StateDirLocked(
                f"{state_dir} is in use by another {what}, {who}: one daemon per state "
                "directory. Stop that one, or give this one another --state-dir"
            ) from None
        previous = _describe(_read(fd))
        if previous:
            # Written by a holder that never released it: it was killed or crashed.
            log.info(
                "state directory %s was last held by %s, which did not shut down cleanly",
                state_dir,
                previous,
            )
        os.ftruncate(fd, 0)
        command = _own_command()
        os.pwrite(fd, f"{os.getpid()} {command}\n".encode(), 0)
        os.fsync(fd)
        return cls(path, fd)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Empty the file (a clean shutdown) and drop the lock; idempotent."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
        finally:
            os.close(fd)  # closing the last descriptor drops the flock


def _own_command() -> str:
    try:
        raw = Path("/proc/self/cmdline").read_bytes()
        words = [w.decode(errors="replace") for w in raw.split(b"\0") if w]
    except OSError:
        words = [sys.executable, *sys.argv]
    return " ".join(words)[:200]


def _read(fd: int) -> str:
    try:
        return os.pread(fd, 256, 0).decode(errors="replace").strip()
    except OSError:
        return ""


def _describe(content: str) -> str:
    """ "pid N (command)" from the file's "N command" line; empty for an empty file."""
    pid, _, command = content.partition(" ")
    if not pid.isdigit():
        return ""
    return f"pid {pid} ({command})" if command else f"pid {pid}"
