"""Evaluation of a trained workdir against the untrained model, and the held-out turntable."""

from __future__ import annotations

import json

import jax
import pytest

from flexavatar_jax.config import Config
from flexavatar_jax.train import evaluate as ev
from flexavatar_jax.train import loop, reports
from tests.train.test_loop import micro_dict


def test_evaluate_workdir_reports_trained_against_untrained(tmp_path):
    c = micro_dict(steps=2, batch=2)
    c.mesh.update(data=1, fsdp=1, model=1)
    c.eval.update(num_identities=2, num_targets=2, batch_size=2, views=(1, 2))
    c.train.image_every = 2
    cfg = Config.from_dict(c)
    run = loop.train(cfg, str(tmp_path), devices=jax.devices()[:1])
    from PIL import Image

    # Periodic images: (input | prediction | target | error) rows, and an 8-view held-out turntable strip.
    with Image.open(tmp_path / "images" / "train_0000002.png") as grid:
        assert grid.size == (4 * 32, 2 * 32)
    with Image.open(tmp_path / "images" / "heldout_turntable_0000002.png") as strip:
        assert strip.size == (8 * 32, 32)
    # The newest checkpoint, read back through `inference` (params only, one device).
    out = reports.evaluate_workdir(cfg, str(tmp_path))
    saved = json.loads((tmp_path / "eval.json").read_text())
    untrained = json.loads((tmp_path / "eval_untrained.json").read_text())
    gains = json.loads((tmp_path / "eval_gain.json").read_text())
    assert gains["step"] == 2 and gains["evaluator"] == ev.EVALUATOR_VERSION
    # The geometry-aware predictor: depth error and offset spread are measured, the mouth box is in view.
    for name in ("psnr_mouth", "depth_err_mm", "offset_mm"):
        assert saved["self"]["2_views"]["all"][name] is not None, name
    for mode in ("self", "cross"):
        for views in ("1_views", "2_views"):
            t, u = saved[mode][views]["all"], untrained[mode][views]["all"]
            g = gains[f"{mode}/{views}"]
            assert g["psnr"] == pytest.approx(t["psnr"]) and g["psnr_untrained"] == pytest.approx(u["psnr"])
            assert g["psnr_gain"] == pytest.approx(t["psnr"] - u["psnr"])
            assert t["count"] == 2 * 2
    # Two steps from the same init: the trained model is a different model from the untrained one.
    assert any(abs(g["psnr_gain"]) > 0 for g in out["gains"].values())
    assert "Trained vs untrained" in (tmp_path / "eval.md").read_text()
    path = reports.turntable(run["trainer"], run["state"].params, run["world"], cfg, str(tmp_path / "tt.gif"),
                             num_frames=4, num_views=2)

    with Image.open(path) as gif:
        assert gif.n_frames >= 2 and gif.size == (32, 32)


def test_turntable_of_a_projection_lifter_reads_the_input_cameras(tmp_path):
    """The projection lifters need the input cameras and tracked params: the held-out turntable
    (and the periodic one) pass them."""
    c = micro_dict(steps=1, batch=2)
    c.mesh.update(data=1, fsdp=1, model=1)
    c.model.lifter_type = "dual_uv"
    c.train.image_every = 1
    cfg = Config.from_dict(c)
    run = loop.train(cfg, str(tmp_path), devices=jax.devices()[:1])
    assert (tmp_path / "images" / "heldout_turntable_0000001.png").exists()
    path = reports.turntable(run["trainer"], run["state"].params, run["world"], cfg, str(tmp_path / "tt.gif"),
                             num_frames=2, num_views=2)
    from PIL import Image

    with Image.open(path) as gif:
        assert gif.size == (32, 32)
