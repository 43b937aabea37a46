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
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from flexavatar_jax.models.avatar import FlexAvatar, FlexAvatarNet
from flexavatar_jax.models.head_queries import query_directions, template_points
from flexavatar_jax.models.views import InputViews


def _find(tree, name: str, path=()):
    """Every (path, value) whose key is `name` in a nested dict."""
    if isinstance(tree, dict):
        for k, v in tree.items():
            if k == name:
                yield (*path, k), v
            else:
                yield from _find(v, name, (*path, k))


def view_attention(system: FlexAvatar, params: dict, views: InputViews) -> Float[Array, "l b q v"]:
    """Attention mass per (cross-attention block, row, query, input view) of the `queries` lifter."""
    if system.cfg.lifter_type != "queries":
        raise ValueError(f"view_attention probes the 'queries' lifter, the model uses {system.cfg.lifter_type!r}")
    _, state = system.net.apply({"params": params}, views, False, method=FlexAvatarNet.reconstruct,
                                mutable=["intermediates"])
    lifter = state["intermediates"]["lifter"]
    blocks = sorted((path, w) for path, w in _find(lifter, "weights") if path[0].startswith("cross_")
                    and path[1] == "cross_attn")
    if not blocks:
        raise ValueError("no cross-attention weights were recorded")
    b, v = views.mask.shape
    out = []
    for _, (weights,) in blocks:  # sow keeps a tuple of the calls' values
        per_token = jnp.mean(weights, axis=1)  # [b, q, t] averaged over heads
        out.append(per_token.reshape(b, per_token.shape[1], v, -1).sum(-1))
    return jnp.stack(out)


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


__all__ = ["mass_by_angle", "query_azimuths", "view_attention"]
