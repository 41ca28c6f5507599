"""Speed benchmarks: training, encoding, search, serving and scale-out throughput (``python benchmarks/speed/X.py``)."""
