"""The built-in procedural head ("the embedded default"): build, cache, load.

`load_procedural_head()` returns a `HeadModel`; the first call builds it (tens of seconds,
deterministic) and caches an `.npz` under `$FLEXAVATAR_CACHE` (default
`~/.cache/flexavatar_jax`); later calls load the cache in well under a second. The cache key
includes `PROCEDURAL_HEAD_VERSION`: bump it whenever the construction changes.
"""

from __future__ import annotations

import hashlib
import os
import pathlib

import numpy as np
from absl import logging

from flexavatar_jax.files import write_atomic
from flexavatar_jax.head import procedural_blendshapes, procedural_geometry
from flexavatar_jax.head.mesh_ops import mirror_faces
from flexavatar_jax.head.model import REGION_NAMES, HeadModel

PROCEDURAL_HEAD_VERSION = 1
_ARRAY_FIELDS = ("v_template", "faces", "shapedirs", "exprdirs", "posedirs", "J_regressor",
                 "lbs_weights", "uv_coords", "faces_uv", "vertex_regions", "face_regions",
                 "mirror_vertex", "mirror_face")


def cache_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("FLEXAVATAR_CACHE", pathlib.Path.home() / ".cache" / "flexavatar_jax"))


def _cache_path() -> pathlib.Path:
    src = b"".join(pathlib.Path(m.__file__).read_bytes() for m in (procedural_geometry, procedural_blendshapes))
    digest = hashlib.sha256(src).hexdigest()[:12]
    return cache_dir() / f"procedural_head_v{PROCEDURAL_HEAD_VERSION}_{digest}.npz"


def build_procedural_arrays() -> dict[str, np.ndarray]:
    """Builds every array of the procedural head from scratch (float64 geometry, then cast)."""
    g = procedural_geometry.build_geometry()
    j_reg, weights = procedural_geometry.joints_and_weights(g)
    bases = procedural_blendshapes.build_bases(g, weights)
    faces = g.faces.astype(np.int64)
    # A face is in a region when all its corners are.
    face_regions = np.bitwise_and.reduce(g.vertex_regions[faces], axis=1)
    f32 = lambda a: np.asarray(a, np.float32)  # noqa: E731
    i32 = lambda a: np.asarray(a, np.int32)  # noqa: E731
    return dict(
        v_template=f32(g.vertices), faces=i32(faces), shapedirs=f32(bases["shapedirs"]),
        exprdirs=f32(bases["exprdirs"]), posedirs=f32(bases["posedirs"]), J_regressor=f32(j_reg),
        lbs_weights=f32(weights), uv_coords=f32(g.uv), faces_uv=i32(g.faces_uv),
        vertex_regions=i32(g.vertex_regions), face_regions=i32(face_regions),
        mirror_vertex=i32(g.mirror_vertex), mirror_face=i32(mirror_faces(faces, g.mirror_vertex)),
        part_of_vertex=i32(g.part_of_vertex),
        shape_names=np.asarray(bases["shape_names"]), expression_names=np.asarray(bases["expression_names"]),
        shape_retained=f32(bases["shape_retained"]), expression_retained=f32(bases["expression_retained"]),
    )


def load_procedural_arrays(rebuild: bool = False) -> dict[str, np.ndarray]:
    """All arrays incl. extras (component names, part ids), from the cache when valid."""
    path = _cache_path()
    if path.exists() and not rebuild:
        try:
            with np.load(path) as z:
                return {k: z[k] for k in z.files}
        except Exception as e:  # noqa: BLE001 - a corrupt cache is rebuilt, and we say so
            logging.warning("procedural head cache %s is unreadable (%s); rebuilding", path, e)
    logging.info("building the procedural head (first use; cached at %s)", path)
    arrays = build_procedural_arrays()
    write_atomic(path, lambda f: np.savez(f, **arrays))
    return arrays


def load_procedural_head(rebuild: bool = False) -> HeadModel:
    """The embedded default head model (see `flexavatar_jax/head/README.md`)."""
    a = load_procedural_arrays(rebuild)
    return HeadModel(**{k: a[k] for k in _ARRAY_FIELDS}, name="procedural_v%d" % PROCEDURAL_HEAD_VERSION,
                     region_names=REGION_NAMES).validate()
