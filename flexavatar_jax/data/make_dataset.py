"""Materialise synthetic identities in the VHAP NeRF-style layout (one folder per identity), so
that the same reader serves synthetic and real data."""

from __future__ import annotations

import pathlib

import numpy as np
from absl import logging

from flexavatar_jax.data import locks, motion, vhap
from flexavatar_jax.data.synthetic import SyntheticWorld, heldout_ids, train_ids
from flexavatar_jax.head import HeadParams


def write_identity(world: SyntheticWorld, identity_id: int, folder: str | pathlib.Path, cameras_per_frame: int,
                   frame_stride: int = 1, val_fraction: float = 0.1, overwrite: bool = False) -> pathlib.Path:
    ident = world.identity(identity_id)
    size = world.config.image_size
    anchors = list(motion.ANCHOR_EXPRESSIONS)
    frames = [(c, t) for c in range(len(ident.clips)) for t in range(0, len(ident.clips[c]), frame_stride)]
    n_eval = int(round(val_fraction * len(frames)))
    split_of = ["train"] * (len(frames) - 2 * n_eval) + ["val"] * n_eval + ["test"] * n_eval
    rng = np.random.default_rng([world.config.seed, identity_id, 11])
    with vhap.SequenceWriter(folder, overwrite=overwrite, metadata={"identity_id": int(identity_id),
                                                                   "hair_style": ident.hair_style}) as writer:
        for timestep, ((clip, t), split) in enumerate(zip(frames, split_of)):
            params = ident.frame_params(clip, t)
            cams = motion.sample_cameras(rng, cameras_per_frame, size, size)
            rgb, alpha, _ = world.render(ident, params, cams.viewmats, cams.Ks, world.backgrounds(rng, cameras_per_frame))
            rgb, alpha = np.asarray(rgb), np.asarray(alpha)
            event = int(ident.clips[clip].event[t])
            extra = {"marginal": bool(ident.clips[clip].marginal[t]), "event": anchors[event] if event >= 0 else ""}
            for c in range(cameras_per_frame):
                writer.add_frame(rgb[c], cams.viewmats[c], cams.Ks[c], timestep, c, mask=alpha[c, ..., 0],
                                 split=split, extra=extra)
            writer.add_timestep_params(timestep, params)
        neutral = HeadParams.zeros(world.model.num_shape, world.model.num_expression).replace(shape=ident.shape)
        writer.set_canonical_params(neutral)
    return pathlib.Path(folder)


def make_dataset(world: SyntheticWorld, out: str | pathlib.Path, num_identities: int, split: str = "train",
                 cameras_per_frame: int = 4, frame_stride: int = 1, val_fraction: float = 0.1,
                 overwrite: bool = False) -> list[pathlib.Path]:
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be train or heldout, got {split!r}")
    ids = train_ids(num_identities) if split == "train" else heldout_ids(num_identities)
    out = pathlib.Path(out)
    paths = []
    with locks.directory_lock(out, "make-dataset"):  # one writer per dataset folder
        for i in ids:
            paths.append(write_identity(world, int(i), out / f"id_{int(i):07d}", cameras_per_frame, frame_stride,
                                        val_fraction, overwrite))
            logging.info("wrote identity %d -> %s", i, paths[-1])
    return paths
