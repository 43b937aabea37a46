"""`flexavatar-jax` command line: thin absl entry point, one command = one library call.

    flexavatar-jax preview-head --out DIR [--head procedural|PATH] [--uv_obj OBJ] [--seed N]
    flexavatar-jax head-info [--head ...]
    flexavatar-jax make-dataset --config configs/synthetic_data.py:tiny --out DIR
    flexavatar-jax preview-data --config configs/synthetic_data.py:tiny --out DIR
    flexavatar-jax summary --config configs/flexavatar.py:base
    flexavatar-jax train --config configs/flexavatar.py:tiny --workdir out/tiny   (re-run to resume)
        [--coordinator HOST:PORT --num_processes N --process_id I]   (multi-host: one per process)
    flexavatar-jax eval --config configs/flexavatar.py:tiny --workdir out/tiny
    flexavatar-jax refine --config configs/flexavatar.py:tiny --workdir out/tiny
    flexavatar-jax prepare --images a.jpg,b.jpg --out DIR [--size 512]   (face crop + matte; needs .[faces])
    flexavatar-jax reconstruct --config ... --workdir out/tiny (--images a.png,b.png | --identity 1000000) --out me.npz
        [--raw]             (photos are prepared like `prepare` unless --raw)
    flexavatar-jax track --video talk.mp4 --out talk_motion.npz [--fov_deg 32]   (face tracker; needs .[faces])
    flexavatar-jax animate --config ... --workdir out/tiny --avatar me.npz (--motion m.npz | --driver_identity 1000001
        | --video talk.mp4) --out me.gif   (also writes me_turntable.gif; --video: tracks the video first, writes
        me_motion.npz and puts the driving video beside the avatar)
    flexavatar-jax export --config ... --workdir out/tiny --avatar me.npz --out me.ply
    flexavatar-jax sweep plan|run|report --study configs/studies/identity_scaling.py:tiny --root out/study
    flexavatar-jax sweep archive|restore --study ... --root out/study --archive DIR   (points without checkpoints)

Every command has its own flags (`flexavatar-jax COMMAND --help` lists them); a config given as
`--config FILE:VARIANT` takes `--config.a.b=value` overrides and is converted once, here, into the
typed `flexavatar_jax.config` form the library takes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import sys
from collections.abc import Callable

from absl import flags, logging
from ml_collections import config_flags

PROG = "flexavatar-jax"


class UsageError(Exception):
    """A wrong or missing flag: one line on stderr, exit code 2."""


@dataclasses.dataclass(frozen=True)
class Command:
    summary: str
    define: Callable[[flags.FlagValues, list[str]], None]  # (its FlagValues, argv) -> defines its flags
    run: Callable[..., None]  # run(flags) or, with `actions`, run(flags, action)
    actions: tuple[str, ...] = ()  # a command with actions takes exactly one of them as its argument


# ---------------------------------------------------------------------------------------------- flag groups
def _config_flag(example: str) -> Callable[[flags.FlagValues, list[str]], None]:
    def define(fv: flags.FlagValues, argv: list[str]) -> None:
        # sys_argv: the `--config.a.b=value` override flags are created from the command line.
        config_flags.DEFINE_config_file("config", None, f"Config file and variant, e.g. {example} "
                                        "(override fields with --config.a.b=value).", flag_values=fv, sys_argv=argv)
    return define


def _workdir(fv: flags.FlagValues, argv: list[str]) -> None:
    flags.DEFINE_string("workdir", None, "The training run's directory (checkpoints, metrics, images, evaluation).",
                        flag_values=fv)


def _head(fv: flags.FlagValues, argv: list[str]) -> None:
    flags.DEFINE_string("head", "procedural", "'procedural' (the built-in head) or a FLAME .pkl/.npz path "
                        "(the same values as a run config's `head` field).", flag_values=fv)
    flags.DEFINE_string("uv_obj", None, "FLAME UV layout (head_template_mesh.obj) for a raw FLAME pickle.",
                        flag_values=fv)
    flags.DEFINE_string("flame_masks", None, "Optional FLAME_masks.pkl for named regions.", flag_values=fv)


def _out(default: str | None, help_string: str) -> Callable[[flags.FlagValues, list[str]], None]:
    def define(fv: flags.FlagValues, argv: list[str]) -> None:
        flags.DEFINE_string("out", default, help_string, flag_values=fv)
    return define


def _flags(*groups: Callable[[flags.FlagValues, list[str]], None]) -> Callable[[flags.FlagValues, list[str]], None]:
    def define(fv: flags.FlagValues, argv: list[str]) -> None:
        for group in groups:
            group(fv, argv)
    return define


def _required(fv: flags.FlagValues, name: str):
    value = fv[name].value
    if value is None:
        raise UsageError(f"this command needs --{name}")
    return value


def _run_config(fv: flags.FlagValues):
    """The typed run config of --config (configs/flexavatar.py)."""
    from flexavatar_jax.config import Config

    return Config.from_dict(_required(fv, "config"))


# ---------------------------------------------------------------------------------------------- head commands
def _load_head(fv: flags.FlagValues):
    """(head model from --head/--uv_obj/--flame_masks, expression names of the procedural head or None)."""
    from flexavatar_jax.head import load_head, procedural

    model = load_head(fv.head, fv.uv_obj, fv.flame_masks)
    if fv.head in ("", "procedural"):
        return model, list(procedural.load_procedural_arrays()["expression_names"])
    return model, None


def head_info(model, uv_resolution: int, load_seconds: float) -> dict:
    from flexavatar_jax.head import uv

    table = uv.texel_table(model, uv_resolution)
    return {
        "name": model.name, "vertices": model.num_vertices, "faces": model.num_faces,
        "shape_components": model.num_shape, "expression_components": model.num_expression,
        "pose_features": int(model.posedirs.shape[-1]), "joints": list(model.joint_names),
        f"uv_coverage_{uv_resolution}": round(table.coverage, 4),
        "uv_overlapping_texels": table.num_overlapping, "load_seconds": round(load_seconds, 3),
        "regions": {r: int(model.vertex_mask(r).sum()) for r in model.region_names},
    }


def _timed_head(fv: flags.FlagValues):
    import time

    t0 = time.perf_counter()
    model, names = _load_head(fv)
    return model, names, time.perf_counter() - t0


def _uv_resolution(fv: flags.FlagValues, argv: list[str]) -> None:
    flags.DEFINE_integer("uv_resolution", 256, "UV resolution of the coverage statistics.", flag_values=fv)


def _preview_head_flags(fv: flags.FlagValues, argv: list[str]) -> None:
    flags.DEFINE_integer("seed", 0, "Random seed of the preview shapes and expressions.", flag_values=fv)
    flags.DEFINE_integer("size", 256, "Preview image size in pixels.", flag_values=fv)


def run_preview_head(fv: flags.FlagValues) -> None:
    from flexavatar_jax.preview import preview_head

    model, names, seconds = _timed_head(fv)
    paths = preview_head(model, fv.out, seed=fv.seed, size=fv.size, expression_names=names)
    info = head_info(model, fv.uv_resolution, seconds)
    (pathlib.Path(fv.out) / "head_info.json").write_text(json.dumps(info, indent=2))
    print(json.dumps(info, indent=2))
    print("preview images: " + ", ".join(str(p) for p in paths))


def run_head_info(fv: flags.FlagValues) -> None:
    model, _, seconds = _timed_head(fv)
    print(json.dumps(head_info(model, fv.uv_resolution, seconds), indent=2))


# ---------------------------------------------------------------------------------------------- data commands
def _dataset_config(fv: flags.FlagValues):
    from flexavatar_jax.config import DatasetConfig

    return DatasetConfig.from_dict(_required(fv, "config"))


def _overwrite(fv: flags.FlagValues, argv: list[str]) -> None:
    flags.DEFINE_bool("overwrite", False, "Overwrite existing identity folders.", flag_values=fv)


def run_make_dataset(fv: flags.FlagValues) -> None:
    from flexavatar_jax.data import locks
    from flexavatar_jax.data.make_dataset import make_dataset
    from flexavatar_jax.files import write_atomic
    from flexavatar_jax.data.synthetic import SyntheticWorld

    cfg, out = _dataset_config(fv), pathlib.Path(_required(fv, "out"))
    with locks.directory_lock(out, "make-dataset"):
        recorded = out / "config.json"
        text = json.dumps(cfg.to_dict(), indent=2)
        if recorded.exists() and not fv.overwrite and recorded.read_text() != text:
            raise ValueError(f"{out} holds a dataset made with another config ({recorded}); its identity folders "
                             "would be kept as they are: use --overwrite, or another --out")
        write_atomic(recorded, text)
        paths = make_dataset(SyntheticWorld(cfg.synthetic), out, cfg.num_identities, cfg.split,
                             cfg.cameras_per_frame, cfg.frame_stride, cfg.val_fraction, overwrite=fv.overwrite)
    print(f"wrote {len(paths)} identity sequences under {out}")


def run_preview_data(fv: flags.FlagValues) -> None:
    from flexavatar_jax.data.synthetic import SyntheticWorld
    from flexavatar_jax.preview import preview_data

    cfg, out = _dataset_config(fv), pathlib.Path(_required(fv, "out"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    print(f"wrote {preview_data(SyntheticWorld(cfg.synthetic), out)}")


# ---------------------------------------------------------------------------------------------- model / run commands
def _summary_flags(fv: flags.FlagValues, argv: list[str]) -> None:
    flags.DEFINE_bool("print_param_paths", False, "Also list every parameter path and shape.", flag_values=fv)


def summary(config, print_param_paths: bool = False) -> str:
    """Parameter counts per module (from shapes only: nothing is allocated) and Gaussians per avatar."""
    import flax.linen as nn
    import jax
    from flax import traverse_util

    from flexavatar_jax.inference import make_system
    from flexavatar_jax.models.avatar import parameter_counts

    system = make_system(config.model, config.head)
    abstract = nn.meta.unbox(jax.eval_shape(system.init, jax.random.key(0)))
    counts = parameter_counts(abstract)
    m = config.model
    lines = [f"config {config.variant}: lifter {m.lifter_type}, inputs {m.image_size}² (patch {m.encoder.patch_size}), "
             f"UV grid G={m.grid}, attribute maps K={m.uv_resolution}, UNet {'on' if m.unet.enabled else 'off'} "
             f"(driving: {m.driving})",
             f"Gaussians per avatar: {system.num_gaussians:,}"]
    lines += [f"  {k:<12} {v:>14,}" for k, v in counts.items()]
    if print_param_paths:
        flat = traverse_util.flatten_dict(abstract, sep="/")
        lines += [f"    {k} {tuple(v.shape)}" for k, v in sorted(flat.items())]
    return "\n".join(lines)


def run_summary(fv: flags.FlagValues) -> None:
    print(summary(_run_config(fv), fv.print_param_paths))


def _distributed_flags(fv: flags.FlagValues, argv: list[str]) -> None:
    flags.DEFINE_string("coordinator", None, "Multi-host: host:port of process 0's coordinator service (the same on "
                        "every process); with --num_processes and --process_id. Without them, "
                        "--config.train.distributed=True detects a cluster (SLURM, Open MPI, Cloud TPU, ...).",
                        flag_values=fv)
    flags.DEFINE_integer("num_processes", None, "Multi-host: the number of processes.", flag_values=fv)
    flags.DEFINE_integer("process_id", None, "Multi-host: this process's index, 0 .. num_processes-1.", flag_values=fv)


def _initialize_distributed(fv: flags.FlagValues) -> None:
    """`jax.distributed.initialize` from --coordinator/--num_processes/--process_id (all or none),
    before anything touches a JAX backend."""
    given = {n: fv[n].value for n in ("coordinator", "num_processes", "process_id")}
    if all(v is None for v in given.values()):
        return
    missing = [f"--{n}" for n, v in given.items() if v is None]
    if missing:
        raise UsageError(f"a multi-host run needs --coordinator, --num_processes and --process_id; "
                         f"missing {', '.join(missing)}")
    if given["num_processes"] < 1 or not 0 <= given["process_id"] < given["num_processes"]:
        raise UsageError(f"--process_id={given['process_id']} is not in 0..{given['num_processes'] - 1} "
                         f"(--num_processes={given['num_processes']})")
    from flexavatar_jax.train.loop import initialize_distributed

    initialize_distributed(given["coordinator"], given["num_processes"], given["process_id"])


def run_train(fv: flags.FlagValues) -> None:
    from flexavatar_jax.train.reports import train_and_evaluate

    config, workdir = _run_config(fv), _required(fv, "workdir")
    _initialize_distributed(fv)
    train_and_evaluate(config, workdir)


def run_eval(fv: flags.FlagValues) -> None:
    from flexavatar_jax.train.reports import evaluate_workdir

    evaluate_workdir(_run_config(fv), _required(fv, "workdir"))


def run_refine(fv: flags.FlagValues) -> None:
    from flexavatar_jax.train.refine import refine_workdir

    refine_workdir(_run_config(fv), _required(fv, "workdir"))


# ---------------------------------------------------------------------------------------------- avatar commands
def _reconstruct_flags(fv: flags.FlagValues, argv: list[str]) -> None:
    flags.DEFINE_list("images", None, "1-4 portrait image files (comma-separated).", flag_values=fv)
    flags.DEFINE_integer("identity", None, "A synthetic identity id (held-out ids start at 1000000).", flag_values=fv)
    flags.DEFINE_bool("raw", False, "Use the --images as they are (square model inputs), without `prepare`'s face "
                      "crop and background matte.", flag_values=fv)


def _prepare_flags(fv: flags.FlagValues, argv: list[str]) -> None:
    flags.DEFINE_list("images", None, "Portrait photos (comma-separated), one face each.", flag_values=fv)
    flags.DEFINE_integer("size", 512, "Output side in pixels (the model's image_size).", flag_values=fv)
    flags.DEFINE_string("background", "white", "Background colour: white, black or R,G,B in [0,1].", flag_values=fv)
    flags.DEFINE_bool("matte", True, "Replace the photo's background (GrabCut, or the file's own alpha channel).",
                      flag_values=fv)


def _background(text: str) -> tuple[float, float, float]:
    named = {"white": (1.0, 1.0, 1.0), "black": (0.0, 0.0, 0.0)}
    if text in named:
        return named[text]
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or not all(0.0 <= v <= 1.0 for v in values):
        raise UsageError(f"--background must be white, black or R,G,B with values in [0,1], got {text!r}")
    return values


def _faces_extra() -> None:
    """A missing optional `faces` extra is a one-line error naming the install command."""
    from flexavatar_jax.data import portrait

    try:
        portrait.require_faces_extra()
    except ImportError as e:
        raise UsageError(str(e)) from None


def run_prepare(fv: flags.FlagValues) -> None:
    from flexavatar_jax.data import portrait

    images, out = _required(fv, "images"), _required(fv, "out")
    background = _background(fv.background)
    _faces_extra()
    for r in portrait.prepare_files(images, out, size=fv.size, background=background, matte=fv.matte):
        box = ", ".join(f"{v:.0f}" for v in r.face_box)
        print(f"{r.source} -> {r.output}: face ({box}) {r.detector} score {r.face_score:.2f}, crop side "
              f"{r.crop_side:.0f} px rotated {r.roll_deg:+.1f} deg, scale {r.scale:.2f}, matte {r.matte} "
              f"{r.mask_coverage:.0%}" + "".join(f"; note: {n}" for n in r.notes))
    print(f"wrote {out}/{portrait.REPORT_NAME}")


def _avatar_flag(fv: flags.FlagValues, argv: list[str]) -> None:
    flags.DEFINE_string("avatar", None, "An avatar .npz written by `reconstruct`.", flag_values=fv)


def _animate_flags(fv: flags.FlagValues, argv: list[str]) -> None:
    flags.DEFINE_string("motion", None, ".npz with expression [T,E], pose [T,15], translation [T,3], a VHAP "
                        "tracked-parameter .npz or a VHAP flame_param/ folder.", flag_values=fv)
    flags.DEFINE_integer("driver_identity", None, "Drive with this synthetic identity's first clip.", flag_values=fv)
    flags.DEFINE_integer("frames", None, "Number of frames (default: the whole motion).", flag_values=fv)
    flags.DEFINE_integer("fps", 25, "Frames per second of the video (with --video: the video's own).", flag_values=fv)
    flags.DEFINE_string("video", None, "Drive with a video of a face: tracked first (like `track`), the output shows "
                        "it beside the avatar.", flag_values=fv)
    flags.DEFINE_bool("side_by_side", True, "With --video: driving video | avatar in one video.", flag_values=fv)


def _system(fv: flags.FlagValues):
    """(config, system) of --config: the static model (no parameters yet), so inputs are checked
    before a checkpoint is read."""
    from flexavatar_jax import inference

    config = _run_config(fv)
    return config, inference.make_system(config.model, config.head)


def _trained_params(fv: flags.FlagValues, config, system):
    """The newest checkpoint's parameters of --workdir (EMA ones when the run kept them)."""
    from flexavatar_jax import inference

    workdir = _required(fv, "workdir")
    return inference.load_params(system, workdir, ema=config.train.ema_decay > 0)[1]


def run_reconstruct(fv: flags.FlagValues) -> None:
    from flexavatar_jax import inference
    from flexavatar_jax.data import media
    from flexavatar_jax.data.synthetic import SyntheticWorld

    out = _required(fv, "out")
    if (fv.images is None) == (fv.identity is None):
        raise UsageError("reconstruct needs exactly one of --images or --identity")
    config, system = _system(fv)
    if fv.images is not None and fv.raw:
        media.load_portraits(fv.images, size=system.image_size)  # unreadable photos fail before the model loads
    elif fv.images is not None:
        from flexavatar_jax.data import portrait

        _faces_extra()
        portrait.read_portrait_files(fv.images)  # as above; the faces are found once the checkpoint is read
    params = _trained_params(fv, config, system)
    if fv.images is not None:
        avatar = inference.reconstruct_from_images(system, params, fv.images, prepare=not fv.raw)
        source = ",".join(fv.images)
    else:
        world = SyntheticWorld(config.data.synthetic, system.head)
        avatar, _ = inference.reconstruct_from_dataset(system, params, world, fv.identity, seed=config.seed)
        source = f"synthetic identity {fv.identity}"
    inference.save_avatar(out, avatar, system, source=source)
    print(f"wrote {out}")


def run_animate(fv: flags.FlagValues) -> None:
    from flexavatar_jax import inference
    from flexavatar_jax.data import driving, media
    from flexavatar_jax.data.synthetic import SyntheticWorld

    out, avatar_path = _required(fv, "out"), _required(fv, "avatar")
    if sum(v is not None for v in (fv.motion, fv.driver_identity, fv.video)) != 1:
        raise UsageError("animate needs exactly one of --motion, --driver_identity or --video")
    media.check_video_path(out)
    config, system = _system(fv)
    avatar, _ = inference.load_avatar(avatar_path, system)
    stem, _ = os.path.splitext(out)
    if fv.video is not None:
        from flexavatar_jax.data import tracking

        driving_frames, video_fps = media.read_video(fv.video, fv.frames)  # a bad video fails before the model
    if fv.motion is not None:
        motion = driving.take_frames(driving.load_motion(fv.motion, system.head.num_expression), fv.frames)
    params = _trained_params(fv, config, system)
    if fv.driver_identity is not None:
        world = SyntheticWorld(config.data.synthetic, system.head)
        motion = driving.driving_sequence(world, fv.driver_identity, fv.frames)
    if fv.video is not None:
        motion = tracking.track_video(driving_frames, f"{stem}_motion.npz", fps=video_fps, model=system.head).motion
    frames = inference.animate_frames(system, params, avatar, motion)
    if fv.video is not None and fv.side_by_side:
        frames = media.side_by_side(driving_frames, frames)
    media.write_video(out, frames, fps=video_fps if fv.video is not None else fv.fps)
    media.write_video(f"{stem}_turntable.gif", inference.turntable_frames(system, params, avatar), fps=12)
    print(f"wrote {out}, {stem}_turntable.gif")


def _track_flags(fv: flags.FlagValues, argv: list[str]) -> None:
    flags.DEFINE_string("video", None, "The video to track (.mp4/.mov/.avi/.mkv/.webm/.m4v need OpenCV, .gif "
                        "does not).", flag_values=fv)
    flags.DEFINE_float("fov_deg", 32.0, "The camera's vertical field of view in degrees (assumed; the default is the "
                       "synthetic front camera's).", flag_values=fv)
    flags.DEFINE_integer("frames", None, "Track only the first N frames.", flag_values=fv)
    flags.DEFINE_integer("identity_frames", 16, "Frames with a face the identity (shape) is fitted on.",
                         flag_values=fv)
    flags.DEFINE_bool("smooth", True, "One-euro smoothing of the fitted parameters.", flag_values=fv)
    flags.DEFINE_string("landmarks", None, "A landmark embedding .npz for --head (default: the procedural head's "
                        "built-in one).", flag_values=fv)


def run_track(fv: flags.FlagValues) -> None:
    import numpy as np

    from flexavatar_jax.data import landmarks, tracking

    video, out = _required(fv, "video"), _required(fv, "out")
    model, _ = _load_head(fv)
    embedding = landmarks.LandmarkEmbedding.load(fv.landmarks) if fv.landmarks else None
    result = tracking.track_video(video, out, model=model, embedding=embedding, fov_deg=fv.fov_deg,
                                  identity_frames=fv.identity_frames, smooth=fv.smooth, max_frames=fv.frames)
    print(f"wrote {out} ({result.num_frames} frames, a face in {int(result.detected.sum())}, reprojection "
          f"{float(np.nanmean(result.reprojection_px)):.2f} px RMS)")


def run_export(fv: flags.FlagValues) -> None:
    from flexavatar_jax import inference

    out, avatar_path = _required(fv, "out"), _required(fv, "avatar")
    config, system = _system(fv)
    avatar, _ = inference.load_avatar(avatar_path, system)
    params = _trained_params(fv, config, system)
    n = inference.export_avatar_ply(system, params, avatar, out)
    print(f"wrote {out} ({n:,} Gaussians)")


# ---------------------------------------------------------------------------------------------- studies
def _sweep_flags(fv: flags.FlagValues, argv: list[str]) -> None:
    flags.DEFINE_string("study", None, "Study config FILE:VARIANT, e.g. configs/studies/identity_scaling.py:tiny.",
                        flag_values=fv)
    flags.DEFINE_string("root", None, "The study's directory (one workdir per point, cache/, report/).",
                        flag_values=fv)
    flags.DEFINE_integer("max_points", None, "run: stop after training this many points.", flag_values=fv)
    flags.DEFINE_integer("bootstrap", 1000, "report: bootstrap resamples for intervals and fits.", flag_values=fv)
    flags.DEFINE_string("archive", None, "archive: where to write the finished points' result files (no "
                        "checkpoints); restore: the archive to write back into --root.", flag_values=fv)


def run_sweep(fv: flags.FlagValues, action: str) -> None:
    from flexavatar_jax.studies import ablation, archive, load_study, report, runner

    study, root = load_study(_required(fv, "study")), _required(fv, "root")
    if action == "plan":
        commands = runner.plan(study, root)
        print("\n".join(commands))
        print(f"# {len(commands)} points; wrote {root}/commands.txt and {root}/slurm_array.sh", file=sys.stderr)
    elif action == "run":
        statuses = runner.run(study, root, max_points=fv.max_points)
        counts = {s: sum(v == s for v in statuses.values()) for s in runner.STATUSES}
        print("points: " + ", ".join(f"{v} {k}" for k, v in counts.items() if v))
    elif action in ("archive", "restore"):
        where = _required(fv, "archive")
        done = archive.archive(study, root, where) if action == "archive" else archive.restore(study, where, root)
        for name, what in done.items():
            print(f"{name}: {what}")
        verb = "archived" if action == "archive" else "restored"
        print(f"# {sum(v == verb for v in done.values())} of {len(done)} points {verb}", file=sys.stderr)
    else:
        write = ablation.write_ablation_report if study.kind == "ablation" else report.write_report
        out = write(study, root, bootstrap=fv.bootstrap)
        print(f"wrote {out}")


_RUN = _flags(_config_flag("configs/flexavatar.py:tiny"), _workdir)
_DATASET = _config_flag("configs/synthetic_data.py:tiny")

COMMANDS: dict[str, Command] = {
    "preview-head": Command("Render the head model (neutral views, random shapes, expressions) and its statistics.",
                            _flags(_out("out/preview_head", "Output directory."), _head, _preview_head_flags,
                                   _uv_resolution), run_preview_head),
    "head-info": Command("Print the head model's statistics as JSON.", _flags(_head, _uv_resolution), run_head_info),
    "make-dataset": Command("Write synthetic identities as VHAP sequence folders.",
                            _flags(_DATASET, _out(None, "Output directory (one folder per identity)."), _overwrite),
                            run_make_dataset),
    "preview-data": Command("Contact sheets of the synthetic data engine.",
                            _flags(_DATASET, _out(None, "Output directory.")), run_preview_data),
    "summary": Command("Parameter counts per module and Gaussians per avatar (nothing is allocated).",
                       _flags(_config_flag("configs/flexavatar.py:base"), _summary_flags), run_summary),
    "train": Command("Train (re-run to resume), then evaluate on held-out identities.",
                     _flags(_RUN, _distributed_flags), run_train),
    "eval": Command("Held-out evaluation of the newest checkpoint against the untrained model.", _RUN, run_eval),
    "refine": Command("Per-identity refinement of held-out identities, PSNR before/after.", _RUN, run_refine),
    "prepare": Command("Model inputs from portrait photos: face crop with the training framing, matte, resize.",
                       _flags(_prepare_flags, _out(None, "Output directory (one PNG per photo, prepare.json).")),
                       run_prepare),
    "reconstruct": Command("An avatar file from 1-4 photos or a synthetic identity.",
                           _flags(_RUN, _reconstruct_flags, _out(None, "The avatar .npz to write.")),
                           run_reconstruct),
    "animate": Command("A video of an avatar driven by a motion (and a turntable GIF).",
                       _flags(_RUN, _avatar_flag, _animate_flags, _out(None, "The video to write (.gif/.mp4).")),
                       run_animate),
    "track": Command("Track a face video: per-frame head-model expression and pose (the motion .npz animate reads).",
                     _flags(_track_flags, _head, _out(None, "The motion .npz to write.")), run_track),
    "export": Command("A 3DGS .ply of an avatar (neutral expression) for splat viewers.",
                      _flags(_RUN, _avatar_flag, _out(None, "The .ply to write.")), run_export),
    "sweep": Command("A study over configs: `sweep plan|run|report|archive|restore --study FILE:VARIANT --root DIR`.",
                     _sweep_flags, run_sweep, actions=("plan", "run", "report", "archive", "restore")),
}


def _persistent_compilation_cache() -> None:
    """Keep XLA's compiled programs on disk, so a repeated command (reconstruct, animate, a resumed
    train) skips compilation: under $FLEXAVATAR_CACHE/xla (default ~/.cache/flexavatar_jax/xla),
    unless JAX_COMPILATION_CACHE_DIR names another place; FLEXAVATAR_XLA_CACHE=0 turns it off.
    A cached program is the same executable, so results do not change."""
    if os.environ.get("FLEXAVATAR_XLA_CACHE", "1").strip().lower() in ("0", "false", "no", "off"):
        return
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return  # jax reads it itself
    import jax

    from flexavatar_jax.head.procedural import cache_dir

    jax.config.update("jax_compilation_cache_dir", str(cache_dir() / "xla"))


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"usage: {PROG} COMMAND [flags] [--verbose]   ({PROG} COMMAND --help lists a command's flags; "
             "--verbose keeps the traceback of an error)", "", "commands:"]
    lines += [f"  {name:<{width}}  {cmd.summary}" for name, cmd in COMMANDS.items()]
    return "\n".join(lines)


def one_line(error: BaseException) -> str:
    """An exception as one line: a traceback some libraries embed in their message (ml_collections
    does, for an error inside a config file) is reduced to its final line."""
    text = str(error) or type(error).__name__
    if "Traceback (most recent call last)" in text:
        head, _, tail = text.partition("Traceback (most recent call last)")
        last = [line.strip() for line in tail.splitlines() if line.strip()][-1:]
        text = head.strip().rstrip(":") + (": " + last[0] if last else "")
    if isinstance(error, OSError) and error.filename and str(error.filename) not in text:
        text = f"{error.filename}: {text}"
    return " ".join(text.split())


def main(argv: list[str]) -> int:
    """Run `argv[1]` with the flags `argv[2:]`; returns the exit code: 0, 2 for a usage error (a
    wrong or missing flag, an unknown command or config variant), 1 for bad input (a missing,
    unreadable, corrupt or incompatible file, a value the library rejects) — each one line on
    stderr, `flexavatar-jax COMMAND: error: ...`. Anything else is a bug and keeps its traceback,
    as does every error with `--verbose`."""
    if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
        print(usage())
        return 0 if len(argv) >= 2 else 2
    name, rest = argv[1], argv[2:]
    verbose = "--verbose" in rest
    rest = [a for a in rest if a != "--verbose"]
    if name not in COMMANDS:
        print(f"{PROG}: error: unknown command {name!r}; the commands are {', '.join(COMMANDS)} "
              f"({PROG} --help describes them)", file=sys.stderr)
        return 2
    command = COMMANDS[name]
    fv = flags.FlagValues()
    command.define(fv, [f"{PROG} {name}", *rest])
    if any(a in ("-h", "--help", "-help", "--helpfull") for a in rest):
        action = f" {'|'.join(command.actions)}" if command.actions else ""
        print(f"usage: {PROG} {name}{action} [flags]\n\n{command.summary}\n")
        print(fv.get_help(include_special_flags=False))
        return 0
    try:
        try:
            positional = fv([f"{PROG} {name}", *rest])
        except (AttributeError, KeyError) as e:  # ml_collections: an override of a field the config lacks
            raise UsageError(f"bad config override: {e}") from None
        if command.actions:
            if len(positional) != 2 or positional[1] not in command.actions:
                raise UsageError(f"{name} needs one action of {'|'.join(command.actions)}, got {positional[1:]}")
        elif len(positional) > 1:
            raise UsageError(f"unexpected arguments {positional[1:]} (flags are --name=value)")
        # absl logging reads the global flags: parse them (empty) so library logging works.
        if not flags.FLAGS.is_parsed():
            flags.FLAGS([PROG])
        _persistent_compilation_cache()
        command.run(fv, *positional[1:])
    except (UsageError, flags.Error) as e:
        if verbose:
            raise
        print(f"{PROG} {name}: error: {one_line(e)}", file=sys.stderr)
        return 2
    except (ValueError, OSError) as e:  # the library's bad-input errors (FileNotFoundError is an OSError)
        if verbose:
            raise
        print(f"{PROG} {name}: error: {one_line(e)} (run with --verbose for the traceback)", file=sys.stderr)
        return 1
    return 0


def run() -> None:
    """Console-script entry point."""
    logging.use_absl_handler()
    sys.exit(main(sys.argv))


if __name__ == "__main__":
    run()
