"""Gaussian assembly: surface attachment, LBS of positions and rotations, differentiability."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from flexavatar_jax.head import uv as uvt
from flexavatar_jax.head.rotations import quat_to_matrix
from flexavatar_jax.models import gaussians as gs


@pytest.fixture(scope="module")
def layout(procedural_head):
    return gs.make_layout(procedural_head, 48, dense_regions={"scalp": 2})


def _identity_attrs(n):
    return (jnp.zeros((n, 3)), jnp.tile(jnp.array([[1.0, 0, 0, 0]]), (n, 1)), jnp.ones((n, 3)),
            jnp.full((n,), 0.9), jnp.ones((n, 3)))


def test_zero_offsets_sit_on_the_surface(procedural_head, layout):
    m = procedural_head
    n = layout.num_gaussians
    g = gs.assemble(layout, m, m.zero_params(), *_identity_attrs(n))
    base = ~layout.samples.dense
    pos_map = np.asarray(uvt.uv_position_map(m, m.v_template, 48))
    t = layout.samples.texel[base]
    np.testing.assert_allclose(np.asarray(g["means"])[base], pos_map[t[:, 0], t[:, 1]], atol=1e-6)
    assert layout.samples.dense.sum() > 0 and n > base.sum()


def test_offsets_move_along_the_normal(procedural_head, layout):
    m = procedural_head
    n = layout.num_gaussians
    attrs = list(_identity_attrs(n))
    g0 = gs.assemble(layout, m, m.zero_params(), *attrs)
    attrs[0] = jnp.zeros((n, 3)).at[:, 2].set(0.01)
    g1 = gs.assemble(layout, m, m.zero_params(), *attrs)
    normals = np.asarray(uvt.tangent_frames(m, layout.samples, m.v_template))[:, :, 2]
    np.testing.assert_allclose(np.asarray(g1["means"] - g0["means"]), 0.01 * normals, atol=1e-6)


def test_global_rotation_rotates_means_and_rotations_consistently(procedural_head, layout):
    m = procedural_head
    n = layout.num_gaussians
    rng = np.random.default_rng(0)
    local = jnp.asarray(rng.standard_normal((n, 4)), jnp.float32)
    attrs = (jnp.asarray(rng.standard_normal((n, 3)) * 0.003, jnp.float32), local, jnp.ones((n, 3)),
             jnp.full((n,), 0.9), jnp.ones((n, 3)))
    w = np.array([0.3, -0.8, 0.2])
    rot = scipy.linalg.expm(np.array([[0, -w[2], w[1]], [w[2], 0, -w[0]], [-w[1], w[0], 0]]))
    rest = gs.assemble(layout, m, m.zero_params(), *attrs)
    posed = gs.assemble(layout, m, m.zero_params().replace(global_pose=jnp.asarray(w, jnp.float32)), *attrs)
    root = np.asarray(m.J_regressor)[0] @ np.asarray(m.v_template)
    np.testing.assert_allclose(np.asarray(posed["means"]), (np.asarray(rest["means"]) - root) @ rot.T + root, atol=2e-6)
    np.testing.assert_allclose(np.asarray(quat_to_matrix(posed["quats"])),
                               rot @ np.asarray(quat_to_matrix(rest["quats"])), atol=2e-5)
    np.testing.assert_allclose(np.asarray(posed["scales"]), np.asarray(rest["scales"]))


def test_jaw_moves_only_jaw_skinned_gaussians(procedural_head, layout):
    m = procedural_head
    attrs = _identity_attrs(layout.num_gaussians)
    a = gs.assemble(layout, m, m.zero_params(), *attrs)["means"]
    b = gs.assemble(layout, m, m.zero_params().replace(jaw_pose=jnp.array([0.3, 0, 0])), *attrs)["means"]
    moved = np.linalg.norm(np.asarray(b - a), axis=1) > 1e-6
    assert moved.any() and not moved[layout.skin_weights[:, 2] == 0].any()


def test_scales_are_texel_sized_and_dynamic_mask_is_the_face(procedural_head, layout):
    m = procedural_head
    g = gs.assemble(layout, m, m.zero_params(), *_identity_attrs(layout.num_gaussians))
    s = np.asarray(g["scales"])[:, 0]
    ratio = np.asarray(uvt.relative_scale_map(m, m.v_template, 48))
    t = layout.samples.texel[~layout.samples.dense]
    np.testing.assert_allclose(s[~layout.samples.dense], np.sqrt(ratio[t[:, 0], t[:, 1]]) / 48, rtol=1e-4)
    scalp = m.face_mask("scalp")[layout.samples.face] & ~m.face_mask("face_skin")[layout.samples.face]
    assert layout.dynamic.any() and not layout.dynamic[scalp].any()
    assert layout.dynamic[m.face_mask("lips")[layout.samples.face]].all()


def test_jit_and_gradients_reach_every_input(procedural_head, layout):
    m = procedural_head
    n = layout.num_gaussians
    attrs = _identity_attrs(n)

    def loss(offsets, quats, scales, opac, colors, expression):
        p = m.zero_params().replace(expression=expression)
        g = gs.assemble(layout, m, p, offsets, quats, scales, opac, colors)
        return sum(jnp.sum(jnp.sin(v)) for v in g.values())

    grads = jax.jit(jax.grad(loss, argnums=tuple(range(6))))(*attrs, jnp.zeros(m.num_expression))
    for g in grads:
        assert np.all(np.isfinite(np.asarray(g))) and np.abs(np.asarray(g)).sum() > 0


def test_gather_checks_resolution(layout):
    with pytest.raises(ValueError, match="layout expects"):
        gs.gather_texels(layout, jnp.zeros((32, 32, 3)))
    vals = gs.gather_texels(layout, jnp.arange(48 * 48, dtype=jnp.float32).reshape(48, 48, 1))
    t = layout.samples.texel
    np.testing.assert_array_equal(np.asarray(vals)[:, 0], t[:, 0] * 48 + t[:, 1])
