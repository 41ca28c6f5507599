"""Result reproductions: the training sweeps behind the published mAP tables (``python benchmarks/reproduce/X.py``)."""
