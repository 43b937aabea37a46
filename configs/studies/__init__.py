"""Study configs for `flexavatar-jax sweep plan|run|report --study configs/studies/NAME.py:VARIANT`."""
