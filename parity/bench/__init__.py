"""Benchmarks: timing core, per-runtime cases, memory, FLOPs and plots."""
