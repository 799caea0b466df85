"""Proxy overhead benchmark: `python -m bench.overhead` (see bench/README.md)."""
