"""Materialise synthetic identities in the VHAP NeRF-style layout (one folder per identity), so
that the same reader serves synthetic and real data."""

from __future__ import annotations

import pathlib
import shutil
import time

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
    """Write `num_identities` synthetic identities (`split` train or heldout ids) as VHAP sequence
    folders `out/id_XXXXXXX` (the folder is locked while it runs). An identity folder is complete
    once its `transforms.json` exists (written last, atomically): a re-run after an interruption
    keeps the complete ones and rewrites the others from empty folders, unless `overwrite` rewrites
    everything. An unfinished folder has no `transforms.json`, so the reader refuses it."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be train or heldout, got {split!r}")
    ids = train_ids(num_identities) if split == "train" else heldout_ids(num_identities)
    out = pathlib.Path(out)
    paths = []
    kept = 0
    t0 = time.time()
    with locks.directory_lock(out, "make-dataset"):  # one writer per dataset folder
        for k, i in enumerate(ids):
            folder = out / f"id_{int(i):07d}"
            if (folder / "transforms.json").exists() and not overwrite:
                # Complete (its json is written last): a re-run after an interruption resumes here.
                paths.append(folder)
                kept += 1
                continue
            # Rewritten from an empty folder: an unfinished one may hold the temporary file of a write
            # that was killed, or frames of another config, which rewriting over it would leave.
            shutil.rmtree(folder, ignore_errors=True)
            paths.append(write_identity(world, int(i), folder, cameras_per_frame, frame_stride, val_fraction,
                                        overwrite))
            done = k + 1 - kept
            rate = done / max(time.time() - t0, 1e-9)
            logging.info("identity %d/%d -> %s (%.2f identities/s, ETA %.0f s)", k + 1, len(ids), folder, rate,
                         (len(ids) - k - 1) / rate)
    if kept:
        logging.info("kept %d complete identity folders from an earlier run", kept)
    return paths
