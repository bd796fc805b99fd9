"""Flower ServerApp/ClientApp doing the same work as forsaken's benchmark scenarios."""
