"""forsaken: federated learning in which a participant can take its data back."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
