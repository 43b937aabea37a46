"""LPIPS-VGG: a tiny fake converted checkpoint, checked against a float64 numpy forward pass."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from flexavatar_jax.train import perceptual

TINY_WIDTHS = (4, 6, 8, 8, 5)
CONV_INDICES = ((0, 2), (5, 7), (10, 12, 14), (17, 19, 21), (24, 26, 28))


def _fake_arrays(seed=0, widths=TINY_WIDTHS):
    """Random weights under the documented key names; He-scaled so deep taps stay non-zero."""
    rng = np.random.default_rng(seed)
    arrays, c_in = {}, 3
    for block, c_out in zip(CONV_INDICES, widths):
        for i in block:
            kernel = rng.normal(size=(3, 3, c_in, c_out)) * np.sqrt(2 / (9 * c_in))
            arrays[f"features.{i}.weight"] = kernel.astype(np.float32)
            arrays[f"features.{i}.bias"] = (0.05 * rng.normal(size=(c_out,))).astype(np.float32)
            c_in = c_out
    for k, c in enumerate(widths):
        arrays[f"lin{k}.weight"] = rng.uniform(0.1, 1.0, size=(c,)).astype(np.float32)
    return arrays


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("lpips") / "tiny_lpips.npz"
    np.savez(path, **_fake_arrays())
    return path


def _lpips_reference(arrays, x, y):
    """Float64 LPIPS of one [H, W, 3] pair in [0, 1], written from the paper's description."""

    def conv3x3(a, w, b):
        padded = np.pad(a, ((1, 1), (1, 1), (0, 0)))
        patches = sliding_window_view(padded, (3, 3), axis=(0, 1))  # [H, W, C, 3, 3]
        return np.einsum("hwcij,ijco->hwo", patches, w.astype(np.float64)) + b

    def features(img):
        a = (2 * img.astype(np.float64) - 1 - np.array([-0.030, -0.088, -0.188])) / np.array([0.458, 0.448, 0.450])
        taps = []
        for blk, block in enumerate(CONV_INDICES):
            if blk > 0:
                h, w = a.shape[0] // 2, a.shape[1] // 2
                a = a[: 2 * h, : 2 * w].reshape(h, 2, w, 2, -1).max(axis=(1, 3))
            for i in block:
                a = np.maximum(conv3x3(a, arrays[f"features.{i}.weight"], arrays[f"features.{i}.bias"]), 0)
            taps.append(a)
        return taps

    total = 0.0
    for k, (fx, fy) in enumerate(zip(features(x), features(y))):
        nx = fx / (np.sqrt((fx**2).sum(-1, keepdims=True)) + 1e-10)  # official normalize_tensor
        ny = fy / (np.sqrt((fy**2).sum(-1, keepdims=True)) + 1e-10)
        total += ((nx - ny) ** 2 @ arrays[f"lin{k}.weight"].astype(np.float64)).mean()
    return total


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(1)
    # 20x24: pools floor 5x6 -> 2x3 -> 1x1, exercising odd sizes.
    return rng.uniform(size=(2, 2, 20, 24, 3)).astype(np.float32)


def test_tiny_checkpoint_loads_and_matches_numpy_reference(checkpoint, images):
    module, variables = perceptual.load_lpips(checkpoint)
    assert module.widths == TINY_WIDTHS
    x, y = images
    got = np.asarray(jax.jit(module.apply)(variables, jnp.asarray(x), jnp.asarray(y)))
    arrays = dict(np.load(checkpoint))
    want = np.array([_lpips_reference(arrays, x[b], y[b]) for b in range(2)])
    assert got.shape == (2,)
    np.testing.assert_allclose(got, want, rtol=2e-4)
    assert np.all(want > 1e-3)  # different images: strictly positive


def test_distance_properties(checkpoint, images):
    loss = perceptual.perceptual_loss_fn(checkpoint)
    x, y = (jnp.asarray(a) for a in images)
    np.testing.assert_allclose(np.asarray(loss(x, x)), 0.0, atol=1e-7)
    np.testing.assert_allclose(np.asarray(loss(x, y)), np.asarray(loss(y, x)), rtol=1e-6)
    assert np.all(np.asarray(loss(x, y)) > 0)
    # Batch axes are free: a single image and a [2, 2] batch.
    assert loss(x[0], y[0]).shape == ()
    assert loss(jnp.stack([x, y]), jnp.stack([y, x])).shape == (2, 2)


def test_loss_is_a_jit_argument_with_frozen_params_and_finite_image_gradient(checkpoint, images):
    loss = perceptual.perceptual_loss_fn(checkpoint)
    x, y = (jnp.asarray(a) for a in images)

    @jax.jit
    def value_and_grads(loss_fn, pred):
        return jax.value_and_grad(lambda p, f: jnp.mean(f(p, y)), argnums=(0, 1))(pred, loss_fn)

    value, (grad_pred, grad_loss) = value_and_grads(loss, x)
    assert np.isfinite(float(value))
    assert np.all(np.isfinite(np.asarray(grad_pred))) and float(jnp.abs(grad_pred).max()) > 0
    # stop_gradient inside: the perceptual network itself receives no gradient.
    assert all(float(jnp.abs(g).max()) == 0 for g in jax.tree_util.tree_leaves(grad_loss))


def test_missing_key_is_named(tmp_path):
    arrays = _fake_arrays()
    del arrays["features.7.bias"]
    np.savez(tmp_path / "w.npz", **arrays)
    with pytest.raises(ValueError, match=r"features\.7\.bias"):
        perceptual.load_lpips(tmp_path / "w.npz")


@pytest.mark.parametrize(
    "key,shape", [("lin2.weight", (9,)), ("features.12.weight", (3, 3, 8, 7)), ("features.0.weight", (3, 3, 4, 4))]
)
def test_wrong_shape_is_named(tmp_path, key, shape):
    arrays = _fake_arrays()
    arrays[key] = np.zeros(shape, np.float32)
    np.savez(tmp_path / "w.npz", **arrays)
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        perceptual.load_lpips(tmp_path / "w.npz")


def test_bad_values_and_extra_keys_are_named(tmp_path):
    arrays = _fake_arrays()
    arrays["lin1.weight"] = -arrays["lin1.weight"]
    np.savez(tmp_path / "neg.npz", **arrays)
    with pytest.raises(ValueError, match=r"lin1\.weight.*negative"):
        perceptual.load_lpips(tmp_path / "neg.npz")
    arrays = _fake_arrays()
    arrays["lin0.model.1.weight"] = np.ones((1, 4, 1, 1), np.float32)  # an unconverted torch key
    np.savez(tmp_path / "extra.npz", **arrays)
    with pytest.raises(ValueError, match=r"lin0\.model\.1\.weight"):
        perceptual.load_lpips(tmp_path / "extra.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a readable"):
        perceptual.load_lpips(tmp_path / "junk.npz")


def test_missing_file_and_no_path(tmp_path):
    with pytest.raises(FileNotFoundError):
        perceptual.load_lpips(tmp_path / "absent.npz")
    with pytest.raises(FileNotFoundError):
        perceptual.perceptual_loss_fn(tmp_path / "absent.npz")
    assert perceptual.load_lpips(None) is None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert perceptual.perceptual_loss_fn(None) is None
    assert len(caught) == 1 and "perceptual" in str(caught[0].message)


def test_small_or_non_rgb_images_rejected(checkpoint):
    loss = perceptual.perceptual_loss_fn(checkpoint)
    with pytest.raises(ValueError, match="at least 16"):
        loss(jnp.zeros((8, 20, 3)), jnp.zeros((8, 20, 3)))
    with pytest.raises(ValueError, match="H, W, 3"):
        loss(jnp.zeros((16, 16, 1)), jnp.zeros((16, 16, 1)))


def test_expected_shapes_describe_full_vgg16():
    shapes = perceptual.expected_shapes()
    assert len(shapes) == 13 * 2 + 5
    assert shapes["features.0.weight"] == (3, 3, 3, 64)
    assert shapes["features.28.weight"] == (3, 3, 512, 512)
    assert shapes["lin4.weight"] == (512,)
    # The Flax module's own init builds the same tree load_lpips fills.
    module = perceptual.LPIPS(widths=TINY_WIDTHS)
    init = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 16, 16, 3)), jnp.zeros((1, 16, 16, 3)))
    loaded = perceptual.params_from_arrays(_fake_arrays(), TINY_WIDTHS)
    assert jax.tree_util.tree_structure(init) == jax.tree_util.tree_structure(loaded)
    assert all(a.shape == b.shape for a, b in zip(jax.tree_util.tree_leaves(init), jax.tree_util.tree_leaves(loaded)))
