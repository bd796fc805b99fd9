"""The exit codes of every `forsaken` command, in one place (the README's table lists them)."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0  # done; for a daemon also a clean stop on SIGTERM or the server's STOP
    FAILED = 1  # a tool's request failed or could not reach its peer; a daemon's unexpected
    # error (a bug or an environment failure such as a full disk: the log has the traceback)
    USAGE = 2  # bad configuration or usage: a flag, a file, a port in use, a locked state dir
    CERTIFICATE = 3  # TLS certificates that cannot work (wrong CA, expired, another name...)
    REFUSED = 4  # the server refused this node: revoked or quarantined
    INTERRUPTED = 130  # SIGINT (Ctrl-C), as a shell reports 128 + 2
