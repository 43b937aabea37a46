"""Kinematics against closed forms, invariances and finite differences."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from flexavatar_jax.head import HeadParams, blend_shapes, lbs, rodrigues


def _skew(w):
    return np.array([[0, -w[2], w[1]], [w[2], 0, -w[0]], [-w[1], w[0], 0]])


@pytest.mark.parametrize("scale", [0.0, 1e-7, 0.3, 2.5, np.pi])
def test_rodrigues_matches_matrix_exponential(scale):
    w = np.array([0.3, -0.5, 0.8]) / np.linalg.norm([0.3, -0.5, 0.8]) * scale
    r = np.asarray(rodrigues(jnp.asarray(w, jnp.float32)))
    np.testing.assert_allclose(r, scipy.linalg.expm(_skew(w)), atol=2e-6)


def test_rodrigues_gradient_finite_at_zero():
    g = jax.jacfwd(rodrigues)(jnp.zeros(3))
    assert np.all(np.isfinite(np.asarray(g)))
    # dR/dw at 0 is the generator: d(R[1,0])/dw_z = 1.
    np.testing.assert_allclose(np.asarray(g)[1, 0, 2], 1.0, atol=1e-6)


def _random_params(model, rng, scale=0.3):
    return model.zero_params().replace(
        shape=jnp.asarray(rng.standard_normal(model.num_shape), jnp.float32),
        expression=jnp.asarray(rng.standard_normal(model.num_expression) * 0.5, jnp.float32),
        global_pose=jnp.asarray(rng.standard_normal(3) * scale, jnp.float32),
        neck_pose=jnp.asarray(rng.standard_normal(3) * scale, jnp.float32),
        jaw_pose=jnp.asarray([abs(rng.standard_normal()) * scale, 0, 0], jnp.float32),
        eyes_pose=jnp.asarray(rng.standard_normal(6) * scale, jnp.float32),
        translation=jnp.asarray(rng.standard_normal(3) * 0.05, jnp.float32),
    )


def test_zero_pose_returns_shaped_expressed_template(procedural_head):
    m = procedural_head
    rng = np.random.default_rng(0)
    p = _random_params(m, rng).replace(global_pose=jnp.zeros(3), neck_pose=jnp.zeros(3),
                                       jaw_pose=jnp.zeros(3), eyes_pose=jnp.zeros(6), translation=jnp.zeros(3))
    out = lbs(m, p)
    ref = (np.asarray(m.v_template, np.float64)
           + np.einsum("vcs,s->vc", np.asarray(m.shapedirs, np.float64), np.asarray(p.shape, np.float64))
           + np.einsum("vce,e->vc", np.asarray(m.exprdirs, np.float64), np.asarray(p.expression, np.float64)))
    np.testing.assert_allclose(np.asarray(out.vertices), ref, atol=2e-6)


def test_global_rotation_rotates_every_vertex_about_the_root(procedural_head):
    m = procedural_head
    w = np.array([0.2, -0.7, 0.4])
    p = m.zero_params().replace(global_pose=jnp.asarray(w, jnp.float32))
    out = lbs(m, p)
    rest = np.asarray(m.v_template, np.float64)
    root = np.asarray(m.J_regressor, np.float64)[0] @ rest
    rot = scipy.linalg.expm(_skew(w))
    np.testing.assert_allclose(np.asarray(out.vertices), (rest - root) @ rot.T + root, atol=2e-6)
    # The per-vertex transforms are that same rigid motion.
    np.testing.assert_allclose(np.asarray(out.vertex_transforms[:, :3, :3]), np.broadcast_to(rot, (m.num_vertices, 3, 3)), atol=2e-6)


def test_translation_translates(procedural_head):
    m = procedural_head
    t = jnp.array([0.1, -0.2, 0.3])
    a = lbs(m, m.zero_params()).vertices
    b = lbs(m, m.zero_params().replace(translation=t)).vertices
    np.testing.assert_allclose(np.asarray(b - a), np.broadcast_to(np.asarray(t), a.shape), atol=1e-6)


def test_jaw_moves_only_lower_face_and_mouth(procedural_head):
    m = procedural_head
    opened = lbs(m, m.zero_params().replace(jaw_pose=jnp.array([0.3, 0.0, 0.0]))).vertices
    closed = lbs(m, m.zero_params()).vertices
    moved = np.linalg.norm(np.asarray(opened - closed), axis=1) > 1e-6
    w = np.asarray(m.lbs_weights)
    # Pose correctives may only touch vertices that the jaw joint drives.
    assert not np.any(moved & (w[:, 2] == 0))
    for region in ("scalp", "left_eye", "right_eye", "ears"):
        assert not moved[m.vertex_mask(region)].any(), region
    teeth = m.vertex_mask("teeth")
    assert moved[teeth].any() and not moved[teeth].all()  # lower teeth move, upper teeth stay
    assert moved[m.vertex_mask("tongue")].all()
    v = np.asarray(m.v_template)
    chin = np.argmax(np.where(v[:, 1] < -0.07, v[:, 2], -np.inf))  # most forward point of the chin
    assert float(opened[chin, 1] - closed[chin, 1]) < -0.01  # 17 degrees lower the chin by > 1 cm


def test_eye_joints_rotate_eyeballs_rigidly(procedural_head):
    m = procedural_head
    p = m.zero_params().replace(eyes_pose=jnp.array([0.0, 0.5, 0.0, 0.0, 0.5, 0.0]))
    out = lbs(m, p)
    rest = lbs(m, m.zero_params())
    for region, j in (("left_eye", 3), ("right_eye", 4)):
        mask = m.vertex_mask(region)
        c = np.asarray(rest.joints[j])
        np.testing.assert_allclose(np.linalg.norm(np.asarray(out.vertices)[mask] - c, axis=1),
                                   np.linalg.norm(np.asarray(rest.vertices)[mask] - c, axis=1), atol=1e-6)
        assert np.abs(np.asarray(out.vertices - rest.vertices)[mask]).max() > 1e-3
    others = ~(m.vertex_mask("left_eye") | m.vertex_mask("right_eye"))
    np.testing.assert_allclose(np.asarray(out.vertices)[others], np.asarray(rest.vertices)[others], atol=1e-7)


def test_vmap_matches_loop(procedural_head):
    m = procedural_head
    rng = np.random.default_rng(1)
    ps = [_random_params(m, rng) for _ in range(3)]
    batch = jax.tree.map(lambda *a: jnp.stack(a), *ps)
    out = jax.jit(jax.vmap(lbs, in_axes=(None, 0)))(m, batch)
    for i, p in enumerate(ps):
        np.testing.assert_allclose(np.asarray(out.vertices[i]), np.asarray(lbs(m, p).vertices), atol=1e-5)


def test_gradients_match_finite_differences(procedural_head):
    m64 = jax.tree.map(lambda a: np.asarray(a, np.float64) if np.issubdtype(np.asarray(a).dtype, np.floating) else a,
                       procedural_head)
    rng = np.random.default_rng(2)
    weights = rng.standard_normal((m64.num_vertices, 3))
    with jax.enable_x64(True):
        p = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), _random_params(procedural_head, rng))

        def energy(params):
            return jnp.sum(lbs(m64, params).vertices * weights)

        grad = jax.grad(energy)(p)
        for field in ("global_pose", "neck_pose", "jaw_pose", "eyes_pose", "expression", "shape", "translation"):
            d = jnp.asarray(rng.standard_normal(getattr(p, field).shape))
            h = 1e-6
            plus = energy(p.replace(**{field: getattr(p, field) + h * d}))
            minus = energy(p.replace(**{field: getattr(p, field) - h * d}))
            fd = (plus - minus) / (2 * h)
            an = jnp.sum(getattr(grad, field) * d)
            np.testing.assert_allclose(float(an), float(fd), rtol=1e-6, atol=1e-8, err_msg=field)


def test_blend_shapes_linear(procedural_head):
    m = procedural_head
    p = m.zero_params()
    e = jnp.zeros(m.num_expression).at[3].set(1.0)
    d1 = blend_shapes(m, p.replace(expression=e)) - m.v_template
    d2 = blend_shapes(m, p.replace(expression=2 * e)) - m.v_template
    np.testing.assert_allclose(np.asarray(d2), 2 * np.asarray(d1), atol=1e-6)


def test_check_params_rejects_bad_input(procedural_head):
    from flexavatar_jax.head import check_params

    m = procedural_head
    with pytest.raises(ValueError, match="expression"):
        check_params(m, m.zero_params().replace(expression=jnp.zeros(3)))
    with pytest.raises(ValueError, match="NaN"):
        check_params(m, m.zero_params().replace(jaw_pose=jnp.array([jnp.nan, 0.0, 0.0])))
    check_params(m, m.zero_params())
    assert isinstance(m.zero_params(), HeadParams)


def test_flat_pose_round_trip():
    pose = jnp.arange(15.0)
    p = HeadParams.from_pose(jnp.zeros(3), jnp.zeros(2), pose, jnp.ones(3))
    assert p.global_pose.tolist() == [0, 1, 2] and p.jaw_pose.tolist() == [6, 7, 8]
    assert p.eyes_pose.tolist() == list(range(9, 15))
    assert p.pose_vector().tolist() == pose.tolist()
    assert p.full_pose()[3].tolist() == [9, 10, 11]  # the left eye is joint 3
    with pytest.raises(ValueError, match="pose"):
        HeadParams.from_pose(jnp.zeros(3), jnp.zeros(2), jnp.zeros(14), jnp.ones(3))
