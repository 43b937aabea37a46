"""Kinematics: Rodrigues, forward kinematics over `parents`, pose correctives, linear blend skinning.

Formulas follow SMPL/FLAME (Loper et al. 2015, Eqs. 1-4): blendshapes in the rest pose, joints
regressed from the shaped mesh, pose correctives driven by (R_j - I) of the non-root joints, then
LBS with the *relative* joint transforms G_j · [I | -J_j]. Everything is jit/vmap/grad friendly;
vmap over a batch of `HeadParams` for batched use.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from flexavatar_jax.head.model import HeadModel, HeadParams


def rodrigues(axis_angle: Float[Array, "*b 3"]) -> Float[Array, "*b 3 3"]:
    """Axis-angle -> rotation matrix, smooth (and exactly differentiable) at zero angle.

    Uses sin(t)/t and (1-cos t)/t² written through a safe t² so the gradient at t = 0 is finite
    and equals the first-order expansion R ≈ I + [w]_x.
    """
    w = axis_angle
    t2 = jnp.sum(w * w, axis=-1, keepdims=True)[..., None]  # [...,1,1]
    small = t2 < 1e-12
    t2_safe = jnp.where(small, 1.0, t2)
    t = jnp.sqrt(t2_safe)
    a = jnp.where(small, 1.0 - t2 / 6.0, jnp.sin(t) / t)
    b = jnp.where(small, 0.5 - t2 / 24.0, (1.0 - jnp.cos(t)) / t2_safe)
    x, y, z = w[..., 0], w[..., 1], w[..., 2]
    zero = jnp.zeros_like(x)
    k = jnp.stack([zero, -z, y, z, zero, -x, -y, x, zero], axis=-1).reshape(*w.shape[:-1], 3, 3)
    eye = jnp.eye(3, dtype=w.dtype)
    return eye + a * k + b * (k @ k)


def blend_shapes(model: HeadModel, params: HeadParams) -> Float[Array, "V 3"]:
    """Template + shape and expression blendshapes (unbatched params)."""
    return (
        model.v_template
        + jnp.einsum("vcs,s->vc", model.shapedirs, params.shape)
        + jnp.einsum("vce,e->vc", model.exprdirs, params.expression)
    )


def forward_kinematics(
    rotations: Float[Array, "J 3 3"], joints: Float[Array, "J 3"], parents: tuple[int, ...]
) -> tuple[Float[Array, "J 4 4"], Float[Array, "J 3"]]:
    """World transforms of each joint and the posed joint locations.

    `parents` is static (a tuple), so the tree is unrolled at trace time.
    """
    world = []
    for j, p in enumerate(parents):
        local_t = joints[j] if p < 0 else joints[j] - joints[p]
        local = jnp.eye(4, dtype=rotations.dtype).at[:3, :3].set(rotations[j]).at[:3, 3].set(local_t)
        world.append(local if p < 0 else world[p] @ local)
    world = jnp.stack(world)
    return world, world[:, :3, 3]


@dataclasses.dataclass(frozen=True)
class LBSOutput:
    """`vertices [V,3]` posed; `joints [J,3]` posed; `vertex_transforms [V,4,4]` the blended
    rest->posed transform of each vertex (its 3x3 block rotates Gaussians attached there, it is a
    rotation only where the weights are one-hot); `shaped [V,3]` in the rest pose (blendshapes, no
    pose correctives); `corrected [V,3]` in the rest pose with pose correctives (what the vertex
    transforms are applied to); `joint_transforms [J,4,4]` relative (rest->posed) per joint."""

    vertices: Float[Array, "V 3"]
    joints: Float[Array, "J 3"]
    vertex_transforms: Float[Array, "V 4 4"]
    shaped: Float[Array, "V 3"]
    corrected: Float[Array, "V 3"]
    joint_transforms: Float[Array, "J 4 4"]


jax.tree_util.register_dataclass(
    LBSOutput, data_fields=[f.name for f in dataclasses.fields(LBSOutput)], meta_fields=[]
)


def lbs(model: HeadModel, params: HeadParams) -> LBSOutput:
    """Shape + expression + pose correctives + linear blend skinning, unbatched.

    Use `jax.vmap(lbs, in_axes=(None, 0))(model, params)` for a batch of parameters.
    """
    shaped = blend_shapes(model, params)
    joints_rest = model.J_regressor @ shaped
    rotations = rodrigues(params.full_pose())
    eye = jnp.eye(3, dtype=rotations.dtype)
    pose_feature = (rotations[1:] - eye).reshape(-1)
    posed_rest = shaped + jnp.einsum("vcp,p->vc", model.posedirs, pose_feature)

    world, joints_posed = forward_kinematics(rotations, joints_rest, model.parents)
    # Relative transform: undo the rest-pose joint location, i.e. G_j · [I | -J_j].
    rel_t = world[:, :3, 3] - jnp.einsum("jab,jb->ja", world[:, :3, :3], joints_rest)
    relative = world.at[:, :3, 3].set(rel_t)
    vertex_transforms = jnp.einsum("vj,jab->vab", model.lbs_weights, relative)
    homo = jnp.concatenate([posed_rest, jnp.ones_like(posed_rest[:, :1])], axis=-1)
    vertices = jnp.einsum("vab,vb->va", vertex_transforms, homo)[:, :3] + params.translation
    vertex_transforms = vertex_transforms.at[:, :3, 3].add(params.translation)
    relative = relative.at[:, :3, 3].add(params.translation)
    return LBSOutput(
        vertices=vertices,
        joints=joints_posed + params.translation,
        vertex_transforms=vertex_transforms,
        shaped=shaped,
        corrected=posed_rest,
        joint_transforms=relative,
    )
