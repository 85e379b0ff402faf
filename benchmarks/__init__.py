"""Benchmarks: retention and cost of the strategies, and what the pipeline costs around training."""
