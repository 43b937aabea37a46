"""The `flexavatar-jax` entry point runs its commands end to end."""

import json
import subprocess
import sys

import numpy as np
from PIL import Image


def test_preview_head_writes_images(tmp_path):
    out = tmp_path / "preview"
    res = subprocess.run([sys.executable, "-m", "flexavatar_jax.cli", "preview-head", f"--out={out}", "--size=96"],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    for name in ("views_neutral.png", "random_shapes.png", "expressions.png"):
        img = np.asarray(Image.open(out / name))
        assert img.shape[0] >= 96 and (img < 250).mean() > 0.1, name  # something was drawn
    info = json.loads((out / "head_info.json").read_text())
    assert info["shape_components"] >= 100 and info["expression_components"] >= 50


def test_unknown_command_fails_with_usage(tmp_path):
    res = subprocess.run([sys.executable, "-m", "flexavatar_jax.cli", "nonsense"], capture_output=True, text=True)
    assert res.returncode != 0 and "usage" in (res.stderr + res.stdout).lower()


def test_summary_counts_parameters_without_allocating(procedural_head):
    from flexavatar_jax.head import uv

    res = subprocess.run([sys.executable, "-m", "flexavatar_jax.cli", "summary", "--config=configs/flexavatar.py:tiny"],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    lines = {ln.split()[0]: ln.split()[-1] for ln in res.stdout.splitlines() if ln.startswith("  ")}
    parts = [int(lines[k].replace(",", "")) for k in ("encoder", "lifter", "decoder", "unet", "shape_head")]
    assert sum(parts) == int(lines["total"].replace(",", "")) > 100_000
    # tiny has no dense regions: one Gaussian per valid texel of the 64² UV grid.
    assert f"Gaussians per avatar: {int(uv.texel_table(procedural_head, 64).valid.sum()):,}" in res.stdout


def test_train_without_workdir_is_a_usage_error():
    res = subprocess.run([sys.executable, "-m", "flexavatar_jax.cli", "train", "--config=configs/flexavatar.py:tiny"],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode != 0 and "--workdir" in res.stderr
