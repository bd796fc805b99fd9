"""`forsaken.lab.compare`: forsaken against Flower on the same work (`make bench-compare`)."""
