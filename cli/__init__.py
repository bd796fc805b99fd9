"""forsaken: federated learning in which a participant can take its data back."""

from __future__ import annotations

__version__ = "0.1.0"


def main() -> int:
    from forsaken.main import main as _main

    return _main()


__all__ = ["__version__", "main"]
