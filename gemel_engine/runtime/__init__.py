"""The edge runtime: models under a memory budget, swapping, schedulers, a what-if simulator, metrics, serving."""
