"""Training batches rendered on the device: a batch of view specs in, a batch of images out.

A device-rendered source (`pipeline.SyntheticFrames` behind `pipeline.ExampleSource`) yields
examples without images: the identity's `world_id`, and for each of the `MAX_INPUTS` input slots
and T targets the frame's head parameters (no shape), camera and background.
`render_example_batch` — traceable, so it runs inside jit and under the mesh's sharding, each
device rendering its own rows — synthesises each row's identity once and renders its real input
views and T targets in one `SyntheticWorld.render_views_traced` call, then returns the batch
the model reads, with the same keys and shapes the host pipeline gives:

    input_images [B,4,H,W,3] (0 in padded slots)   target_images [B,T,H,W,3]   target_alphas [B,T,H,W,1]
    input_shape / target_shape [B,4|T,S] (the row's identity)

plus `input_view_directions [B,4,3]` (where each input camera stands, seen from the head:
`motion.view_directions`, 0 in padded slots; a training label, never a model input), with
`input_annotations` `input_alphas` and the input cameras/params (without, those are
dropped: the camera-free lifter never sees them), and with `with_depth` `target_depths [B,T,H,W,1]`
(expected depth; the held-out eval sets, `eval_sets.py`, render through here too). `GroundTruthRenderer` jits it with the batch
sharding in and out, for the training loop: the host sends only small numbers, the step reads
images that never left the device.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from flexavatar_jax.data import motion
from flexavatar_jax.data.pipeline import MAX_INPUTS, SPEC_PARAM_FIELDS
from flexavatar_jax.data.synthetic import SyntheticWorld
from flexavatar_jax.head import HeadParams

# Keys only a spec batch has (consumed here).
SPEC_ONLY_KEYS = ("world_id", "input_backgrounds", "target_backgrounds")
INPUT_ANNOTATION_KEYS = ("input_viewmats", "input_Ks", *(f"input_{f}" for f in SPEC_PARAM_FIELDS))


def is_spec_batch(batch) -> bool:
    return "world_id" in batch


def render_example_batch(world: SyntheticWorld, batch: dict, input_annotations: bool, with_depth: bool = False) -> dict:
    """Traceable: a batch of view specs -> the model's batch (module docstring)."""
    if not is_spec_batch(batch):
        raise ValueError("render_example_batch needs a batch of view specs (from a device-rendered source: "
                         f"it has no 'world_id'); got keys {sorted(batch)}")
    num_targets = batch["target_viewmats"].shape[1]
    both = lambda key: jnp.concatenate([batch[f"input_{key}"], batch[f"target_{key}"]], axis=1)  # noqa: E731
    params = HeadParams(shape=None, **{f: both(f) for f in SPEC_PARAM_FIELDS})
    visible = jnp.concatenate([batch["input_mask"], jnp.ones(batch["target_viewmats"].shape[:2], bool)], axis=1)
    out = world.render_views_traced(batch["world_id"].astype(jnp.int32), params, both("viewmats"), both("Ks"),
                                    both("backgrounds"), with_depth=with_depth, visible=visible)
    mask = batch["input_mask"][:, :, None, None, None]
    result = {k: v for k, v in batch.items() if k not in SPEC_ONLY_KEYS}
    result["input_view_directions"] = input_view_directions(batch)
    if not input_annotations:
        result = {k: v for k, v in result.items() if k not in INPUT_ANNOTATION_KEYS}
    shape = out["shape"][:, None]
    result.update(
        input_images=jnp.where(mask, out["rgb"][:, :MAX_INPUTS], 0.0),
        target_images=out["rgb"][:, MAX_INPUTS:],
        target_alphas=out["alpha"][:, MAX_INPUTS:],
        target_shape=jnp.broadcast_to(shape, (shape.shape[0], num_targets, shape.shape[-1])),
    )
    if with_depth:
        result["target_depths"] = out["depth"][:, MAX_INPUTS:]
    if input_annotations:
        result["input_alphas"] = jnp.where(mask, out["alpha"][:, :MAX_INPUTS], 0.0)
        result["input_shape"] = jnp.where(batch["input_mask"][:, :, None], shape, 0.0)
    return result


def input_view_directions(batch: dict) -> jax.Array:
    """`motion.view_directions` of a batch's input cameras [B,4,3], 0 in padded slots."""
    directions = motion.view_directions(batch["input_viewmats"], batch["input_global_pose"], batch["input_neck_pose"],
                                        batch["input_translation"])
    return jnp.where(batch["input_mask"][..., None], directions, 0.0)


class GroundTruthRenderer:
    """`render_example_batch` jitted with `sharding` (the batch sharding of the mesh) on its input
    and output: call it on the global spec batch right before the train step."""

    def __init__(self, world: SyntheticWorld, input_annotations: bool, sharding=None, with_depth: bool = False):
        fn = lambda batch: render_example_batch(world, batch, input_annotations, with_depth)  # noqa: E731
        self._fn = jax.jit(fn) if sharding is None else jax.jit(fn, in_shardings=(sharding,), out_shardings=sharding)

    def __call__(self, batch: dict) -> dict:
        return self._fn(batch)
