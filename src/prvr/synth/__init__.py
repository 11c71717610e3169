"""Synthetic benchmarks in the release layout: generators, not readers."""
