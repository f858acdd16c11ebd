"""ml_collections configs: the official score_sde files (same names and values) and small CPU configs.

Each leaf module exposes `get_config()`, built from one `default_*_configs.get_default_configs()`
base by override and locked, so that a misspelt `--config.<field>=...` override is an error.
"""
