"""FLAME (2020 / 2023): chumpy-free reader, converted `.npz`, UV layout, regions, mirror tables.

FLAME (Li et al. 2017, https://flame.is.tue.mpg.de) is licensed and never shipped with this code;
the user downloads it and points `load_flame` at the files.

Files read
----------
* **Model pickle** — `generic_model.pkl` (FLAME 2020), `flame2023.pkl`, `flame2023_Open.pkl`.
  Python-2 pickles (read with `encoding="latin1"`) holding a dict:
  `v_template [V,3]`, `f [F,3]` uint32, `shapedirs [V,3,400]` (components 0..299 identity shape,
  300..399 expression), `posedirs [V,3,36]`, `J_regressor [5,V]` (a `scipy.sparse.csc_matrix`),
  `weights [V,5]`, `kintree_table [2,5]` (row 0 = parents, the root's parent stored as
  uint32 4294967295; row 1 = joint ids), plus `J`, `bs_style`, `bs_type` (unused). Several arrays
  (typically `shapedirs`, sometimes `v_template`, `J`) are `chumpy.ch.Ch` objects. The reader needs
  neither chumpy nor scipy: a restricted `pickle.Unpickler` substitutes stand-ins for chumpy and
  scipy.sparse classes, takes the ndarray stored under `x` in a chumpy object's pickled state, and
  densifies csc/csr/coo matrices from their pickled `data/indices/indptr` (or `row/col`) with numpy.
  Any other global (anything but numpy array reconstruction and a few builtins) is refused, so a
  malicious pickle cannot run code.
* **Flame-style npz** — an `.npz` with the same raw keys as the pickle (some projects ship FLAME
  that way; `J_regressor` then has to be dense, object arrays are not read).
* **UV layout** — `head_template_mesh.obj`, FLAME's texture-space mesh (`v`, `vt`, `f v/vt ...`
  lines). Its face vertex indices must equal the model's `f` row by row; `vt` and the per-face
  `vt` indices become `uv_coords`/`faces_uv` (more `vt` than `v`: vertices on seams are split).
  **Required** for a raw model: FLAME's pickle has no UV and we never invent one.
* **Region masks** (optional) — `FLAME_masks.pkl`: a dict of vertex-index arrays. Mapping to
  `REGION_NAMES`: face_skin <- face, scalp <- scalp, ears <- left_ear ∪ right_ear, neck <- neck,
  left_eye <- left_eyeball, right_eye <- right_eyeball, lips <- lips, nose <- nose. FLAME has no
  teeth, mouth interior or tongue geometry and no eyebrow mask, so `teeth`, `mouth_interior`,
  `tongue` and `eyebrows` stay empty (an eyebrow approximation such as forehead ∩ eye_region
  would be made-up data). A face is in a region when all three of its vertices are. Without the
  masks file every region is empty and a warning is logged — code that needs regions (dynamic
  UV masks, mouth losses) gets nothing for FLAME then.

Mapping to `HeadModel`
----------------------
`shapedirs[..., :num_shape]` and `exprdirs = shapedirs[..., 300:300+num_expression]` (defaults:
all 300 and all remaining, i.e. 100 for the official files); `posedirs` unchanged; `J_regressor`
dense `[5,V]`; `lbs_weights = weights`; `parents` from `kintree_table` (must be (-1,0,1,1,1)).
Arrays become float32 / int32 jax arrays.

Converted npz format (`save_npz` / `load_npz` / `convert_flame`), format version 1
---------------------------------------------------------------------------------
A plain `np.savez` archive (no pickled objects, `allow_pickle=False` reads it) holding
* every array field of `HeadModel` under its field name: `v_template, faces, shapedirs, exprdirs,
  posedirs, J_regressor, lbs_weights, uv_coords, faces_uv, vertex_regions, face_regions,
  mirror_vertex, mirror_face` (float32 / int32, shapes as documented in `HeadModel`);
* metadata: `format` = "flexavatar-head-model" (0-d str), `format_version` = 1 (0-d int),
  `name` (0-d str), `parents` (int32 [J]), `joint_names` and `region_names` (str [J] / [R]).
It stores any `HeadModel`, not only FLAME.

Mirror tables
-------------
FLAME is only approximately left-right symmetric, so `mirror_vertex` is computed: the nearest
vertex to each vertex's position reflected in the plane x = mean(x), then made an involution
(mutual nearest pairs are kept; the rest are re-paired among themselves, closest pair first).
`mirror_face[f]` is the face whose vertex set is the mirrored vertex set, or — where no such face
exists — the face whose centroid is nearest the mirrored corners' centroid. The number of
non-mutual vertices, of faces without an exact counterpart and the max/median mirror residual are
logged at load time. Residuals of the official FLAME 2020/2023 files could not be measured while
writing this (the files are not available here); read them from the log. A mesh that is exactly
symmetric (as the test mesh) gives zero residual, an exact involution and exact face mirrors.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import pickle
import re
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
from absl import logging

from flexavatar_jax.files import write_atomic
from flexavatar_jax.head.mesh_ops import mirror_faces, mirror_vertex_table
from flexavatar_jax.head.model import (
    FLAME_PARENTS,
    JOINT_NAMES,
    NUM_JOINTS,
    NUM_POSE_FEATURES,
    REGION_NAMES,
    HeadModel,
)

# FLAME's shapedirs hold 300 identity components followed by the expression components.
FLAME_NUM_SHAPE = 300
NPZ_FORMAT = "flexavatar-head-model"
NPZ_FORMAT_VERSION = 1

RAW_FLAME_KEYS = (
    "v_template", "f", "shapedirs", "posedirs", "J_regressor", "weights", "kintree_table",
)
ARRAY_FIELDS = tuple(f.name for f in dataclasses.fields(HeadModel) if not f.metadata.get("static"))
_FLOAT_FIELDS = ("v_template", "shapedirs", "exprdirs", "posedirs", "J_regressor", "lbs_weights",
                 "uv_coords")

# Our region <- union of FLAME_masks.pkl entries. Regions not listed stay empty (see docstring).
FLAME_MASKS_FOR_REGION = {
    "face_skin": ("face",),
    "scalp": ("scalp",),
    "ears": ("left_ear", "right_ear"),
    "neck": ("neck",),
    "left_eye": ("left_eyeball",),
    "right_eye": ("right_eyeball",),
    "lips": ("lips",),
    "nose": ("nose",),
}


# --------------------------------------------------------------------------------------------
# Restricted, chumpy-free unpickling.
# --------------------------------------------------------------------------------------------


class _PickledStandIn:
    """Takes the place of a chumpy or scipy.sparse object: keeps its pickled state only."""

    kind = ""
    pickled_class = ""

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __setstate__(self, state: Any) -> None:
        self.state = state


_SPARSE_FORMATS = ("csc", "csr", "coo")
_NUMPY_RECONSTRUCTORS = ("_reconstruct", "scalar", "ndarray", "dtype", "_frombuffer")
# find_class sees the names as written; Python 2 pickles spell copyreg / builtins the old way
# (the base class maps them when it imports).
_ALLOWED_GLOBALS = {
    ("_codecs", "encode"),  # how Python 3 protocol-2 pickles store bytes
    ("copyreg", "_reconstructor"),  # how protocol 0/1 pickles rebuild objects
    ("copy_reg", "_reconstructor"),
    *((m, n) for m in ("builtins", "__builtin__")
      for n in ("object", "set", "frozenset", "slice", "complex")),
}
_HAS_NUMPY_CORE_PRIVATE = importlib.util.find_spec("numpy._core") is not None


class _FlameUnpickler(pickle.Unpickler):
    """Allows numpy arrays and builtins; replaces chumpy / scipy.sparse classes by stand-ins."""

    def find_class(self, module: str, name: str) -> Any:
        root = module.split(".")[0]
        if root == "chumpy":
            return type("ChumpyStandIn", (_PickledStandIn,),
                        dict(kind="chumpy", pickled_class=f"{module}.{name}"))
        if module.startswith("scipy.sparse"):
            if name.split("_")[0] in _SPARSE_FORMATS and name.endswith(("_matrix", "_array")):
                return type("SparseStandIn", (_PickledStandIn,),
                            dict(kind="sparse", pickled_class=f"{module}.{name}"))
            raise pickle.UnpicklingError(f"unsupported scipy class {module}.{name}")
        if root == "numpy" and name in _NUMPY_RECONSTRUCTORS:
            # Old pickles name numpy.core.*, which numpy 2 only keeps as a deprecated alias.
            if _HAS_NUMPY_CORE_PRIVATE and module.startswith("numpy.core"):
                module = "numpy._core" + module[len("numpy.core"):]
            return super().find_class(module, name)
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"refusing to load global {module}.{name} (only numpy arrays, scipy sparse matrices "
            "and chumpy arrays are expected in a FLAME file)"
        )


def _check_file(path: str | os.PathLike, what: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path}")
    if not path.is_file():
        raise FileNotFoundError(f"{what} is not a file: {path}")
    return path


def _unpickle(path: str | os.PathLike, what: str) -> Any:
    path = _check_file(path, what)
    try:
        with path.open("rb") as fh:
            return _FlameUnpickler(fh, encoding="latin1").load()
    except MemoryError:
        raise
    except Exception as e:  # any failure here means the file is not a readable FLAME pickle
        raise ValueError(f"{path}: cannot read {what} ({type(e).__name__}: {e})") from e


def _chumpy_array(obj: _PickledStandIn, key: str, source: Path) -> np.ndarray:
    state = obj.state if isinstance(getattr(obj, "state", None), dict) else {}
    x = state.get("x")
    if isinstance(x, np.ndarray) and x.dtype != object:
        return x
    raise ValueError(
        f"{source}: {key!r} is a chumpy {obj.pickled_class} object without an array under 'x' "
        f"(pickled state keys: {sorted(state)}); only plain chumpy.ch.Ch arrays are supported — "
        "re-export the model with numpy arrays"
    )


def _densify_sparse(obj: _PickledStandIn, key: str, source: Path) -> np.ndarray:
    """Dense array from a pickled scipy csc/csr/coo matrix's state (duplicates are summed, as
    scipy's `toarray` does)."""
    fmt = obj.pickled_class.rsplit(".", 1)[1].split("_")[0]
    state = getattr(obj, "state", None)
    where = f"{source}: {key!r} ({obj.pickled_class})"
    if not isinstance(state, dict):
        raise ValueError(f"{where}: unexpected pickled state {type(state).__name__}")
    shape = state.get("_shape", state.get("shape"))
    try:
        shape = tuple(int(s) for s in shape)
        data = np.asarray(state["data"])
        if fmt == "coo":
            if "coords" in state:
                rows, cols = (np.asarray(c, np.int64) for c in state["coords"])
            else:
                rows, cols = np.asarray(state["row"], np.int64), np.asarray(state["col"], np.int64)
        else:
            indptr = np.asarray(state["indptr"], np.int64)
            indices = np.asarray(state["indices"], np.int64)
            n_major = shape[1] if fmt == "csc" else shape[0]
            if indptr.shape != (n_major + 1,) or indptr[-1] != indices.size:
                raise ValueError(f"indptr of shape {indptr.shape} does not fit {shape} / "
                                 f"{indices.size} entries")
            major = np.repeat(np.arange(n_major), np.diff(indptr))
            rows, cols = (indices, major) if fmt == "csc" else (major, indices)
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{where}: cannot densify ({type(e).__name__}: {e})") from e
    if len(shape) != 2 or not (data.size == rows.size == cols.size):
        raise ValueError(f"{where}: inconsistent sparse matrix (shape {shape}, {data.size} values, "
                         f"{rows.size} rows, {cols.size} cols)")
    if rows.size and (rows.min() < 0 or rows.max() >= shape[0] or cols.min() < 0
                      or cols.max() >= shape[1]):
        raise ValueError(f"{where}: sparse indices outside its shape {shape}")
    dense = np.zeros(shape, data.dtype)
    np.add.at(dense, (rows, cols), data)
    return dense


def _as_array(value: Any, key: str, source: Path) -> np.ndarray:
    if isinstance(value, _PickledStandIn):
        value = _chumpy_array(value, key, source) if value.kind == "chumpy" else _densify_sparse(
            value, key, source)
    if not isinstance(value, np.ndarray) or value.dtype == object:
        raise ValueError(f"{source}: {key!r} is a {type(value).__name__}, expected a numeric array")
    return value


def read_flame_arrays(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The raw FLAME arrays (`RAW_FLAME_KEYS`, file layout, dense numpy) of a `.pkl` or a
    flame-style `.npz`. Needs neither chumpy nor scipy."""
    path = _check_file(path, "FLAME model")
    if path.suffix.lower() == ".npz":
        raw = _read_npz(path, "FLAME model")
    else:
        raw = _unpickle(path, "FLAME model pickle")
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a dict of FLAME arrays, got {type(raw).__name__}")
    missing = [k for k in RAW_FLAME_KEYS if k not in raw]
    if missing:
        raise ValueError(f"{path}: missing FLAME keys {missing} (found {sorted(map(str, raw))})")
    return {k: _as_array(raw[k], k, path) for k in RAW_FLAME_KEYS}


def _read_npz(path: Path, what: str) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {k: archive[k] for k in archive.files}
    except Exception as e:
        raise ValueError(f"{path}: cannot read {what} npz ({type(e).__name__}: {e})") from e


# --------------------------------------------------------------------------------------------
# UV layout (head_template_mesh.obj) and region masks (FLAME_masks.pkl).
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ObjUVLayout:
    """Parsed texture-space obj: `uv_coords [T,2]`, `faces [F,3]` and `faces_uv [F,3]` (0-based),
    `num_vertices` = count of `v` lines (0 if the file has none)."""

    uv_coords: np.ndarray
    faces: np.ndarray
    faces_uv: np.ndarray
    num_vertices: int


def read_uv_obj(path: str | os.PathLike) -> ObjUVLayout:
    """Parses `v`, `vt` and triangle `f v/vt[/vn]` lines (1-based or negative relative indices)."""
    path = _check_file(path, "UV layout obj")
    try:
        lines = path.read_text(encoding="utf-8", errors="strict").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot read UV layout obj ({type(e).__name__}: {e})") from e
    num_v, uv, faces, faces_uv = 0, [], [], []
    for lineno, line in enumerate(lines, 1):
        tokens = line.split()
        if not tokens or tokens[0].startswith("#"):
            continue
        try:
            if tokens[0] == "v":
                num_v += 1
            elif tokens[0] == "vt":
                uv.append((float(tokens[1]), float(tokens[2])))
            elif tokens[0] == "f":
                if len(tokens) != 4:
                    raise ValueError(f"a face with {len(tokens) - 1} corners (only triangles)")
                corners = [t.split("/") for t in tokens[1:]]
                if any(len(c) < 2 or not c[1] for c in corners):
                    raise ValueError("a face corner without a texture (vt) index")
                vi = [int(c[0]) for c in corners]
                ti = [int(c[1]) for c in corners]
                if 0 in vi or 0 in ti:
                    raise ValueError("index 0 (obj indices start at 1)")
                # obj indices are 1-based; negative ones count back from the latest element.
                faces.append([i - 1 if i > 0 else num_v + i for i in vi])
                faces_uv.append([i - 1 if i > 0 else len(uv) + i for i in ti])
        except (ValueError, IndexError) as e:
            raise ValueError(f"{path}:{lineno}: cannot parse {line.strip()!r} ({e})") from e
    if not uv or not faces:
        raise ValueError(f"{path}: UV layout obj has {len(uv)} vt and {len(faces)} f lines; "
                         "both are needed")
    uv_coords = np.asarray(uv, np.float64)
    faces_uv_arr = np.asarray(faces_uv, np.int64)
    faces_arr = np.asarray(faces, np.int64)
    if faces_uv_arr.min() < 0 or faces_uv_arr.max() >= len(uv):
        raise ValueError(f"{path}: face texture indices outside the {len(uv)} vt entries")
    if num_v and (faces_arr.min() < 0 or faces_arr.max() >= num_v):
        raise ValueError(f"{path}: face vertex indices outside the {num_v} v entries")
    return ObjUVLayout(uv_coords, faces_arr, faces_uv_arr, num_v)


def _check_uv_layout(layout: ObjUVLayout, faces: np.ndarray, num_vertices: int, source: Path,
                     obj: Path) -> None:
    if layout.faces.shape != faces.shape:
        raise ValueError(f"{obj}: UV layout has {len(layout.faces)} faces, the model {source} has "
                         f"{len(faces)}; is this FLAME's head_template_mesh.obj for this model?")
    bad = np.flatnonzero(np.any(layout.faces != faces, axis=1))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"{obj}: {bad.size} faces have other vertex indices than the model "
                         f"{source} (first: face {i}, obj {layout.faces[i].tolist()} vs model "
                         f"{faces[i].tolist()})")
    if layout.num_vertices and layout.num_vertices != num_vertices:
        raise ValueError(f"{obj}: UV layout has {layout.num_vertices} vertices, the model "
                         f"{source} has {num_vertices}")
    outside = np.sum(np.any((layout.uv_coords < -1e-6) | (layout.uv_coords > 1 + 1e-6), axis=1))
    if outside:
        logging.warning("%s: %d UV coordinates lie outside [0,1]^2 (kept as they are)", obj,
                        outside)


def read_flame_masks(path: str | os.PathLike, num_vertices: int) -> dict[str, np.ndarray]:
    """`FLAME_masks.pkl` -> {mask name: sorted unique vertex indices} for the masks named in
    `FLAME_MASKS_FOR_REGION` (others are not read), checked against `num_vertices`."""
    path = _check_file(path, "FLAME masks")
    raw = _unpickle(path, "FLAME masks pickle")
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a dict of vertex index arrays, got "
                         f"{type(raw).__name__}")
    needed = sorted({m for names in FLAME_MASKS_FOR_REGION.values() for m in names})
    missing = [k for k in needed if k not in raw]
    if missing:
        raise ValueError(f"{path}: missing FLAME mask keys {missing} "
                         f"(found {sorted(map(str, raw))})")
    masks = {}
    for key in needed:
        idx = _as_array(raw[key], key, path)
        if idx.dtype == bool and idx.shape == (num_vertices,):
            idx = np.flatnonzero(idx)
        if not np.issubdtype(idx.dtype, np.integer) or idx.ndim != 1:
            raise ValueError(f"{path}: mask {key!r} has dtype {idx.dtype} and shape {idx.shape}, "
                             "expected a 1-D vertex index array")
        if idx.size and (idx.min() < 0 or idx.max() >= num_vertices):
            raise ValueError(f"{path}: mask {key!r} has indices outside [0, {num_vertices})")
        masks[str(key)] = np.unique(idx.astype(np.int64))
    return masks


def _region_masks(masks: dict[str, np.ndarray] | None, faces: np.ndarray, num_vertices: int,
                  source: Path) -> tuple[np.ndarray, np.ndarray]:
    vertex_regions = np.zeros(num_vertices, np.int32)
    if masks is None:
        logging.warning("%s: no FLAME_masks.pkl given, all head-model regions are empty "
                        "(region-dependent masks and losses see nothing)", source)
    else:
        for region, names in FLAME_MASKS_FOR_REGION.items():
            for m in names:
                vertex_regions[masks[m]] |= np.int32(1 << REGION_NAMES.index(region))
    # A face is in a region when all three corners are: AND of the corner bit masks.
    face_regions = np.bitwise_and.reduce(vertex_regions[faces], axis=1).astype(np.int32)
    return vertex_regions, face_regions


# --------------------------------------------------------------------------------------------
# Building the HeadModel.
# --------------------------------------------------------------------------------------------


def _expect_shape(a: np.ndarray, key: str, shape: tuple[int | None, ...], source: Path) -> None:
    if a.ndim != len(shape) or any(s is not None and s != g for s, g in zip(shape, a.shape)):
        want = "[" + ",".join("*" if s is None else str(s) for s in shape) + "]"
        raise ValueError(f"{source}: {key} has shape {list(a.shape)}, expected {want}")


def _resolve_counts(total: int, num_shape: int | None, num_expression: int | None,
                    source: Path) -> tuple[int, int]:
    if total < FLAME_NUM_SHAPE:
        raise ValueError(f"{source}: shapedirs has {total} components, FLAME files have "
                         f"{FLAME_NUM_SHAPE} shape components followed by the expression ones")
    avail_expr = total - FLAME_NUM_SHAPE
    num_shape = FLAME_NUM_SHAPE if num_shape is None else int(num_shape)
    num_expression = avail_expr if num_expression is None else int(num_expression)
    if not 0 <= num_shape <= FLAME_NUM_SHAPE:
        raise ValueError(f"{source}: asked for {num_shape} shape components, the file has "
                         f"{FLAME_NUM_SHAPE}")
    if not 0 <= num_expression <= avail_expr:
        raise ValueError(f"{source}: asked for {num_expression} expression components, the file "
                         f"has {avail_expr}")
    return num_shape, num_expression


def _parents_from_kintree(kintree: np.ndarray, source: Path) -> tuple[int, ...]:
    _expect_shape(kintree, "kintree_table", (2, NUM_JOINTS), source)
    table = kintree.astype(np.int64)
    # The root's parent is stored as uint32 4294967295 (-1 as int32): out of range means none.
    parents = tuple(int(p) if 0 <= p < NUM_JOINTS else -1 for p in table[0])
    if parents != FLAME_PARENTS or not np.array_equal(table[1], np.arange(NUM_JOINTS)):
        raise ValueError(f"{source}: kintree_table {table.tolist()} gives parents {parents}, "
                         f"expected FLAME's {FLAME_PARENTS} over joints 0..{NUM_JOINTS - 1}")
    return parents


def flame_model_name(path: str | os.PathLike) -> str:
    """"flame2020" for generic_model.pkl, "flame2023" / "flame2023_open" for the 2023 files, the
    year found in the file or folder name otherwise, else "flame"."""
    path = Path(path)
    text = f"{path.parent.name}/{path.stem}".lower()
    years = re.findall(r"(?<!\d)(20\d\d)(?!\d)", path.stem) or re.findall(
        r"(?<!\d)(20\d\d)(?!\d)", path.parent.name)
    if years:
        return f"flame{years[-1]}" + ("_open" if "open" in path.stem.lower() else "")
    if "generic_model" in text:
        logging.info("%s: naming the model flame2020 (FLAME 2020 ships generic_model.pkl; pass "
                     "name=... for FLAME 2017)", path)
        return "flame2020"
    return "flame"


def flame_model_from_arrays(raw: dict[str, np.ndarray], uv: ObjUVLayout,
                            masks: dict[str, np.ndarray] | None = None, *,
                            num_shape: int | None = None, num_expression: int | None = None,
                            name: str = "flame", source: str | os.PathLike = "<arrays>",
                            uv_source: str | os.PathLike = "<obj>") -> HeadModel:
    """A validated `HeadModel` from raw FLAME arrays (`read_flame_arrays` layout)."""
    source, uv_source = Path(source), Path(uv_source)
    v_template = raw["v_template"]
    _expect_shape(v_template, "v_template", (None, 3), source)
    v = v_template.shape[0]
    faces = raw["f"]
    _expect_shape(faces, "f", (None, 3), source)
    if not np.issubdtype(faces.dtype, np.integer):
        raise ValueError(f"{source}: f has dtype {faces.dtype}, expected integer vertex indices")
    faces = faces.astype(np.int64)
    if faces.size and (faces.min() < 0 or faces.max() >= v):
        raise ValueError(f"{source}: f has vertex indices outside [0, {v})")
    shapedirs = raw["shapedirs"]
    _expect_shape(shapedirs, "shapedirs", (v, 3, None), source)
    # FLAME's posedirs [V,3,36] is used as `offset[v,c] = sum_p posedirs[v,c,p] * feature[p]`
    # with feature = (R_1..R_4 - I) flattened row-major, joint-major — SMPL's convention (the
    # reference code reshapes it to [V*3,36] and multiplies by the same feature). `skinning.lbs`
    # computes exactly einsum("vcp,p", posedirs, (R[1:] - I).reshape(-1)), so it is kept as stored.
    posedirs = raw["posedirs"]
    _expect_shape(posedirs, "posedirs", (v, 3, NUM_POSE_FEATURES), source)
    j_regressor = raw["J_regressor"]
    _expect_shape(j_regressor, "J_regressor", (NUM_JOINTS, v), source)
    weights = raw["weights"]
    _expect_shape(weights, "weights", (v, NUM_JOINTS), source)
    parents = _parents_from_kintree(raw["kintree_table"], source)
    num_shape, num_expression = _resolve_counts(shapedirs.shape[-1], num_shape, num_expression,
                                                source)
    _check_uv_layout(uv, faces, v, source, uv_source)
    if masks is not None:
        for side, sign in (("left_eyeball", 1.0), ("right_eyeball", -1.0)):
            if masks[side].size and sign * v_template[masks[side], 0].mean() < 0:
                logging.warning("%s: FLAME mask %s lies at x %s 0, but the subject's left is +x "
                                "in this code base", source, side, "<" if sign > 0 else ">")
    vertex_regions, face_regions = _region_masks(masks, faces, v, source)
    mirror_vertex = mirror_vertex_table(v_template)
    mirror_face = mirror_faces(faces, mirror_vertex, v_template)

    f32 = lambda a: jnp.asarray(np.asarray(a, np.float32))  # noqa: E731
    i32 = lambda a: jnp.asarray(np.asarray(a, np.int32))  # noqa: E731
    model = HeadModel(
        v_template=f32(v_template),
        faces=i32(faces),
        shapedirs=f32(shapedirs[..., :num_shape]),
        exprdirs=f32(shapedirs[..., FLAME_NUM_SHAPE:FLAME_NUM_SHAPE + num_expression]),
        posedirs=f32(posedirs),
        J_regressor=f32(j_regressor),
        lbs_weights=f32(weights),
        uv_coords=f32(uv.uv_coords),
        faces_uv=i32(uv.faces_uv),
        vertex_regions=i32(vertex_regions),
        face_regions=i32(face_regions),
        mirror_vertex=i32(mirror_vertex),
        mirror_face=i32(mirror_face),
        name=name,
        parents=parents,
        joint_names=JOINT_NAMES,
        region_names=REGION_NAMES,
    )
    return model.validate()


# --------------------------------------------------------------------------------------------
# Public entry points.
# --------------------------------------------------------------------------------------------


def _is_converted_npz(path: Path) -> bool:
    try:
        with np.load(path, allow_pickle=False) as archive:
            return "format" in archive.files
    except Exception as e:
        raise ValueError(f"{path}: cannot read npz ({type(e).__name__}: {e})") from e


def load_flame(path: str | os.PathLike, uv_obj: str | os.PathLike | None = None, *,
               masks_pkl: str | os.PathLike | None = None, num_shape: int | None = None,
               num_expression: int | None = None, name: str | None = None) -> HeadModel:
    """Loads FLAME as a validated `HeadModel`.

    * `.pkl` or flame-style `.npz` (raw FLAME keys): `uv_obj` (FLAME's `head_template_mesh.obj`)
      is required; `masks_pkl` (`FLAME_masks.pkl`) is optional (without it regions are empty).
      `num_shape` defaults to all 300 identity components, `num_expression` to all the file has
      (100 for the official files).
    * our converted `.npz` (`convert_flame` / `save_npz`): UV, regions and mirrors are inside, so
      `uv_obj` / `masks_pkl` must not be given; `num_shape`/`num_expression` may truncate.
    `name` defaults to `flame_model_name(path)` (raw files) or the stored name (converted files).
    """
    path = _check_file(path, "FLAME model")
    if path.suffix.lower() == ".npz" and _is_converted_npz(path):
        if uv_obj is not None or masks_pkl is not None:
            raise ValueError(f"{path}: a converted head model already holds UV and regions; "
                             "do not pass uv_obj / masks_pkl")
        model = load_npz(path)
        return truncate_components(model, num_shape, num_expression, name)
    if path.suffix.lower() not in (".pkl", ".npz"):
        raise ValueError(f"{path}: unknown FLAME file type {path.suffix!r} (expected .pkl or .npz)")
    if uv_obj is None:
        raise ValueError(
            f"{path}: FLAME files carry no UV layout; pass uv_obj= FLAME's head_template_mesh.obj "
            "(the texture-space mesh from the FLAME website); no UV layout is ever made up"
        )
    uv_path = _check_file(uv_obj, "UV layout obj")
    raw = read_flame_arrays(path)
    uv = read_uv_obj(uv_path)
    masks = None
    if masks_pkl is not None:
        masks = read_flame_masks(masks_pkl, raw["v_template"].shape[0])
    return flame_model_from_arrays(
        raw, uv, masks, num_shape=num_shape, num_expression=num_expression,
        name=name or flame_model_name(path), source=path, uv_source=uv_path,
    )


def truncate_components(model: HeadModel, num_shape: int | None = None,
                        num_expression: int | None = None, name: str | None = None) -> HeadModel:
    """Keeps the first `num_shape` / `num_expression` components (None keeps all)."""
    for what, n, have in (("shape", num_shape, model.num_shape),
                          ("expression", num_expression, model.num_expression)):
        if n is not None and not 0 <= n <= have:
            raise ValueError(f"{model.name}: asked for {n} {what} components, the model has {have}")
    return dataclasses.replace(
        model,
        shapedirs=model.shapedirs if num_shape is None else model.shapedirs[..., :num_shape],
        exprdirs=model.exprdirs if num_expression is None else model.exprdirs[..., :num_expression],
        name=name or model.name,
    )


def save_npz(model: HeadModel, path: str | os.PathLike) -> None:
    """Writes `model` in the converted npz format (see module docstring), atomically."""
    model.validate()
    path = Path(path)
    arrays = {}
    for field in ARRAY_FIELDS:
        dtype = np.float32 if field in _FLOAT_FIELDS else np.int32
        arrays[field] = np.asarray(getattr(model, field), dtype)
    arrays.update(
        format=np.asarray(NPZ_FORMAT),
        format_version=np.asarray(NPZ_FORMAT_VERSION, np.int32),
        name=np.asarray(model.name),
        parents=np.asarray(model.parents, np.int32),
        joint_names=np.asarray(model.joint_names, dtype=str),
        region_names=np.asarray(model.region_names, dtype=str),
    )
    write_atomic(path, lambda fh: np.savez(fh, **arrays))  # a file object: numpy appends no ".npz"


def load_npz(path: str | os.PathLike) -> HeadModel:
    """Reads a converted head-model npz (see module docstring) as a validated `HeadModel`."""
    path = _check_file(path, "head model npz")
    data = _read_npz(path, "head model")
    if "format" not in data:
        hint = (" (it looks like a raw flame-style npz: use load_flame(path, uv_obj=...))"
                if all(k in data for k in RAW_FLAME_KEYS) else "")
        raise ValueError(f"{path}: not a converted head model npz, no 'format' key{hint}")
    version = int(data.get("format_version", -1))
    if str(data["format"]) != NPZ_FORMAT or version != NPZ_FORMAT_VERSION:
        raise ValueError(f"{path}: format {str(data['format'])!r} version "
                         f"{data.get('format_version')}, expected {NPZ_FORMAT!r} version "
                         f"{NPZ_FORMAT_VERSION}")
    needed = (*ARRAY_FIELDS, "name", "parents", "joint_names", "region_names")
    missing = [k for k in needed if k not in data]
    if missing:
        raise ValueError(f"{path}: missing keys {missing}")
    arrays = {}
    for field in ARRAY_FIELDS:
        a = data[field]
        want = np.float32 if field in _FLOAT_FIELDS else np.int32
        if not np.can_cast(a.dtype, want, casting="same_kind"):
            raise ValueError(f"{path}: {field} has dtype {a.dtype}, expected {np.dtype(want)}")
        arrays[field] = jnp.asarray(a.astype(want, copy=False))
    model = HeadModel(
        **arrays,
        name=str(data["name"]),
        parents=tuple(int(p) for p in data["parents"]),
        joint_names=tuple(str(s) for s in data["joint_names"]),
        region_names=tuple(str(s) for s in data["region_names"]),
    )
    try:
        return model.validate()
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e


def convert_flame(pkl_path: str | os.PathLike, obj_path: str | os.PathLike,
                  out_npz: str | os.PathLike, *, masks_pkl: str | os.PathLike | None = None,
                  num_shape: int | None = None, num_expression: int | None = None,
                  name: str | None = None) -> HeadModel:
    """FLAME pickle (or flame-style npz) + UV obj (+ masks) -> converted npz; returns the model."""
    model = load_flame(pkl_path, obj_path, masks_pkl=masks_pkl, num_shape=num_shape,
                       num_expression=num_expression, name=name)
    save_npz(model, out_npz)
    return model
