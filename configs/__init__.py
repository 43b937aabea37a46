"""Run configs, importable as `flexavatar_jax.configs` (`flexavatar.get_config("tiny")`) or given by
path on the command line (`--config configs/flexavatar.py:tiny`)."""
