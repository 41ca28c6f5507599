"""Reliability stress runs: the loaders fuzzed with damaged files (``python benchmarks/reliability/X.py``)."""
