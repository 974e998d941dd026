"""Adapters: the only doors to outside services (Kaggle, MLflow tracking, storage, git)."""
