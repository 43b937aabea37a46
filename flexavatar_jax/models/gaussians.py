"""Gaussian assembly: UV attribute maps -> posed 3D Gaussians (the arrays `rasterize` takes).

One Gaussian per valid UV texel (plus optional denser sub-texel samples on chosen regions, e.g.
the scalp), following FlexAvatar/FHAvatar:

* position = the head model's surface point at the sample (shape + expression + pose correctives,
  rest pose) + a learned offset expressed in the local surface frame (t, b, n);
* rotation = canonical surface frame ⊗ learned local rotation;
* scale = learned relative scale × the world size of one texel there (sqrt of the relative scale
  map / K, from the identity's own mesh, so a coefficient of 1 covers one texel);
* then linear blend skinning of positions **and rotations** with the driving pose and per-sample
  barycentric skinning weights. Rotations blend as weight-averaged joint quaternions (sign-aligned,
  normalised), which stays a rotation and has smooth gradients, unlike a polar decomposition.

Dense samples take the attributes of the texel they lie in; their positions come from their own
barycentric coordinates.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from flexavatar_jax.head import HeadModel, HeadParams, lbs
from flexavatar_jax.head import uv as uvt
from flexavatar_jax.head.rotations import matrix_to_quat, quat_multiply

# Regions whose appearance/geometry the deformation UNet may change (FlexAvatar's dynamic mask).
DYNAMIC_REGIONS = ("face_skin", "lips", "mouth_interior", "teeth", "tongue", "left_eye", "right_eye",
                   "eyebrows", "nose")


@dataclasses.dataclass(frozen=True)
class GaussianLayout:
    """Static sampling layout (host numpy): `samples`, barycentric `skin_weights [N,J]`,
    `dynamic [N]` (in `DYNAMIC_REGIONS`), `resolution` K of the attribute maps."""

    samples: uvt.UVSamples
    skin_weights: np.ndarray
    dynamic: np.ndarray
    resolution: int

    @property
    def num_gaussians(self) -> int:
        return len(self.samples)


def make_layout(model: HeadModel, resolution: int, dense_regions: dict[str, int] | None = None,
                dynamic_regions: tuple[str, ...] = DYNAMIC_REGIONS) -> GaussianLayout:
    samples = uvt.sampling_grid(model, resolution, dense_regions)
    weights = np.asarray(samples.interpolate(model.faces, jnp.asarray(model.lbs_weights)))
    dynamic = model.face_mask(*dynamic_regions)[samples.face]
    return GaussianLayout(samples=samples, skin_weights=weights.astype(np.float32), dynamic=dynamic,
                          resolution=int(resolution))


def gather_texels(layout: GaussianLayout, uv_map: Float[Array, "K K C"]) -> Float[Array, "N C"]:
    """Per-Gaussian values of a [K,K,C] UV map (each sample reads the texel it lies in)."""
    if uv_map.shape[:2] != (layout.resolution, layout.resolution):
        raise ValueError(f"UV map is {uv_map.shape[:2]}, the layout expects {layout.resolution}²")
    t = layout.samples.texel
    return uv_map[jnp.asarray(t[:, 0]), jnp.asarray(t[:, 1])]


def _texel_size(model: HeadModel, layout: GaussianLayout, rest_vertices) -> Float[Array, " N"]:
    """World edge length of one texel at each sample: sqrt(3D area / UV area of its face) / K."""
    ratio = uvt.face_area_ratio(model, rest_vertices)[jnp.asarray(layout.samples.face)]
    return jnp.sqrt(ratio) / layout.resolution


def blend_rotations(weights: Float[Array, "N J"], joint_rotations: Float[Array, "J 3 3"]) -> Float[Array, "N 4"]:
    """Weighted quaternion average of the joint rotations (signs aligned to the first joint's
    hemisphere), normalised: exact for one-hot weights."""
    q = matrix_to_quat(joint_rotations)  # [J,4]
    q = jnp.where(jnp.sum(q * q[:1], -1, keepdims=True) < 0, -q, q)
    blended = weights @ q
    return blended / jnp.maximum(jnp.linalg.norm(blended, axis=-1, keepdims=True), 1e-12)


def assemble(
    layout: GaussianLayout,
    model: HeadModel,
    params: HeadParams,
    offsets: Float[Array, "N 3"],
    local_quats: Float[Array, "N 4"],
    relative_scales: Float[Array, "N 3"],
    opacities: Float[Array, " N"],
    colors: Float[Array, "N C"],
) -> dict[str, Array]:
    """Posed Gaussians (`means, quats, scales, opacities, colors`) for one set of driving params.

    `offsets` are in the local surface frame (t, b, n) in metres; `local_quats` (wxyz) rotate the
    surface frame; `relative_scales` multiply the texel size. jit-able, differentiable in every
    array argument and in `params`."""
    out = lbs(model, params)
    rest = out.corrected
    frames = uvt.tangent_frames(model, layout.samples, rest)  # [N,3,3], columns t, b, n
    surface = layout.samples.interpolate(model.faces, rest)
    canonical = surface + jnp.einsum("nij,nj->ni", frames, offsets)
    w = jnp.asarray(layout.skin_weights)
    transforms = jnp.einsum("nj,jab->nab", w, out.joint_transforms)  # [N,4,4]
    means = jnp.einsum("nab,nb->na", transforms[:, :3, :3], canonical) + transforms[:, :3, 3]
    q_pose = blend_rotations(w, out.joint_transforms[:, :3, :3])
    quats = quat_multiply(q_pose, quat_multiply(matrix_to_quat(frames), local_quats))
    scales = relative_scales * _texel_size(model, layout, out.shaped)[:, None]
    return dict(means=means, quats=quats, scales=scales, opacities=opacities, colors=colors)
