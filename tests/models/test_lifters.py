"""The lifter registry: every `model.lifter_type` names a `Lifter`, which receives the shared
`LifterConfig` options it declares (and only those)."""

import dataclasses

import jax.numpy as jnp
import pytest

from flexavatar_jax.config import LifterConfig
from flexavatar_jax.models import lifters
from flexavatar_jax.models.dual_uv import DualUVLifter
from flexavatar_jax.models.head_queries import StructuredHeadQueries
from flexavatar_jax.models.symmetric import SymmetricUVLifter
from flexavatar_jax.models.views import Lifter

OPTIONS = LifterConfig(width=24, num_heads=3, depth=5, fourier_frequencies=4, global_depth=1, window=5)


def test_registry_names_every_lifter():
    assert lifters.LIFTERS == {"queries": StructuredHeadQueries, "dual_uv": DualUVLifter,
                               "symmetric": SymmetricUVLifter}
    assert all(issubclass(cls, Lifter) for cls in lifters.LIFTERS.values())
    assert lifters.NEEDS_CAMERAS == {"dual_uv", "symmetric"}


@pytest.mark.parametrize("lifter_type", sorted(lifters.LIFTERS))
def test_make_lifter_passes_the_declared_options(procedural_head, lifter_type):
    module = lifters.make_lifter(lifter_type, OPTIONS, procedural_head, grid=8, dtype=jnp.bfloat16)
    assert type(module) is lifters.LIFTERS[lifter_type]
    assert (module.grid, module.dtype, module.name) == (8, jnp.bfloat16, "lifter")
    assert (module.width, module.num_heads, module.depth, module.fourier_frequencies) == (24, 3, 5, 4)
    fields = {f.name for f in dataclasses.fields(module)}
    assert ("global_depth" in fields) == (lifter_type == "queries")
    assert ("window" in fields) == (lifter_type == "symmetric")
    if lifter_type == "queries":
        assert module.global_depth == 1
    if lifter_type == "symmetric":
        assert module.window == 5


def test_unknown_lifter_type_is_rejected(procedural_head):
    with pytest.raises(ValueError, match="unknown lifter 'mlp'.*dual_uv"):
        lifters.check_lifter_type("mlp")
    with pytest.raises(ValueError, match="unknown lifter 'mlp'"):
        lifters.make_lifter("mlp", OPTIONS, procedural_head, grid=8, dtype=jnp.float32)
