"""Ablation studies: paired differences and verdicts, claim validation, and the smoke ablation
study end to end (plan, run, report) through the CLI."""

import json

import numpy as np
import pytest

from flexavatar_jax import cli
from flexavatar_jax.studies import ablation, load_study, points, spec

SMOKE = "configs/studies/ablations.py:smoke"


def test_paired_difference_cancels_what_both_sides_share():
    rng = np.random.default_rng(0)
    identity_level = rng.normal(20.0, 3.0, (2, 32))  # large spread between identities, shared by a and b
    a = identity_level + 0.5 + rng.normal(0, 0.05, (2, 32))
    b = identity_level
    diff = ablation.paired_difference(a, b, resamples=500)
    assert diff["mean"] == pytest.approx(np.mean(a - b))
    assert 0.45 < diff["ci"][0] < 0.5 < diff["ci"][1] < 0.55  # tight: the identity spread cancels
    assert ablation.verdict(diff, "+") == "yes" and ablation.verdict(diff, "-") == "no"
    assert ablation.verdict({"mean": 0.1, "ci": [-0.1, 0.3]}, "+") == "not resolved"


def test_claims_are_validated():
    with pytest.raises(ValueError, match="not in"):
        spec.Study(variants=(("a", ()),), claims=(("c", "b:self/4_views/all/psnr", "a:self/4_views/all/psnr", "+", "x"),))
    with pytest.raises(ValueError, match="'\\+'\\|'-'"):
        spec.Study(variants=(("a", ()),), claims=(("c", "a:self/4_views/all/psnr", "a:self/1_views/all/psnr", "up", "x"),))
    with pytest.raises(ValueError, match="distinct"):
        spec.Study(variants=(("a", ()), ("a", ())))
    with pytest.raises(ValueError, match="may not set"):
        spec.Study(variants=(("a", (("seed", 1),)),))
    with pytest.raises(ValueError, match="metric"):
        ablation.parse_cell("a:self/4_views/all/sharpness")


def test_tiny_ablation_plan_has_every_variant_and_seed():
    study = load_study("configs/studies/ablations.py:tiny")
    pts = points(study)
    assert {p.variant for p in pts} == {name for name, _ in study.variants}
    assert all(len({p.seed for p in pts if p.variant == v}) >= 2 for v, _ in study.variants)
    assert len({p.steps for p in pts}) == 1
    config = spec.point_config(study, next(p for p in pts if p.variant == "no_unet"), "/r")
    assert config.model.unet.enabled is False and tuple(config.eval.views) == (1, 2, 4)


@pytest.mark.slow  # the runner itself is covered end to end by tests/studies/test_sweep.py
def test_smoke_ablation_study_end_to_end(tmp_path, capsys):
    root = tmp_path / "ablation"
    argv = lambda action, *extra: ["flexavatar-jax", "sweep", action, f"--study={SMOKE}", f"--root={root}", *extra]  # noqa: E731
    assert cli.main(argv("run")) == 0
    assert "points: 2 finished" in capsys.readouterr().out
    assert cli.main(argv("report", "--bootstrap=50")) == 0
    results = json.loads((root / "report" / "results.json").read_text())
    assert [p["name"] for p in results["points"]] == ["baseline_seed0", "no_unet_seed0"]
    assert set(results["variants"]) == {"baseline", "no_unet"}
    for claim in results["claims"]:
        assert claim["difference"] is not None and claim["matches"] in ("yes", "no", "not resolved")
    md = (root / "report" / "report.md").read_text()
    assert "matches paper?" in md and (root / "report" / "claims.png").stat().st_size > 0
