"""Benchmarks: `make bench`. Client, orchestrator and plugin run as separate processes."""
