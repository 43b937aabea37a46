"""The `flexavatar-jax` entry point runs its commands end to end."""

import json
import pathlib
import re
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


def test_unknown_command_fails_naming_the_commands(tmp_path):
    res = subprocess.run([sys.executable, "-m", "flexavatar_jax.cli", "nonsense"], capture_output=True, text=True)
    assert res.returncode == 2 and "'nonsense'" in res.stderr and "reconstruct" in res.stderr


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
    assert res.returncode == 2, res.stderr[-2000:]
    assert res.stderr.strip().splitlines() == ["flexavatar-jax train: error: this command needs --workdir"]


def _help(capsys, command: str) -> str:
    from flexavatar_jax import cli

    assert cli.main(["flexavatar-jax", command, "--help"]) == 0
    return capsys.readouterr().out


def _flag_names(help_text: str) -> set[str]:
    return set(re.findall(r"^\s+--(?:\[no\])?([a-z_]+)", help_text, flags=re.M))


def test_every_command_help_lists_only_its_own_flags(capsys):
    from flexavatar_jax import cli

    expected = {
        "preview-head": {"out", "head", "uv_obj", "flame_masks", "seed", "size", "uv_resolution"},
        "head-info": {"head", "uv_obj", "flame_masks", "uv_resolution"},
        "make-dataset": {"config", "out", "overwrite"},
        "preview-data": {"config", "out"},
        "summary": {"config", "print_param_paths"},
        "train": {"config", "workdir", "coordinator", "num_processes", "process_id"},
        "eval": {"config", "workdir"},
        "refine": {"config", "workdir"},
        "reconstruct": {"config", "workdir", "images", "identity", "raw", "out"},
        "prepare": {"images", "size", "background", "matte", "out"},
        "animate": {"config", "workdir", "avatar", "motion", "driver_identity", "video", "side_by_side", "frames", "fps",
                    "out"},
        "track": {"video", "fov_deg", "frames", "identity_frames", "smooth", "landmarks", "head", "uv_obj", "flame_masks",
                  "out"},
        "export": {"config", "workdir", "avatar", "out"},
        "sweep": {"study", "root", "max_points", "bootstrap", "archive"},
    }
    assert set(expected) == set(cli.COMMANDS)
    for command, names in expected.items():
        assert _flag_names(_help(capsys, command)) == names, command


def test_help_defaults_fit_the_command(capsys):
    assert "(default: 'out/preview_head')" in _help(capsys, "preview-head")
    for command in ("reconstruct", "animate", "export", "make-dataset"):
        text = _help(capsys, command)
        assert "out/preview_head" not in text, command
    assert "(default: '25')" in _help(capsys, "animate")
    assert "configs/synthetic_data.py" in _help(capsys, "make-dataset")


def test_usage_errors_exit_2_with_one_line(capsys):
    from flexavatar_jax import cli

    assert cli.main(["flexavatar-jax", "reconstruct", "--config=configs/flexavatar.py:tiny", "--workdir=x"]) == 2
    assert capsys.readouterr().err.strip() == "flexavatar-jax reconstruct: error: this command needs --out"
    assert cli.main(["flexavatar-jax", "train", "--bogus=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("flexavatar-jax train: error:") and "bogus" in err[0]
    assert cli.main(["flexavatar-jax", "summary", "--config=configs/flexavatar.py:tiny",
                     "--config.model.no_such_field=1"]) == 2
    assert "no_such_field" in capsys.readouterr().err
    assert cli.main(["flexavatar-jax", "train", "--config=configs/flexavatar.py:tiny", "--workdir=x", "extra"]) == 2
    assert "unexpected arguments ['extra']" in capsys.readouterr().err


_NO_TRAINING = """
import json
import logging
import sys

import jax

compiled = []


class Compiles(logging.Handler):
    def emit(self, record):
        message = record.getMessage()
        if message.startswith("Compiling "):
            compiled.append(message.split()[1])


logging.getLogger("jax").addHandler(Compiles())
jax.config.update("jax_log_compiles", True)
from flexavatar_jax import cli

codes = [cli.main(["flexavatar-jax", *args.split()]) for args in sys.argv[1:]]
train = sorted(m for m in sys.modules if m.startswith("flexavatar_jax.train"))
print("RESULT " + json.dumps(dict(codes=codes, train=train, optax="optax" in sys.modules, compiled=compiled)))
"""


def test_avatar_commands_load_params_only_and_build_no_trainer(tmp_path):
    """reconstruct / animate / export read a checkpoint without importing the training package,
    without optax, and without compiling a train step."""
    import jax
    import numpy as np

    from flexavatar_jax.config import Config
    from flexavatar_jax.configs import flexavatar
    from flexavatar_jax.train import checkpoint as ckpt_lib
    from flexavatar_jax.train.loop import Trainer

    workdir = tmp_path / "run"
    config = Config.from_dict(flexavatar.get_config("tiny"))
    trainer = Trainer(config, str(workdir), devices=jax.devices()[:1])
    state = trainer.init_state()
    # A recognisable state: params shifted, optimizer moments non-zero (they must not be read back).
    state = state.replace(params=jax.tree.map(lambda x: x + 0.001, state.params))
    checkpoints = ckpt_lib.Checkpointer(str(workdir / "checkpoints"), async_save=False)
    checkpoints.save(7, state, None, config.to_dict(), force=True)
    checkpoints.close()
    w = f"--config=configs/flexavatar.py:tiny --workdir={workdir}"
    avatar, ply, gif = tmp_path / "a.npz", tmp_path / "a.ply", tmp_path / "a.gif"
    res = subprocess.run([sys.executable, "-c", _NO_TRAINING, f"reconstruct {w} --identity=1000000 --out={avatar}",
                          f"export {w} --avatar={avatar} --out={ply}",
                          f"animate {w} --avatar={avatar} --driver_identity=1000001 --frames=2 --out={gif}"],
                         capture_output=True, text=True, timeout=900, cwd=pathlib.Path(__file__).parents[1])
    assert res.returncode == 0, res.stderr[-3000:]
    line = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    result = json.loads(line[len("RESULT "):])
    assert result["codes"] == [0, 0, 0]
    assert result["train"] == [] and not result["optax"]
    # What was compiled: the model's programs, never a train step or an optimizer update.
    assert any("reconstruct" in name for name in result["compiled"]), result["compiled"]
    assert not any("train_step" in name or "update" in name for name in result["compiled"]), result["compiled"]
    assert avatar.is_file() and ply.is_file() and gif.is_file()
    with np.load(avatar) as f:
        assert f["raw_maps"].shape == (64, 64, 14)



def test_commands_keep_compiled_programs_on_disk(tmp_path, monkeypatch):
    import jax

    from flexavatar_jax import cli

    before = jax.config.jax_compilation_cache_dir
    monkeypatch.setenv("FLEXAVATAR_CACHE", str(tmp_path))
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    try:
        monkeypatch.setenv("FLEXAVATAR_XLA_CACHE", "0")
        cli._persistent_compilation_cache()
        assert jax.config.jax_compilation_cache_dir == before  # switched off: untouched
        monkeypatch.setenv("FLEXAVATAR_XLA_CACHE", "1")
        cli._persistent_compilation_cache()
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "xla")
    finally:
        jax.config.update("jax_compilation_cache_dir", before)
