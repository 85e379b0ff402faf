"""Lepton: continual training with DVC, Great Expectations, PyTorch, MLflow and Prefect."""
