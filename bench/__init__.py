"""Benchmarks of the three-service stack against the in-process seed loop (`make bench`, not `make test`)."""
