"""Postroom's benchmarks (``make bench``); see bench/README.md."""
