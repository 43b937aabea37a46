"""The CLI answers bad input as a user sees it: each case runs `python -m flexavatar_jax.cli` as a
subprocess and must exit non-zero (2 for usage errors, 1 for bad files and values) with exactly
one error line on stderr, `flexavatar-jax COMMAND: error: ...`, naming the file or value, and no
traceback; `--verbose` keeps the traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from flexavatar_jax.inference.avatars import AVATAR_ARRAYS, AVATAR_FORMAT, AVATAR_VERSION

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = f"--config={ROOT}/configs/flexavatar.py:tiny"


def cli(*args: str, cwd) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    return subprocess.run([sys.executable, "-m", "flexavatar_jax.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad_input")
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((64, 64, 3)) * 255).astype(np.uint8)).save(d / "good.png")
    data = (d / "good.png").read_bytes()
    (d / "truncated.png").write_bytes(data[: len(data) // 2])
    (d / "notimage.png").write_text("hello, not an image")
    Image.fromarray(np.full((64, 64), np.nan, np.float32), mode="F").save(d / "nan.tiff")
    (d / "empty.npz").write_bytes(b"")
    (d / "garbage.npz").write_bytes(rng.bytes(300))
    np.savez(d / "motion_nan.npz", expression=np.full((3, 10), np.nan, np.float32),
             pose=np.zeros((3, 15), np.float32), translation=np.zeros((3, 3), np.float32))
    # A well-formed avatar file whose arrays hold a NaN (the writer refuses those; a file can still have them).
    meta = dict(format=AVATAR_FORMAT, version=AVATAR_VERSION, uv_resolution=4, id_channels=2, num_shape=3, model={})
    arrays = {AVATAR_ARRAYS["raw_maps"]: np.zeros((4, 4, 14), np.float32),
              AVATAR_ARRAYS["identity_features"]: np.zeros((4, 4, 2), np.float32),
              AVATAR_ARRAYS["shape_coeffs"]: np.array([0.0, np.nan, 0.0], np.float32)}
    np.savez(d / "avatar_nan.npz", metadata=np.asarray(json.dumps(meta)), **arrays)
    (d / "flame_param").mkdir()
    (d / "flame_param" / "00000.npz").write_bytes(b"PK\x03\x04 broken zip")
    (d / "empty_workdir").mkdir()
    return d


CASES = {
    # name: (argv, expected exit code, text the error line must contain)
    "unknown variant": (["summary", f"--config={ROOT}/configs/flexavatar.py:huge"], 2, "'huge'"),
    "unknown override": (["summary", TINY, "--config.model.no_such_field=1"], 2, "no_such_field"),
    "missing flag": (["reconstruct", TINY, "--images=good.png"], 2, "--out"),
    "unknown command": (["fly"], 2, "'fly'"),
    "missing image": (["reconstruct", TINY, "--images=missing.png", "--out=a.npz", "--workdir=empty_workdir"], 1,
                      "missing.png"),
    "truncated image": (["reconstruct", TINY, "--images=truncated.png", "--out=a.npz", "--workdir=empty_workdir"], 1,
                        "truncated.png"),
    "not an image": (["reconstruct", TINY, "--images=notimage.png", "--out=a.npz", "--workdir=empty_workdir"], 1,
                     "notimage.png"),
    "NaN image": (["reconstruct", TINY, "--images=nan.tiff", "--out=a.npz", "--workdir=empty_workdir"], 1, "nan.tiff"),
    "too many images": (["reconstruct", TINY, "--images=good.png,good.png,good.png,good.png,good.png", "--out=a.npz",
                         "--workdir=empty_workdir"], 1, "between 1 and 4"),
    "no checkpoint": (["reconstruct", TINY, "--images=good.png", "--out=a.npz", "--workdir=empty_workdir"], 1,
                      "empty_workdir"),
    "missing avatar": (["animate", TINY, "--avatar=missing.npz", "--driver_identity=0", "--out=a.gif",
                        "--workdir=empty_workdir"], 1, "missing.npz"),
    "empty avatar": (["export", TINY, "--avatar=empty.npz", "--out=a.ply", "--workdir=empty_workdir"], 1, "empty.npz"),
    "garbage avatar": (["export", TINY, "--avatar=garbage.npz", "--out=a.ply", "--workdir=empty_workdir"], 1,
                       "garbage.npz"),
    "NaN avatar": (["export", TINY, "--avatar=avatar_nan.npz", "--out=a.ply", "--workdir=empty_workdir"], 1,
                   "non-finite"),
    "bad video suffix": (["animate", TINY, "--avatar=avatar_nan.npz", "--driver_identity=0", "--out=a.avi",
                          "--workdir=empty_workdir"], 1, "a.avi"),
    "missing study": (["sweep", "plan", "--study=nowhere.py:tiny", "--root=r"], 1, "nowhere.py"),
    "multi-host flags incomplete": (["train", TINY, "--workdir=w", "--coordinator=localhost:1", "--process_id=0"], 2,
                                    "--num_processes"),
    "multi-host process id": (["train", TINY, "--workdir=w", "--coordinator=localhost:1", "--num_processes=2",
                               "--process_id=2"], 2, "--process_id=2"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_gets_one_error_line(files, name):
    argv, code, needle = CASES[name]
    result = cli(*argv, cwd=files)
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert result.returncode == code, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    prefix = "flexavatar-jax: error: " if name == "unknown command" else f"flexavatar-jax {argv[0]}: error: "
    assert len(errors) == 1 and errors[0].startswith(prefix), result.stderr[-2000:]
    assert needle in errors[0], errors[0]


def test_motion_files_are_named_when_corrupt_or_non_finite(files, tmp_path):
    """Motion files are read before anything else of `animate` needs a checkpoint or an avatar."""
    from flexavatar_jax.data import driving

    with pytest.raises(ValueError, match="motion_nan.npz.*non-finite"):
        driving.load_motion(files / "motion_nan.npz", 10)
    with pytest.raises(ValueError, match="garbage.npz"):
        driving.load_motion(files / "garbage.npz", 10)
    with pytest.raises(ValueError, match="00000.npz"):
        driving.load_motion(files / "flame_param", 10)


def test_verbose_keeps_the_traceback(files):
    result = cli("export", TINY, "--avatar=empty.npz", "--out=a.ply", "--workdir=empty_workdir", "--verbose", cwd=files)
    assert result.returncode != 0 and "Traceback" in result.stderr and "empty.npz" in result.stderr


def test_one_line_reduces_embedded_tracebacks():
    from flexavatar_jax.cli import one_line

    embedded = ValueError("flag --config=x.py:huge: Error whilst parsing config file:\n\nTraceback (most recent call "
                          "last):\n  File \"x.py\", line 3\nValueError: unknown variant 'huge'\n")
    assert one_line(embedded) == "flag --config=x.py:huge: Error whilst parsing config file: ValueError: unknown variant 'huge'"
    assert one_line(FileNotFoundError(2, "No such file or directory", "a/b.npz")) == \
        "[Errno 2] No such file or directory: 'a/b.npz'"
    assert one_line(OSError(28, "No space left on device", "out/x.ckpt")) == "[Errno 28] No space left on device: 'out/x.ckpt'"
    assert one_line(OSError("disk full")) == "disk full"
