"""The evaluation and benchmark tooling (`forsaken evaluate`, `forsaken bench`, the comparison
with Flower, the in-process reference runner): built on the library, never imported by it."""
