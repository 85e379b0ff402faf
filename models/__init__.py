"""Pure PyTorch and NumPy: networks, preprocessing, training, strategies, metrics, gate.

Nothing here imports orchestration, tracking or data-versioning libraries, so the
learning code can be tested and reused without any of them.
"""
