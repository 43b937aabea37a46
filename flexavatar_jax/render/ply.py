"""Gaussians <-> standard 3DGS `.ply` (the file layout of the INRIA 3D Gaussian Splatting code).

The file is a binary little-endian PLY with one `vertex` element whose float32 properties are,
in this order::

    x y z  nx ny nz  f_dc_0 f_dc_1 f_dc_2  opacity  scale_0 scale_1 scale_2  rot_0 rot_1 rot_2 rot_3
    [extra_0 ...]                                  (optional per-Gaussian scalars, appended)

This is what SuperSplat, the SIBR viewer and antimatter15/splat expect. Each stored quantity is
the *pre-activation* value the INRIA trainer keeps, so a viewer re-applies the activations:

* `f_dc = (rgb - 0.5) / C0` — degree-0 spherical-harmonic coefficient; viewers evaluate
  `0.5 + C0 * f_dc` (we export no higher SH bands, so colours are view-independent).
* `opacity = logit(o)` — viewers apply a sigmoid.
* `scale_i = log(sigma_i)` — viewers apply exp; sigma is the linear standard deviation.
* `rot = (w, x, y, z)` unit quaternion (`rot_0` is w), the same wxyz order as our `quats`.
* `nx ny nz` are unused by 3DGS and written as zeros (the original trainer writes them too).

Our in-memory convention (the renderer's inputs): `means [N,3]`, `quats [N,4]` wxyz, `scales [N,3]` linear,
`opacities [N]` in [0,1], `colors [N,3]` RGB in [0,1].
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

import numpy as np
from jaxtyping import Float

from flexavatar_jax.files import write_atomic

# Degree-0 real spherical harmonic, 1 / (2 sqrt(pi)).
SH_C0 = 0.28209479177387814

# Opacities of exactly 0 or 1 have infinite logits; these are the stored bounds. 1e-6 is far below
# the renderer's 1/255 alpha skip and far above float32 underflow of the sigmoid.
OPACITY_EPS = 1e-6

PLY_PROPERTIES: tuple[str, ...] = (
    "x", "y", "z",
    "nx", "ny", "nz",
    "f_dc_0", "f_dc_1", "f_dc_2",
    "opacity",
    "scale_0", "scale_1", "scale_2",
    "rot_0", "rot_1", "rot_2", "rot_3",
)  # fmt: skip

# Files written by other tools may omit the (unused) normals; everything else is needed.
_REQUIRED_ON_READ = tuple(p for p in PLY_PROPERTIES if p not in ("nx", "ny", "nz"))
_FLOAT_TYPES = ("float", "float32")
_PROPERTY_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _checked(name: str, value, shape: tuple[int | None, ...]) -> np.ndarray:
    """`value` as float64 with the given shape (None = any length, must match N elsewhere)."""
    array = np.asarray(value, dtype=np.float64)
    if array.ndim != len(shape) or any(s is not None and a != s for a, s in zip(array.shape, shape)):
        want = "[" + ",".join("N" if s is None else str(s) for s in shape) + "]"
        raise ValueError(f"gaussians[{name!r}] must have shape {want}, got {list(array.shape)}")
    if not np.all(np.isfinite(array)):
        bad = int(np.count_nonzero(~np.isfinite(array)))
        raise ValueError(f"gaussians[{name!r}] has {bad} non-finite values (NaN or inf)")
    return array


def export_ply(
    path: str | os.PathLike,
    gaussians: Mapping[str, Float[np.ndarray, "..."]],
    extra: Mapping[str, Float[np.ndarray, " n"]] | None = None,
) -> int:
    """Write Gaussians to a standard 3DGS binary `.ply`; returns the number of Gaussians written.

    Args:
      path: output file (parent folders are created).
      gaussians: `means [N,3]` (metres), `quats [N,4]` wxyz (any non-zero norm; normalised here),
        `scales [N,3]` linear standard deviations (> 0), `opacities [N]` in [0,1], `colors [N,3]`
        RGB (normally in [0,1]; other finite values are stored as-is and viewers clamp after SH
        evaluation). numpy or jax arrays.
      extra: optional per-Gaussian scalars `{name: [N]}`, appended as float32 properties after
        `rot_3` in the given order (viewers ignore unknown properties).

    Opacities are clamped to [OPACITY_EPS, 1 - OPACITY_EPS] before the logit, because 0 and 1 map
    to -inf/+inf; this is the only value change besides quaternion normalisation and float32
    rounding. Wrong shapes, non-finite values, opacities outside [0,1], non-positive scales and
    zero quaternions raise ValueError naming the array.
    """
    missing = [k for k in ("means", "quats", "scales", "opacities", "colors") if k not in gaussians]
    if missing:
        raise ValueError(f"gaussians is missing {missing}; has {sorted(gaussians)}")
    means = _checked("means", gaussians["means"], (None, 3))
    n = means.shape[0]
    quats = _checked("quats", gaussians["quats"], (n, 4))
    scales = _checked("scales", gaussians["scales"], (n, 3))
    opacities = _checked("opacities", gaussians["opacities"], (n,))
    colors = _checked("colors", gaussians["colors"], (n, 3))

    quat_norm = np.linalg.norm(quats, axis=-1, keepdims=True)
    if np.any(quat_norm < 1e-12):
        raise ValueError(f"gaussians['quats'] has {int(np.sum(quat_norm < 1e-12))} zero quaternions")
    if np.any(scales <= 0):
        raise ValueError(
            f"gaussians['scales'] must be > 0 (stored as log), min is {scales.min():.3g}"
        )
    if np.any((opacities < 0) | (opacities > 1)):
        raise ValueError(
            "gaussians['opacities'] must lie in [0,1], "
            f"range is [{opacities.min():.3g}, {opacities.max():.3g}]"
        )

    extra = dict(extra or {})
    extra_columns = []
    for name, value in extra.items():
        if not _PROPERTY_NAME.match(name) or name in PLY_PROPERTIES:
            raise ValueError(f"extra property name {name!r} is not a valid new PLY property name")
        extra_columns.append(_checked(f"extra.{name}", value, (n,))[:, None])

    opacity = np.clip(opacities, OPACITY_EPS, 1.0 - OPACITY_EPS)
    columns = [
        means,
        np.zeros((n, 3)),
        (colors - 0.5) / SH_C0,
        (np.log(opacity) - np.log1p(-opacity))[:, None],
        np.log(scales),
        quats / quat_norm,
        *extra_columns,
    ]
    # Compute in float64, round once: the stored values are the float32 nearest to exact.
    table = np.ascontiguousarray(np.concatenate(columns, axis=1), dtype="<f4")

    names = PLY_PROPERTIES + tuple(extra)
    header = "\n".join(
        [
            "ply",
            "format binary_little_endian 1.0",
            f"element vertex {n}",
            *(f"property float {name}" for name in names),
            "end_header",
        ]
    )
    write_atomic(path, (header + "\n").encode("ascii") + table.tobytes())
    return n


def _parse_header(path: str | os.PathLike, raw: bytes) -> tuple[int, list[str], int]:
    """(vertex count, property names, byte offset of the data) of a 3DGS PLY, else ValueError."""
    end = raw.find(b"end_header\n")
    if not raw.startswith(b"ply\n") or end < 0:
        raise ValueError(f"{path}: not a PLY file (no 'ply' magic line or no 'end_header')")
    lines = raw[:end].decode("ascii", errors="replace").splitlines()
    count, names, element = None, [], None
    fmt = None
    for line in lines[1:]:
        words = line.split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        if words[0] == "format":
            fmt = " ".join(words[1:])
            # Checked here so an ascii/big-endian file is reported as such, not by a later symptom.
            if fmt != "binary_little_endian 1.0":
                raise ValueError(
                    f"{path}: format is {fmt!r}; only 'binary_little_endian 1.0' is supported"
                )
        elif words[0] == "element":
            element = words[1] if len(words) > 1 else ""
            if element != "vertex":
                raise ValueError(
                    f"{path}: unexpected PLY element {element!r}; a 3DGS file has only 'vertex'"
                )
            if len(words) != 3 or not words[2].isdigit():
                raise ValueError(f"{path}: malformed element line {line!r}")
            count = int(words[2])
        elif words[0] == "property":
            if element != "vertex":
                raise ValueError(f"{path}: property before the 'vertex' element: {line!r}")
            if len(words) != 3 or words[1] not in _FLOAT_TYPES:
                raise ValueError(f"{path}: only float32 properties are supported, got {line!r}")
            names.append(words[2])
        else:
            raise ValueError(f"{path}: unexpected PLY header line {line!r}")
    if fmt is None:
        raise ValueError(f"{path}: no 'format' line in the PLY header")
    if count is None:
        raise ValueError(f"{path}: no 'element vertex' in the header")
    missing = [p for p in _REQUIRED_ON_READ if p not in names]
    if missing:
        raise ValueError(f"{path}: not a 3DGS PLY, missing properties {missing}")
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: duplicate property names in {names}")
    return count, names, end + len(b"end_header\n")


def read_ply(path: str | os.PathLike) -> dict[str, np.ndarray | dict[str, np.ndarray]]:
    """Read a 3DGS binary `.ply` back into our convention (inverse of `export_ply`).

    Returns float32 numpy arrays `means [N,3]`, `quats [N,4]` wxyz (normalised), `scales [N,3]`
    linear, `opacities [N]` in (0,1), `colors [N,3]` (= 0.5 + C0 * f_dc, not clamped), and
    `extra`: `{name: [N]}` for every other property except the normals (e.g. our extras, or the
    `f_rest_*` higher SH bands of a file trained elsewhere, which are returned but not applied).

    Raises FileNotFoundError for a missing file and ValueError for anything that is not such a
    PLY (ascii or big-endian format, non-float properties, missing properties, truncated data).
    """
    with open(path, "rb") as f:
        raw = f.read()
    n, names, offset = _parse_header(path, raw)
    expected = offset + n * len(names) * 4
    if len(raw) != expected:
        raise ValueError(
            f"{path}: data has {len(raw) - offset} bytes, expected {n} x {len(names)} x 4 = "
            f"{expected - offset} (truncated or not a 3DGS PLY)"
        )
    table = np.frombuffer(raw, dtype="<f4", count=n * len(names), offset=offset).reshape(n, len(names))
    col = {name: table[:, i].astype(np.float64) for i, name in enumerate(names)}

    def stack(*keys: str) -> np.ndarray:
        return np.stack([col[k] for k in keys], axis=-1)

    quats = stack("rot_0", "rot_1", "rot_2", "rot_3")
    norm = np.linalg.norm(quats, axis=-1, keepdims=True)
    # Other exporters may store unnormalised rotations; a zero one stays zero rather than NaN.
    quats = np.where(norm > 0, quats / np.where(norm > 0, norm, 1.0), quats)
    out: dict[str, np.ndarray | dict[str, np.ndarray]] = {
        "means": stack("x", "y", "z"),
        "quats": quats,
        "scales": np.exp(stack("scale_0", "scale_1", "scale_2")),
        # Sigmoid written as 0.5(1 + tanh(x/2)): no overflow warnings for large |logit|.
        "opacities": 0.5 * (1.0 + np.tanh(0.5 * col["opacity"])),
        "colors": 0.5 + SH_C0 * stack("f_dc_0", "f_dc_1", "f_dc_2"),
    }
    out = {k: v.astype(np.float32) for k, v in out.items()}
    out["extra"] = {
        name: table[:, i].copy() for i, name in enumerate(names) if name not in PLY_PROPERTIES
    }
    return out
