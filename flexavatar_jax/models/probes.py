"""Probes: what the default lifter's Structured Head Queries attend to.

`view_attention(system, params, views)` runs the reconstruction network once with the attention
weights recorded (`Attention` sows them only when asked) and returns, for every cross-attention
block of the `queries` lifter, the attention mass each query puts on each input view's tokens
(summed over the view's patch tokens, averaged over heads): `[blocks, b, G·G, v]`, each query's
row summing to 1 over the real views.

With `query_azimuths` (the azimuth of the template point behind each query, degrees, 0 = the
face direction) and the input cameras' azimuths, `mass_by_angle` bins that mass by the angle
between where a query's surface point faces and where each camera stands: a lifter that uses
the views geometrically puts more mass on the views that see the point (small angles) than the
1/v share of a lifter that does not.

`patch_attention` keeps the mass per patch token, and `query_pixels` says where each query's
surface point lies in each input image (its texel on the head mesh posed by the input's tracked
params, through the input camera). `localisation` then measures how much of a query's mass within
a view falls on the patches around that point, against the share of those patches: the
correspondence a projection lifter (Dual-UV) is given in closed form, and the queries must learn.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float

from flexavatar_jax.head import lbs
from flexavatar_jax.head import uv as uvt
from flexavatar_jax.models.avatar import FlexAvatar, FlexAvatarNet
from flexavatar_jax.models.head_queries import query_directions, template_points
from flexavatar_jax.models.views import InputViews, require
from flexavatar_jax.render.camera import camera_center, project_points


def _find(tree, name: str, path=()):
    """Every (path, value) whose key is `name` in a nested dict."""
    if isinstance(tree, dict):
        for k, v in tree.items():
            if k == name:
                yield (*path, k), v
            else:
                yield from _find(v, name, (*path, k))


def patch_attention(system: FlexAvatar, params: dict, views: InputViews) -> Float[Array, "l b q v hp wp"]:
    """Attention mass per (cross-attention block, row, query, input view, patch row, patch column) of
    the `queries` lifter, averaged over heads; each query's mass sums to 1 over the real views."""
    if system.cfg.lifter_type != "queries":
        raise ValueError(f"the attention probes read the 'queries' lifter, the model uses {system.cfg.lifter_type!r}")
    _, state = system.net.apply({"params": params}, views, False, method=FlexAvatarNet.reconstruct,
                                mutable=["intermediates"])
    lifter = state["intermediates"]["lifter"]
    blocks = sorted((path, w) for path, w in _find(lifter, "weights") if path[0].startswith("cross_")
                    and path[1] == "cross_attn")
    if not blocks:
        raise ValueError("no cross-attention weights were recorded")
    b, v = views.mask.shape
    hp = wp = system.image_size // system.cfg.encoder.patch_size
    out = []
    for _, (weights,) in blocks:  # sow keeps a tuple of the calls' values
        per_token = jnp.mean(weights, axis=1)  # [b, q, t] averaged over heads
        out.append(per_token.reshape(b, per_token.shape[1], v, hp, wp))
    return jnp.stack(out)


def view_attention(system: FlexAvatar, params: dict, views: InputViews) -> Float[Array, "l b q v"]:
    """Attention mass per (cross-attention block, row, query, input view) of the `queries` lifter."""
    return patch_attention(system, params, views).sum(axis=(-2, -1))


def query_pixels(system: FlexAvatar, views: InputViews) -> tuple[Float[Array, "b v q 2"], Bool[Array, "b v q"]]:
    """Where each query's surface point is in each input image: (pixel coordinates, pixel centres
    at +0.5; `seen`: a real view, in front of the camera, inside the image, and the point's face
    turned towards the camera — self-occlusion by other parts of the head is not tested). The
    point is the query's texel on the head mesh posed by the view's tracked params."""
    require(views, "query_pixels", "viewmats", "Ks", "params")
    table = uvt.texel_table(system.head, system.cfg.grid)
    faces = np.asarray(system.head.faces)[np.maximum(table.face, 0)].reshape(-1, 3)  # [q, 3]
    bary = jnp.asarray(table.bary.reshape(-1, 3), jnp.float32)
    valid = jnp.asarray(table.valid.reshape(-1))
    size = system.image_size

    def one(params, viewmat, K):
        corners = lbs(system.head, params).vertices[faces]  # [q, 3, 3]
        points = jnp.einsum("qc,qcd->qd", bary, corners)
        normals = jnp.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
        pixels, depth = project_points(points, viewmat, K)
        to_camera = camera_center(viewmat) - points
        inside = jnp.all((pixels >= 0) & (pixels < size), axis=-1)
        return pixels, valid & (depth > 0) & inside & (jnp.sum(normals * to_camera, -1) > 0)

    per_view = jax.vmap(jax.vmap(one))
    pixels, seen = per_view(views.params, views.viewmats, views.Ks)
    return pixels, seen & views.mask[:, :, None]


def localisation(mass: np.ndarray, pixels: np.ndarray, seen: np.ndarray, patch_size: int,
                 radius: int = 0) -> dict[str, float]:
    """Of a query's attention within one view (`mass [b, q, v, hp, wp]` renormalised over that
    view's patches), the mean fraction on the patches within `radius` (Chebyshev, in patches) of
    the patch its point falls in (`pixels [b, v, q, 2]`, over the `seen` (b, v, q)), and `chance`:
    the mean share of those patches among the view's (what attention blind to positions gets)."""
    b, q, v, hp, wp = mass.shape
    per_view = mass / np.maximum(mass.sum(axis=(-2, -1), keepdims=True), 1e-30)
    col = np.floor(pixels[..., 0] / patch_size).astype(int)  # [b, v, q]
    row = np.floor(pixels[..., 1] / patch_size).astype(int)
    rr, cc = np.arange(hp)[:, None], np.arange(wp)[None, :]
    near_mass, chance = [], []
    for i, k, j in zip(*np.nonzero(seen)):
        near = (np.abs(rr - row[i, k, j]) <= radius) & (np.abs(cc - col[i, k, j]) <= radius)
        near_mass.append(float(per_view[i, j, k][near].sum()))
        chance.append(float(near.mean()))
    if not near_mass:
        raise ValueError("localisation: no query point is seen by any view")
    return {"mass": float(np.mean(near_mass)), "chance": float(np.mean(chance)), "count": len(near_mass)}


def query_azimuths(system: FlexAvatar) -> tuple[np.ndarray, np.ndarray]:
    """(azimuth in degrees of each query's template point about the vertical axis through the
    template's centre, 0 = facing +z (and for queries off the UV charts); valid mask) for the G·G
    queries."""
    directions = query_directions(system.head, system.cfg.grid)  # unit (p − centre), 0 off the charts
    valid = np.asarray(template_points(system.head, system.cfg.grid)[1]).reshape(-1)
    return np.rad2deg(np.arctan2(directions[:, 0], directions[:, 2])), valid


def mass_by_angle(mass: np.ndarray, query_az: np.ndarray, query_valid: np.ndarray, view_az: np.ndarray,
                  view_mask: np.ndarray, bins: np.ndarray) -> dict[str, np.ndarray]:
    """Mean attention mass per view (`mass [b, q, v]`) binned by |query azimuth − view azimuth|
    (wrapped to [0°, 180°]), over valid queries and real views; also the count per bin and the
    mean 1/v share a view-blind lifter would give."""
    diff = np.abs((query_az[None, :, None] - view_az[:, None, :] + 180.0) % 360.0 - 180.0)  # [b, q, v]
    use = query_valid[None, :, None] & view_mask[:, None, :]
    share = np.broadcast_to((1.0 / view_mask.sum(axis=1))[:, None, None], diff.shape)
    idx = np.digitize(diff, bins) - 1
    means, shares, counts = [], [], []
    for k in range(len(bins) - 1):
        sel = use & (idx == k)
        counts.append(int(sel.sum()))
        means.append(float(mass[sel].mean()) if sel.any() else float("nan"))
        shares.append(float(share[sel].mean()) if sel.any() else float("nan"))
    return {"bins": bins, "mass": np.array(means), "uniform": np.array(shares), "count": np.array(counts)}


__all__ = ["localisation", "mass_by_angle", "patch_attention", "query_azimuths", "query_pixels", "view_attention"]
