"""forsaken: federated learning in which a participant can take its data back."""

from forsaken.main import main

__all__ = ["main"]
__version__ = "0.1.0"
