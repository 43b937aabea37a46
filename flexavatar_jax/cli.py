"""`flexavatar-jax` command line: thin absl entry point over library functions.

    flexavatar-jax preview-head --out DIR [--head procedural|PATH] [--uv_obj OBJ] [--seed N]
    flexavatar-jax head-info [--head ...]
    flexavatar-jax make-dataset --config configs/synthetic_data.py:tiny --out DIR
    flexavatar-jax preview-data --config configs/synthetic_data.py:tiny --out DIR
    flexavatar-jax summary --config configs/flexavatar.py:base
    flexavatar-jax train --config configs/flexavatar.py:tiny --workdir out/tiny   (re-run to resume)
    flexavatar-jax eval --config configs/flexavatar.py:tiny --workdir out/tiny
    flexavatar-jax refine --config configs/flexavatar.py:tiny --workdir out/tiny
    flexavatar-jax reconstruct --config ... --workdir out/tiny (--images a.png,b.png | --identity 1000000) --out me.npz
    flexavatar-jax animate --config ... --workdir out/tiny --avatar me.npz (--motion m.npz | --driver_identity 1000001)
        --out me.gif        (also writes me_turntable.gif)
    flexavatar-jax export --config ... --workdir out/tiny --avatar me.npz --out me.ply
"""

from __future__ import annotations

import json
import os
import pathlib
import sys
import time

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
flags.DEFINE_string("out", "out/preview_head", "Output directory.")
flags.DEFINE_string("head", "procedural", "'procedural' or a FLAME .pkl/.npz path.")
flags.DEFINE_string("uv_obj", None, "FLAME UV layout (head_template_mesh.obj) for a raw FLAME pickle.")
flags.DEFINE_string("flame_masks", None, "Optional FLAME_masks.pkl for named regions.")
flags.DEFINE_integer("seed", 0, "Random seed for previews.")
flags.DEFINE_integer("size", 256, "Preview image size in pixels.")
flags.DEFINE_integer("uv_resolution", 256, "UV resolution for head-info statistics.")
flags.DEFINE_bool("overwrite", False, "Overwrite existing outputs.")
flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics, images, evaluation).")
flags.DEFINE_bool("print_param_paths", False, "summary: also list every parameter path and shape.")
flags.DEFINE_list("images", None, "reconstruct: 1-4 portrait image files (comma-separated).")
flags.DEFINE_integer("identity", None, "reconstruct: a synthetic identity id (held-out ids start at 1000000).")
flags.DEFINE_string("avatar", None, "animate/export: an avatar .npz written by `reconstruct`.")
flags.DEFINE_string("motion", None, "animate: .npz with expression [T,E], pose [T,15], translation [T,3] (or VHAP).")
flags.DEFINE_integer("driver_identity", None, "animate: drive with this synthetic identity's first clip.")
flags.DEFINE_integer("frames", None, "animate: number of frames (default: the whole motion).")
flags.DEFINE_integer("fps", 25, "animate: frames per second of the video.")
config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/flexavatar.py:tiny.")

COMMANDS = ("preview-head", "head-info", "make-dataset", "preview-data", "summary", "train", "eval", "refine",
            "reconstruct", "animate", "export")
AVATAR_COMMANDS = ("reconstruct", "animate", "export")


def _load_head():
    """(head model from --head/--uv_obj/--flame_masks, expression names of the procedural head or None)."""
    from flexavatar_jax.head import load_head, procedural

    model = load_head(FLAGS.head, FLAGS.uv_obj, FLAGS.flame_masks)
    if FLAGS.head in ("", "procedural"):
        return model, list(procedural.load_procedural_arrays()["expression_names"])
    return model, None


def head_info() -> dict:
    from flexavatar_jax.head import uv

    t0 = time.perf_counter()
    model, _ = _load_head()
    load_s = time.perf_counter() - t0
    table = uv.texel_table(model, FLAGS.uv_resolution)
    return {
        "name": model.name, "vertices": model.num_vertices, "faces": model.num_faces,
        "shape_components": model.num_shape, "expression_components": model.num_expression,
        "pose_features": int(model.posedirs.shape[-1]), "joints": list(model.joint_names),
        f"uv_coverage_{FLAGS.uv_resolution}": round(table.coverage, 4),
        "uv_overlapping_texels": table.num_overlapping, "load_seconds": round(load_s, 3),
        "regions": {r: int(model.vertex_mask(r).sum()) for r in model.region_names},
    }


def _require_config():
    if FLAGS.config is None:
        raise app.UsageError("this command needs --config, e.g. --config configs/synthetic_data.py:tiny")
    return FLAGS.config


def _require_workdir() -> str:
    if not FLAGS.workdir:
        raise app.UsageError("this command needs --workdir (the training run's directory)")
    return FLAGS.workdir


def summary() -> str:
    """Parameter counts per module (from shapes only: nothing is allocated) and Gaussians per avatar."""
    import flax.linen as nn
    import jax
    from flax import traverse_util

    from flexavatar_jax.models.avatar import FlexAvatar, parameter_counts
    from flexavatar_jax.head import load_head

    cfg = _require_config()
    system = FlexAvatar(cfg.model, load_head(cfg.head))
    abstract = nn.meta.unbox(jax.eval_shape(system.init, jax.random.key(0)))
    counts = parameter_counts(abstract)
    m = cfg.model
    lines = [f"config {cfg.variant}: lifter {m.lifter_type}, inputs {m.image_size}² (patch {m.encoder.patch_size}), "
             f"UV grid G={m.grid}, attribute maps K={m.uv_resolution}, UNet {'on' if m.unet.enabled else 'off'} "
             f"(driving: {m.driving})",
             f"Gaussians per avatar: {system.num_gaussians:,}"]
    lines += [f"  {k:<12} {v:>14,}" for k, v in counts.items()]
    if FLAGS.print_param_paths:
        flat = traverse_util.flatten_dict(abstract, sep="/")
        lines += [f"    {k} {tuple(v.shape)}" for k, v in sorted(flat.items())]
    return "\n".join(lines)


def _require(name: str):
    value = getattr(FLAGS, name)
    if value is None:
        raise app.UsageError(f"this command needs --{name}")
    return value


def avatar_command(command: str) -> str:
    """reconstruct | animate | export with the trained params of --workdir; returns what it wrote."""
    from flexavatar_jax.data import media
    from flexavatar_jax.train import avatars, inputs
    from flexavatar_jax.train.loop import Trainer
    from flexavatar_jax.train.reports import restore_params

    cfg, workdir = _require_config(), _require_workdir()
    trainer = Trainer(cfg, workdir)
    system = trainer.system
    _, params = restore_params(trainer, workdir)
    out = FLAGS.out
    if command == "reconstruct":
        if (FLAGS.images is None) == (FLAGS.identity is None):
            raise app.UsageError("reconstruct needs exactly one of --images or --identity")
        if FLAGS.images is not None:
            avatar, source = avatars.reconstruct_from_images(system, params, FLAGS.images), ",".join(FLAGS.images)
        else:
            world = inputs.make_world(cfg, trainer.head)
            avatar, _ = avatars.reconstruct_from_dataset(system, params, world, FLAGS.identity, seed=cfg.seed)
            source = f"synthetic identity {FLAGS.identity}"
        avatars.save_avatar(out, avatar, config_json=cfg.model.to_dict(), image_size=system.image_size, source=source)
        return out
    avatar, meta = avatars.load_avatar(_require("avatar"))
    avatars.check_avatar(system, avatar, meta)
    if command == "export":
        n = avatars.export_avatar_ply(system, params, avatar, out)
        return f"{out} ({n:,} Gaussians)"
    if (FLAGS.motion is None) == (FLAGS.driver_identity is None):
        raise app.UsageError("animate needs exactly one of --motion or --driver_identity")
    if FLAGS.motion is not None:
        motion = avatars.load_motion(FLAGS.motion, trainer.head.num_expression)
    else:
        motion = avatars.driving_sequence(inputs.make_world(cfg, trainer.head), FLAGS.driver_identity, FLAGS.frames)
    expression, pose, translation = avatars.motion_arrays(motion)
    if FLAGS.frames is not None:
        expression, pose, translation = expression[: FLAGS.frames], pose[: FLAGS.frames], translation[: FLAGS.frames]
    media.write_video(out, avatars.animate_frames(system, params, avatar, expression, pose, translation), fps=FLAGS.fps)
    stem, _ = os.path.splitext(out)
    media.write_video(f"{stem}_turntable.gif", avatars.turntable_frames(system, params, avatar), fps=12)
    return f"{out}, {stem}_turntable.gif"


def main(argv: list[str]) -> None:
    if len(argv) != 2 or argv[1] not in COMMANDS:
        raise app.UsageError(f"usage: flexavatar-jax {{{'|'.join(COMMANDS)}}} [flags]; got {argv[1:]}")
    command = argv[1]
    if command == "preview-head":
        from flexavatar_jax.preview import preview_head

        model, names = _load_head()
        paths = preview_head(model, FLAGS.out, seed=FLAGS.seed, size=FLAGS.size, expression_names=names)
        info = head_info()
        out = pathlib.Path(FLAGS.out)
        (out / "head_info.json").write_text(json.dumps(info, indent=2))
        for p in paths:
            logging.info("wrote %s", p)
        print(json.dumps(info, indent=2))
        print("preview images: " + ", ".join(str(p) for p in paths))
    elif command == "head-info":
        print(json.dumps(head_info(), indent=2))
    elif command in ("make-dataset", "preview-data"):
        from flexavatar_jax.data.synthetic import SyntheticConfig, SyntheticWorld

        cfg = _require_config()
        out = pathlib.Path(FLAGS.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(cfg.to_json_best_effort(indent=2))
        world = SyntheticWorld(SyntheticConfig(**cfg.synthetic.to_dict()))
        if command == "make-dataset":
            from flexavatar_jax.data.make_dataset import make_dataset

            paths = make_dataset(world, out, cfg.num_identities, cfg.split, cfg.cameras_per_frame, cfg.frame_stride,
                                 cfg.val_fraction, overwrite=FLAGS.overwrite)
            print(f"wrote {len(paths)} identity sequences under {out}")
        else:
            from flexavatar_jax.preview import preview_data

            print(f"wrote {preview_data(world, out)}")
    elif command == "summary":
        print(summary())
    elif command == "train":
        from flexavatar_jax.train.reports import train_and_evaluate

        train_and_evaluate(_require_config(), _require_workdir())
    elif command == "eval":
        from flexavatar_jax.train.reports import evaluate_workdir

        evaluate_workdir(_require_config(), _require_workdir())
    elif command == "refine":
        from flexavatar_jax.train.refine import refine_workdir

        refine_workdir(_require_config(), _require_workdir())
    elif command in AVATAR_COMMANDS:
        if not FLAGS["out"].present:
            raise app.UsageError(f"{command} needs --out (the file to write)")
        print(f"wrote {avatar_command(command)}")


def run() -> None:
    """Console-script entry point."""
    app.run(main, argv=sys.argv)


if __name__ == "__main__":
    run()
