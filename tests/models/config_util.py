"""Load `configs/flexavatar.py` by path (configs/ is not a package)."""

from __future__ import annotations

import importlib.util
import pathlib

import ml_collections

CONFIG_PATH = pathlib.Path(__file__).resolve().parents[2] / "configs" / "flexavatar.py"


def flexavatar_config(variant: str = "tiny") -> ml_collections.ConfigDict:
    spec = importlib.util.spec_from_file_location("flexavatar_config", CONFIG_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(variant)
