"""The view gate of the Structured Head Queries (`LifterConfig.view_gate`): a no-op at
initialisation, order-invariant, blind to padded views, and when its score is scaled up it moves
each query's attention mass per view to the gate's softmax (checked with the attention probe)."""

import dataclasses

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from flexavatar_jax.config import Config
from flexavatar_jax.configs import flexavatar
from flexavatar_jax.models import probes
from flexavatar_jax.models.avatar import FlexAvatar
from flexavatar_jax.models.views import InputViews


def _system(procedural_head, view_gate):
    cfg = Config.from_dict(flexavatar.get_config("tiny"))
    model = dataclasses.replace(cfg.model, lifter=dataclasses.replace(cfg.model.lifter, view_gate=view_gate))
    return FlexAvatar(model, procedural_head)


@pytest.fixture(scope="module")
def gated(procedural_head):
    system = _system(procedural_head, True)
    return system, flax.linen.meta.unbox(system.init(jax.random.key(0)))


@pytest.fixture(scope="module")
def inputs(gated):
    s = gated[0].image_size
    images = jax.random.uniform(jax.random.key(1), (2, 4, s, s, 3))
    return images, jnp.array([[True, True, True, False], [True, True, True, True]])


def _is_gate_scale(path) -> bool:
    return path[-1] == "scale" and path[-2].startswith("view_gate_")


def _with_scale(params, value):
    flat = traverse_util.flatten_dict(params)
    flat = {k: (jnp.full_like(v, value) if _is_gate_scale(k) else v) for k, v in flat.items()}
    return traverse_util.unflatten_dict(flat)


def _lifter_out(system, params, images, mask):
    return system.reconstruct_views(params, InputViews(images, mask))


def test_the_gate_is_a_no_op_at_initialisation(procedural_head, gated, inputs):
    system, params = gated
    plain = _system(procedural_head, False)
    flat = traverse_util.flatten_dict(params)
    scales = [float(v) for k, v in flat.items() if _is_gate_scale(k)]
    assert len(scales) == system.cfg.lifter.depth and all(v == 0.0 for v in scales)
    without = traverse_util.unflatten_dict({k: v for k, v in flat.items() if not any("view_gate" in p for p in k)})
    images, mask = inputs
    np.testing.assert_allclose(np.asarray(jax.tree.leaves(_lifter_out(system, params, images, mask))[0]),
                               np.asarray(jax.tree.leaves(_lifter_out(plain, without, images, mask))[0]), atol=1e-5)


def test_a_sharpened_gate_decides_the_attention_mass_per_view_and_stays_order_invariant(gated, inputs):
    system, params = gated
    images, mask = inputs
    blind = np.asarray(probes.view_attention(system, params, InputViews(images, mask)))
    sharp_params = _with_scale(params, 30.0)
    sharp = np.asarray(probes.view_attention(system, sharp_params, InputViews(images, mask)))
    np.testing.assert_allclose(sharp.sum(-1), 1.0, atol=1e-4)
    np.testing.assert_allclose(sharp[:, 0, :, 3], 0.0, atol=1e-7)  # the padding slot still gets nothing
    # Far from uniform: the largest share per query grows well above the blind lifter's.
    assert sharp.max(-1).mean() > blind.max(-1).mean() + 0.1
    perm = jnp.array([2, 0, 3, 1])
    permuted = np.asarray(probes.view_attention(system, sharp_params, InputViews(images[:, perm], mask[:, perm])))
    np.testing.assert_allclose(permuted, sharp[..., np.asarray(perm)], atol=1e-4)
    # The padded view's content does not matter.
    other = images.at[0, 3].set(jax.random.uniform(jax.random.key(9), images.shape[2:]))
    a = jax.tree.leaves(_lifter_out(system, sharp_params, images, mask))[0][0]
    b = jax.tree.leaves(_lifter_out(system, sharp_params, other, mask))[0][0]
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
