"""Ablation studies: paired differences and verdicts, claim validation, and the smoke ablation
study end to end (plan, run, report) through the CLI."""

import json
import shutil

import numpy as np
import pytest

from flexavatar_jax import cli
from flexavatar_jax.configs.studies import ablations as ablations_config, views as views_config
from flexavatar_jax.studies import ablation, archive, load_study, points, runner, spec
from flexavatar_jax.train.evaluate import EVALUATOR_VERSION

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


def test_scale_ablation_trains_every_variant_on_the_views_recipe():
    """`ablations.py:scale` is the tiny study with the training the views confirmation found 4 input
    views need (1,024 identities, 1,200 steps) and the 128 held-out identities that resolve it."""
    tiny, scale = load_study("configs/studies/ablations.py:tiny"), load_study("configs/studies/ablations.py:scale")
    assert scale.variants == tiny.variants and scale.claims == tiny.claims
    pts = points(scale)
    assert {p.steps for p in pts} == {1200} and len(pts) == 2 * len(scale.variants)
    for p in pts:
        config = spec.point_config(scale, p, "/r")
        assert (config.data.num_identities, config.data.num_heldout, config.eval.num_identities) == (1024, 128, 128)
        assert tuple(config.eval.views) == (1, 2, 4) and config.eval.shuffle_control
    tiny_config = spec.point_config(tiny, points(tiny)[0], "/r")
    assert (tiny_config.data.num_identities, tiny_config.eval.num_identities) == (24, 32)


@pytest.mark.parametrize("study", [f"configs/studies/{m.__name__.rsplit('.', 1)[1]}.py:{v}"
                                   for m in (ablations_config, views_config) for v in m.VARIANTS])
def test_every_study_variant_resolves_its_point_configs(study):
    """Each point's overrides name real config fields with values of the right type (the strict
    `Config.from_dict` raises otherwise): a typo in a study would only surface when its point runs."""
    s = load_study(study)
    for p in points(s):
        spec.point_config(s, p, "/r")


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
    # On another machine: restored from the archive, the points are skipped, not trained again.
    store, other = tmp_path / "archive", tmp_path / "other"
    assert cli.main(argv("archive", f"--archive={store}")) == 0
    assert cli.main(["flexavatar-jax", "sweep", "restore", f"--study={SMOKE}", f"--root={other}",
                     f"--archive={store}"]) == 0
    capsys.readouterr()
    assert cli.main(["flexavatar-jax", "sweep", "run", f"--study={SMOKE}", f"--root={other}"]) == 0
    out = capsys.readouterr().out
    assert out.count("finished, skipped") == 2 and "points: 2 finished" in out and "training" not in out


def _fake_point(workdir, steps, psnr, psnr_shuffled, marginal, azimuth, evaluator=EVALUATOR_VERSION):
    """The files a finished point leaves (what `report.read_point` reads), with given per-target scores."""
    workdir.mkdir(parents=True)
    per_target = {"psnr": psnr.tolist(), "psnr_shuffled": psnr_shuffled.tolist(), "marginal": marginal.tolist(),
                  "azimuth_deg": azimuth.tolist()}
    result = {"per_target": per_target}
    (workdir / "eval.json").write_text(json.dumps({"self": {"1_views": result, "4_views": result}}))
    (workdir / "eval_gain.json").write_text(json.dumps({"step": steps, "evaluator": evaluator}))
    (workdir / "metrics.jsonl").write_text(json.dumps({"step": steps, "wall_s": 10.0, "data_s": 1.0}) + "\n")


def test_ablation_report_from_finished_points(tmp_path):
    """Two variants whose per-target PSNRs differ by a known 0.5 dB: the claim's paired difference
    is 0.5 with a tight interval, the verdicts follow the expected signs, JSON is strict."""
    study = spec.Study(name="fake", variants=(("a", ()), ("b", (("model.unet.enabled", False),))), seeds=(0, 1),
                       steps=7, claims=(("a beats b", "a:self/4_views/all/psnr", "b:self/4_views/all/psnr", "+", "x"),
                                        ("b beats a", "b:self/4_views/all/psnr", "a:self/4_views/all/psnr", "+", "y"),
                                        ("marginal", "a:self/4_views/marginal/psnr", "b:self/4_views/marginal/psnr", "+",
                                         "z")))
    rng = np.random.default_rng(0)
    marginal, azimuth = np.zeros((16, 4), bool), rng.uniform(-180, 180, (16, 4))  # no marginal targets at all
    for seed in (0, 1):
        base = rng.normal(18.0, 2.0, (16, 4))
        _fake_point(tmp_path / f"a_seed{seed}", 7, base + 0.5, base - 1.0, marginal, azimuth)
        _fake_point(tmp_path / f"b_seed{seed}", 7, base, base - 1.0, marginal, azimuth)
    ablation.write_ablation_report(study, str(tmp_path), bootstrap=200)
    results = json.loads((tmp_path / "report" / "results.json").read_text())
    first, second, empty = results["claims"]
    assert first["difference"]["mean"] == pytest.approx(0.5) and first["matches"] == "yes"
    assert first["difference"]["ci"] == pytest.approx([0.5, 0.5], abs=1e-9)
    assert second["matches"] == "no"
    assert empty["difference"] is None and empty["matches"].startswith("no data")
    assert results["variants"]["a"]["self/4_views/all/identity_gain_psnr"]["mean"] == pytest.approx(1.5)
    assert "| a beats b |" in (tmp_path / "report" / "report.md").read_text()


def test_refinement_rows_pair_before_and_after(tmp_path):
    """refine.json of the refined variant's points: after − before is paired per identity and seed
    (a known +0.3 dB on novel views, −0.2 dB on unseen expressions), and becomes a claim row."""
    study = spec.Study(name="fake", variants=(("a", ()), ("b", ())), seeds=(0, 1), steps=7, refine_variants=("a",))
    rng = np.random.default_rng(1)
    marginal, azimuth = np.zeros((8, 2), bool), rng.uniform(-180, 180, (8, 2))
    for seed in (0, 1):
        for v in ("a", "b"):
            score = rng.normal(18.0, 2.0, (8, 2))
            _fake_point(tmp_path / f"{v}_seed{seed}", 7, score, score - 1.0, marginal, azimuth)
        before = rng.normal(18.0, 2.0, (5, 2))
        rows = [{"identity": k, "psnr_before": {"novel_views": b[0], "unseen_expressions": b[1]},
                 "psnr_after": {"novel_views": b[0] + 0.3, "unseen_expressions": b[1] - 0.2}}
                for k, b in enumerate(before)]
        (tmp_path / f"a_seed{seed}" / "refine.json").write_text(json.dumps({"identities": rows}))
    ablation.write_ablation_report(study, str(tmp_path), bootstrap=100)
    results = json.loads((tmp_path / "report" / "results.json").read_text())
    novel, unseen = results["refinement"]
    assert novel["set"] == "novel_views" and novel["identities"] == 5 and novel["seeds"] == [0, 1]
    assert novel["difference"]["mean"] == pytest.approx(0.3) and novel["matches"] == "yes"
    assert unseen["difference"]["mean"] == pytest.approx(-0.2) and unseen["matches"] == "no"
    assert [c["claim"] for c in results["claims"]] == ["refinement improves novel views",
                                                       "refinement improves unseen expressions"]
    assert "## Refinement" in (tmp_path / "report" / "report.md").read_text()


def test_a_point_scored_by_an_older_evaluator_is_not_finished(tmp_path):
    study = spec.Study(name="fake", variants=(("a", ()),), steps=7)
    point = points(study)[0]
    scores = np.zeros((2, 2))
    _fake_point(tmp_path / point.name, 7, scores, scores, np.zeros((2, 2), bool), scores, evaluator=1)
    status, reason = runner.point_status(str(tmp_path), point)
    assert status == "unfinished" and "evaluator version 1" in reason


def test_refine_variants_are_validated_and_planned():
    with pytest.raises(ValueError, match="refine_variants"):
        spec.Study(variants=(("a", ()),), refine_variants=("b",))
    study = spec.Study(name="s", variants=(("a", ()), ("b", ())), refine_variants=("a",), refine_identities=3,
                       overrides=(("eval.num_identities", 8),))
    a, b = points(study)
    assert " && flexavatar-jax refine " in spec.train_command(study, a, "/r")
    assert "refine" not in spec.train_command(study, b, "/r")
    argv = spec.refine_argv(study, a, "/r")
    assert argv[0] == "refine" and "--config.eval.num_identities=3" in argv
    assert "--config.eval.num_identities=8" not in argv and "--workdir=/r/a_seed0" in argv


def test_archive_then_restore_on_another_root_reports_the_same(tmp_path):
    """Complete points travel without checkpoints; a finished point whose variant refines but has
    no refine.json yet, an unfinished point and an existing workdir are not copied; the restored
    root's points are finished and its report equals the original's."""
    study = spec.Study(name="fake", variants=(("a", ()), ("b", (("model.unet.enabled", False),))), seeds=(0, 1),
                       steps=7, refine_variants=("a",),
                       claims=(("a beats b", "a:self/4_views/all/psnr", "b:self/4_views/all/psnr", "+", "x"),))
    root, elsewhere, store = tmp_path / "root", tmp_path / "elsewhere", tmp_path / "archive"
    rng = np.random.default_rng(2)
    marginal, azimuth = np.zeros((6, 2), bool), rng.uniform(-180, 180, (6, 2))
    for name in ("a_seed0", "a_seed1", "b_seed0"):
        score = rng.normal(18.0, 2.0, (6, 2))
        _fake_point(root / name, 7, score, score - 1.0, marginal, azimuth)
        (root / name / "checkpoints" / "7").mkdir(parents=True)
    rows = [{"identity": 0, "psnr_before": {"novel_views": 18.0, "unseen_expressions": 19.0},
             "psnr_after": {"novel_views": 18.5, "unseen_expressions": 19.2}}]
    (root / "a_seed0" / "refine.json").write_text(json.dumps({"identities": rows}))
    (root / "b_seed1").mkdir()  # started, not finished

    done = archive.archive(study, str(root), str(store))
    assert done["a_seed0"] == done["b_seed0"] == "archived"
    assert "not refined" in done["a_seed1"] and done["b_seed1"].startswith("unfinished")
    assert sorted(p.name for p in store.iterdir()) == ["a_seed0", "b_seed0"]
    assert sorted(f.name for f in (store / "a_seed0").iterdir()) == [
        "eval.json.gz", "eval_gain.json", "metrics.jsonl", "refine.json"]  # no checkpoints
    again = tmp_path / "again"
    archive.archive(study, str(root), str(again))
    assert (again / "a_seed0" / "eval.json.gz").read_bytes() == (store / "a_seed0" / "eval.json.gz").read_bytes()

    (elsewhere / "b_seed0").mkdir(parents=True)  # this machine's own (unfinished) copy is kept
    done = archive.restore(study, str(store), str(elsewhere))
    assert done["a_seed0"] == "restored" and done["b_seed0"].startswith("left alone")
    assert done["a_seed1"] == done["b_seed1"] == "not in the archive"
    a0 = points(study)[0]
    assert runner.point_status(str(elsewhere), a0)[0] == "finished"
    assert (elsewhere / "a_seed0" / "eval.json").read_bytes() == (root / "a_seed0" / "eval.json").read_bytes()

    # The same complete points in both roots: identical reports.
    (elsewhere / "b_seed0").rmdir()
    archive.restore(study, str(store), str(elsewhere))
    for name in ("a_seed1", "b_seed1"):
        shutil.rmtree(root / name)
    for r in (root, elsewhere):
        ablation.write_ablation_report(study, str(r), bootstrap=100)
    strip = lambda r: {k: v for k, v in json.loads((r / "report" / "results.json").read_text()).items()  # noqa: E731
                       if k not in ("root", "points")}
    assert strip(root) == strip(elsewhere)

    with pytest.raises(FileNotFoundError, match="no study archive"):
        archive.restore(study, str(tmp_path / "nowhere"), str(elsewhere))
    (store / "c_seed0").mkdir()
    with pytest.raises(ValueError, match=r"does not have: \['c_seed0'\]"):
        archive.restore(study, str(store), str(tmp_path / "third"))


def test_archive_and_restore_need_the_archive_flag(tmp_path, capsys):
    for action in ("archive", "restore"):
        assert cli.main(["flexavatar-jax", "sweep", action, f"--study={SMOKE}", f"--root={tmp_path}"]) == 2
        assert "needs --archive" in capsys.readouterr().err
