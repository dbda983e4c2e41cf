"""Experiment configs: one `get_config()` file per setting (ml_collections)."""
