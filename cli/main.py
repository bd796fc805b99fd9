"""The `forsaken` command: one entry point dispatching to subcommands."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print("forsaken: not yet wired", file=sys.stderr)
    return 2
