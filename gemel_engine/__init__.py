"""Gemel's engine: workload analysis, model merging, merged bundles and the edge runtime (pure PyTorch)."""

__version__ = "0.1.0"
