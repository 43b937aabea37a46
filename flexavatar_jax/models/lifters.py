"""The lifters by name (`model.lifter_type`): image tokens -> G×G UV tokens, all behind `views.Lifter`.

* `queries` — FlexAvatar's Structured Head Queries (default; needs no cameras).
* `dual_uv` — Dual-UV's closed-form Core/Shell-UV projection + MAE in-fill (needs cameras and tracked
  head parameters of the inputs).
* `symmetric` — FHAvatar's symmetric UV fusion (needs cameras and tracked head parameters).

Their shared options are `config.LifterConfig`; a lifter receives the ones it declares as fields.
"""

from __future__ import annotations

import dataclasses

from flexavatar_jax.config import LifterConfig
from flexavatar_jax.head import HeadModel
from flexavatar_jax.models.attention import Dtype
from flexavatar_jax.models.dual_uv import DualUVLifter
from flexavatar_jax.models.head_queries import StructuredHeadQueries
from flexavatar_jax.models.symmetric import SymmetricUVLifter
from flexavatar_jax.models.views import Lifter

LIFTERS: dict[str, type[Lifter]] = {"queries": StructuredHeadQueries, "dual_uv": DualUVLifter,
                                    "symmetric": SymmetricUVLifter}
# Lifters that read the input cameras and tracked head parameters (photos carry neither).
NEEDS_CAMERAS = frozenset({"dual_uv", "symmetric"})


def check_lifter_type(lifter_type: str) -> None:
    if lifter_type not in LIFTERS:
        raise ValueError(f"unknown lifter {lifter_type!r} (model.lifter_type): use one of {sorted(LIFTERS)}")


def make_lifter(lifter_type: str, options: LifterConfig, head: HeadModel, grid: int, dtype: Dtype,
                name: str = "lifter") -> Lifter:
    """The `lifter_type` module with the `options` it declares (e.g. `window` only for `symmetric`)."""
    check_lifter_type(lifter_type)
    cls = LIFTERS[lifter_type]
    declared = {f.name for f in dataclasses.fields(cls)}
    kwargs = {f.name: getattr(options, f.name) for f in dataclasses.fields(options) if f.name in declared}
    return cls(head=head, grid=grid, dtype=dtype, name=name, **kwargs)
