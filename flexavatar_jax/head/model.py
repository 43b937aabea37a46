"""The one interface every parametric head model implements (procedural head, FLAME, ...).

A `HeadModel` is a pytree of arrays plus static metadata, so it can be passed through `jax.jit`
as an argument (arrays are traced, metadata is part of the compilation key). Parameters are
FLAME-compatible (`HeadParams`): shape, expression, and the pose of five joints
(root, neck, jaw, left eye, right eye) as axis-angle vectors, plus a translation.

Conventions: metres, +y up, +z forward (the face looks towards +z), so the subject's *left* is +x.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

JOINT_NAMES = ("root", "neck", "jaw", "left_eye", "right_eye")
FLAME_PARENTS = (-1, 0, 1, 1, 1)
NUM_JOINTS = len(JOINT_NAMES)
# Pose correctives are driven by the rotation matrices of every joint but the root: (J-1)*9.
NUM_POSE_FEATURES = (NUM_JOINTS - 1) * 9

# Named regions every head model exposes (an empty mask is allowed, e.g. FLAME has no teeth).
REGION_NAMES = (
    "face_skin",
    "scalp",
    "ears",
    "neck",
    "left_eye",
    "right_eye",
    "mouth_interior",
    "teeth",
    "lips",
    "eyebrows",
    "nose",
    "tongue",
)


@dataclasses.dataclass(frozen=True)
class HeadModel:
    """A parametric head model: arrays (pytree leaves) + static metadata.

    Shapes: V vertices, F faces, T UV vertices, S shape / E expression components, J = 5 joints,
    P = (J-1)*9 pose features.

    * `v_template [V,3]`, `faces [F,3]` (counter-clockwise seen from outside).
    * `shapedirs [V,3,S]`, `exprdirs [V,3,E]`, `posedirs [V,3,P]`: linear blendshape bases.
    * `J_regressor [J,V]` (dense), `lbs_weights [V,J]` (rows sum to 1).
    * `uv_coords [T,2]` in [0,1]² (u right, v *up*, OpenGL/obj convention), `faces_uv [F,3]`
      indices into `uv_coords` (a vertex on a UV seam has several UV vertices).
    * `vertex_regions [V]`, `face_regions [F]`: int32 bit masks, bit i = `REGION_NAMES[i]`.
    * `mirror_vertex [V]`: index of the left-right mirrored vertex (an involution),
      `mirror_face [F]`: index of the mirrored face, whose corners are the mirrored corners in
      *reversed* order (mirroring flips the winding).
    """

    v_template: Float[Array, "V 3"]
    faces: Int[Array, "F 3"]
    shapedirs: Float[Array, "V 3 S"]
    exprdirs: Float[Array, "V 3 E"]
    posedirs: Float[Array, "V 3 P"]
    J_regressor: Float[Array, "J V"]
    lbs_weights: Float[Array, "V J"]
    uv_coords: Float[Array, "T 2"]
    faces_uv: Int[Array, "F 3"]
    vertex_regions: Int[Array, " V"]
    face_regions: Int[Array, " F"]
    mirror_vertex: Int[Array, " V"]
    mirror_face: Int[Array, " F"]
    # --- static metadata ---
    name: str = dataclasses.field(default="head", metadata=dict(static=True))
    parents: tuple[int, ...] = dataclasses.field(default=FLAME_PARENTS, metadata=dict(static=True))
    joint_names: tuple[str, ...] = dataclasses.field(default=JOINT_NAMES, metadata=dict(static=True))
    region_names: tuple[str, ...] = dataclasses.field(default=REGION_NAMES, metadata=dict(static=True))

    @property
    def num_vertices(self) -> int:
        return self.v_template.shape[0]

    @property
    def num_faces(self) -> int:
        return self.faces.shape[0]

    @property
    def num_shape(self) -> int:
        return self.shapedirs.shape[-1]

    @property
    def num_expression(self) -> int:
        return self.exprdirs.shape[-1]

    def region_bit(self, region: str) -> int:
        if region not in self.region_names:
            raise ValueError(f"unknown region {region!r}; known regions: {', '.join(self.region_names)}")
        return 1 << self.region_names.index(region)

    def vertex_mask(self, *regions: str) -> np.ndarray:
        """Boolean [V] mask of the vertices in any of `regions` (host-side numpy)."""
        bits = sum(self.region_bit(r) for r in regions)
        return (np.asarray(self.vertex_regions) & bits) != 0

    def face_mask(self, *regions: str) -> np.ndarray:
        """Boolean [F] mask of the faces in any of `regions` (host-side numpy)."""
        bits = sum(self.region_bit(r) for r in regions)
        return (np.asarray(self.face_regions) & bits) != 0

    def zero_params(self, batch_shape: tuple[int, ...] = ()) -> "HeadParams":
        return HeadParams.zeros(self.num_shape, self.num_expression, batch_shape)

    def validate(self) -> "HeadModel":
        """Checks shapes and index ranges; raises ValueError naming the first problem."""
        v = self.v_template.shape[0]
        f = self.faces.shape[0]
        j = len(self.parents)
        expect = {
            "v_template": (v, 3),
            "faces": (f, 3),
            "shapedirs": (v, 3, None),
            "exprdirs": (v, 3, None),
            "posedirs": (v, 3, (j - 1) * 9),
            "J_regressor": (j, v),
            "lbs_weights": (v, j),
            "uv_coords": (None, 2),
            "faces_uv": (f, 3),
            "vertex_regions": (v,),
            "face_regions": (f,),
            "mirror_vertex": (v,),
            "mirror_face": (f,),
        }
        for field, shape in expect.items():
            got = tuple(np.shape(getattr(self, field)))
            if len(got) != len(shape) or any(s is not None and s != g for s, g in zip(shape, got)):
                want = tuple("*" if s is None else s for s in shape)
                raise ValueError(f"{self.name}: {field} has shape {got}, expected {want}")
        if len(self.joint_names) != j:
            raise ValueError(f"{self.name}: {len(self.joint_names)} joint names for {j} joints")
        if j != NUM_JOINTS:
            raise ValueError(f"{self.name}: expected {NUM_JOINTS} FLAME-compatible joints, got {j}")
        for field, n in (("faces", v), ("faces_uv", self.uv_coords.shape[0]),
                         ("mirror_vertex", v), ("mirror_face", f)):
            a = np.asarray(getattr(self, field))
            if a.size and (a.min() < 0 or a.max() >= n):
                raise ValueError(f"{self.name}: {field} has indices outside [0, {n})")
        for field in ("v_template", "shapedirs", "exprdirs", "posedirs", "lbs_weights", "uv_coords"):
            if not np.all(np.isfinite(np.asarray(getattr(self, field)))):
                raise ValueError(f"{self.name}: {field} contains NaN or Inf")
        return self


jax.tree_util.register_dataclass(
    HeadModel,
    data_fields=[f.name for f in dataclasses.fields(HeadModel) if not f.metadata.get("static")],
    meta_fields=[f.name for f in dataclasses.fields(HeadModel) if f.metadata.get("static")],
)


# Length of the flat pose vector (= 15): axis-angle global 3, neck 3, jaw 3, eyes 6 (left, right).
POSE_SIZE = 3 * NUM_JOINTS


@dataclasses.dataclass(frozen=True)
class HeadParams:
    """FLAME-compatible head parameters; any leading batch shape `...`.

    `shape [...,S]`, `expression [...,E]`; axis-angle `global_pose`, `neck_pose`, `jaw_pose`
    `[...,3]`, `eyes_pose [...,6]` (left eye, then right eye); `translation [...,3]` in metres.
    """

    shape: Float[Array, "*b S"]
    expression: Float[Array, "*b E"]
    global_pose: Float[Array, "*b 3"]
    neck_pose: Float[Array, "*b 3"]
    jaw_pose: Float[Array, "*b 3"]
    eyes_pose: Float[Array, "*b 6"]
    translation: Float[Array, "*b 3"]

    @classmethod
    def zeros(cls, num_shape: int, num_expression: int, batch_shape: tuple[int, ...] = ()) -> "HeadParams":
        z = lambda n: jnp.zeros((*batch_shape, n), jnp.float32)  # noqa: E731
        return cls(z(num_shape), z(num_expression), z(3), z(3), z(3), z(6), z(3))

    @classmethod
    def from_pose(cls, shape, expression, pose, translation) -> "HeadParams":
        """Split a flat `pose [...,POSE_SIZE]` (axis-angle in `JOINT_NAMES` order: global, neck, jaw,
        left eye, right eye) into the per-joint fields; the inverse of `pose_vector`."""
        if pose.shape[-1] != POSE_SIZE:
            raise ValueError(f"pose must be [..., {POSE_SIZE}] (global, neck, jaw, eyes), got {tuple(pose.shape)}")
        return cls(shape=shape, expression=expression, global_pose=pose[..., 0:3], neck_pose=pose[..., 3:6],
                   jaw_pose=pose[..., 6:9], eyes_pose=pose[..., 9:POSE_SIZE], translation=translation)

    def pose_vector(self) -> Float[Array, f"*b {POSE_SIZE}"]:
        """The flat pose `[...,POSE_SIZE]` that `from_pose` splits."""
        return jnp.concatenate([self.global_pose, self.neck_pose, self.jaw_pose, self.eyes_pose], axis=-1)

    def full_pose(self) -> Float[Array, "*b 5 3"]:
        """Axis-angle per joint, in `JOINT_NAMES` order."""
        pose = self.pose_vector()
        return pose.reshape(*pose.shape[:-1], NUM_JOINTS, 3)

    def replace(self, **changes: Any) -> "HeadParams":
        return dataclasses.replace(self, **changes)


jax.tree_util.register_dataclass(
    HeadParams, data_fields=[f.name for f in dataclasses.fields(HeadParams)], meta_fields=[]
)


def check_params(model: HeadModel, params: HeadParams) -> None:
    """Host-side validation: sizes match the model and values are finite (raises ValueError)."""
    for field, n in (("shape", model.num_shape), ("expression", model.num_expression),
                     ("global_pose", 3), ("neck_pose", 3), ("jaw_pose", 3), ("eyes_pose", 6),
                     ("translation", 3)):
        a = getattr(params, field)
        if a.shape[-1] != n:
            raise ValueError(f"HeadParams.{field} has {a.shape[-1]} entries, {model.name} expects {n}")
        if not isinstance(a, jax.core.Tracer) and not np.all(np.isfinite(np.asarray(a))):
            raise ValueError(f"HeadParams.{field} contains NaN or Inf")
