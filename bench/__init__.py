"""Benchmarks: skiff side by side with a peer runtime on the same machine."""
