"""Expression balancing shifts the sampled distribution towards expressive frames."""

import numpy as np
import pytest

from flexavatar_jax.data import balance, motion


@pytest.fixture(scope="module")
def names(procedural_arrays):
    return [str(n) for n in procedural_arrays["expression_names"]]


def test_at_least_twenty_anchors(names):
    a = balance.named_anchor_codes(names)
    assert a.shape[0] >= 20 and np.all(np.linalg.norm(a, axis=1) > 0)


def test_balancing_shifts_sampling_towards_marginal_frames(names):
    anchors = balance.named_anchor_codes(names)
    rng = np.random.default_rng(0)
    before, after, off = [], [], []
    for _ in range(60):
        c = motion.sample_clip(rng, 96, names)
        codes = balance.expression_codes(c.expression, c.jaw_pose, c.eyes_pose)
        before.append(c.marginal.mean())
        after.append((balance.sampling_probabilities(codes, anchors, balance.BalanceConfig()) * c.marginal).sum())
        off.append((balance.sampling_probabilities(codes, anchors, balance.BalanceConfig(enabled=False)) * c.marginal).sum())
    assert np.mean(after) > 2 * np.mean(before)
    np.testing.assert_allclose(np.mean(off), np.mean(before))  # the ablation is uniform


def test_frame_weights_hand_computed():
    codes = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [-1.0, 0.0]])
    anchors = np.array([[1.0, 0.0]])
    w = balance.frame_weights(codes, anchors, balance.BalanceConfig(top_k=2, strength=3.0, min_similarity=0.5))
    np.testing.assert_allclose(w, [4.0, 4.0, 1.0, 1.0])
    w = balance.frame_weights(codes, anchors, balance.BalanceConfig(top_k=3, strength=3.0, min_similarity=0.5))
    np.testing.assert_allclose(w, [4.0, 4.0, 1.0, 1.0])  # the third-best is below min_similarity


def test_data_driven_anchors_are_diverse_and_expressive():
    rng = np.random.default_rng(0)
    codes = rng.standard_normal((500, 6)) * np.linspace(0.2, 1.0, 500)[:, None]
    a = balance.anchors_from_data(codes, 10)
    assert a.shape == (10, 6)
    assert np.linalg.norm(a, axis=1).min() >= np.quantile(np.linalg.norm(codes, axis=1), 0.9) - 1e-9
    unit = a / np.linalg.norm(a, axis=1, keepdims=True)
    assert (unit @ unit.T - np.eye(10)).max() < 0.99


def test_mismatched_dims_raise():
    with pytest.raises(ValueError, match="dims"):
        balance.frame_weights(np.ones((3, 4)), np.ones((2, 5)), balance.BalanceConfig())
