"""SSIM / PSNR / alpha IoU against independent float64 references and closed forms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from flexavatar_jax.train import metrics


def _ssim_reference(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Float64 SSIM map of one [H, W, C] pair via scipy's Gaussian filter, 'valid' region only.

    truncate = 5/1.5 gives scipy a radius-5 (11-tap) kernel; cropping 5 pixels per side keeps the
    pixels whose window never touched scipy's border extension."""
    x, y = x.astype(np.float64), y.astype(np.float64)
    c1, c2 = 0.01**2, 0.03**2

    def blur(a):
        channels = [gaussian_filter(a[..., c], sigma=1.5, truncate=5 / 1.5) for c in range(a.shape[-1])]
        out = np.stack(channels, -1)
        return out[5:-5, 5:-5]

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    return ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))


def _pair(seed, shape=(2, 23, 19, 3)):
    rng = np.random.default_rng(seed)
    # Smooth-ish content plus correlated noise, so SSIM is far from both 0 and 1.
    x = gaussian_filter(rng.uniform(size=shape), sigma=(0, 2, 2, 0))
    x = (x - x.min()) / (x.max() - x.min())
    y = np.clip(x + 0.1 * rng.normal(size=shape), 0, 1)
    return x.astype(np.float32), y.astype(np.float32)


def test_ssim_map_matches_scipy_reference():
    x, y = _pair(0)
    got = np.asarray(jax.jit(metrics.ssim_map)(jnp.asarray(x), jnp.asarray(y)))
    assert got.shape == (2, 13, 9, 3)
    for b in range(2):
        ref = _ssim_reference(x[b], y[b])
        np.testing.assert_allclose(got[b], ref, atol=2e-5)
    mean = np.asarray(metrics.ssim(jnp.asarray(x), jnp.asarray(y)))
    np.testing.assert_allclose(mean, got.mean(axis=(1, 2, 3)), rtol=1e-6)
    assert 0.2 < got.mean() < 0.95


def test_ssim_identity_and_symmetry():
    x, y = _pair(1, (3, 16, 16, 3))
    np.testing.assert_allclose(np.asarray(metrics.ssim(jnp.asarray(x), jnp.asarray(x))), 1.0, atol=1e-6)
    x, y = jnp.asarray(x), jnp.asarray(y)
    np.testing.assert_allclose(np.asarray(metrics.ssim(x, y)), np.asarray(metrics.ssim(y, x)), atol=1e-7)


def test_ssim_rejects_bad_shapes():
    with pytest.raises(ValueError, match="at least 11"):
        metrics.ssim(jnp.zeros((10, 12, 3)), jnp.zeros((10, 12, 3)))
    with pytest.raises(ValueError, match="target shape"):
        metrics.ssim(jnp.zeros((12, 12, 3)), jnp.zeros((12, 12, 1)))
    with pytest.raises(ValueError, match="H, W, C"):
        metrics.psnr(jnp.zeros((12, 12)), jnp.zeros((12, 12)))


def test_psnr_constant_offset_closed_form():
    rng = np.random.default_rng(2)
    x = rng.uniform(0.2, 0.7, size=(2, 8, 9, 3)).astype(np.float32)
    delta = 0.1
    got = np.asarray(metrics.psnr(jnp.asarray(x + delta), jnp.asarray(x)))
    np.testing.assert_allclose(got, 10 * np.log10(1 / delta**2), rtol=1e-5)  # = 20 dB


def test_psnr_mask_ignores_unmasked_pixels():
    rng = np.random.default_rng(3)
    x = rng.uniform(size=(8, 9, 3)).astype(np.float32)
    y = x + 0.05
    mask = np.zeros((8, 9, 1), bool)
    mask[2:5, 3:7] = True
    y[~mask[..., 0]] = rng.uniform(size=(int((~mask).sum()), 3))  # garbage outside the mask
    got = float(metrics.psnr(jnp.asarray(y), jnp.asarray(x), jnp.asarray(mask)))
    np.testing.assert_allclose(got, 10 * np.log10(1 / 0.05**2), rtol=1e-4)
    assert np.isinf(float(metrics.psnr(jnp.asarray(x), jnp.asarray(x))))


def test_alpha_iou_hand_computed():
    pred = np.zeros((1, 8, 8, 1), np.float32)
    target = np.zeros((1, 8, 8, 1), np.float32)
    pred[0, 0:4, 0:4] = 0.9  # 16 pixels
    target[0, 0:4, 2:6] = 0.6  # 16 pixels, 8 shared
    target[0, 6, 6] = 0.5  # exactly at the threshold: outside (strict >)
    got = float(metrics.alpha_iou(jnp.asarray(pred), jnp.asarray(target))[0])
    assert got == pytest.approx(8 / 24)
    both_empty = metrics.alpha_iou(jnp.zeros((8, 8, 1)), jnp.zeros((8, 8, 1)))
    assert float(both_empty) == 1.0
    assert float(metrics.alpha_iou(jnp.asarray(pred[0]), jnp.zeros((8, 8, 1)))) == 0.0


def test_annotations_are_checked_by_jaxtyping():
    jaxtyping = pytest.importorskip("jaxtyping")
    beartype = pytest.importorskip("beartype")
    checked_ssim = jaxtyping.jaxtyped(typechecker=beartype.beartype)(metrics.ssim)
    checked_psnr = jaxtyping.jaxtyped(typechecker=beartype.beartype)(metrics.psnr)
    x = jnp.zeros((2, 12, 12, 3))
    assert checked_ssim(x, x).shape == (2,)
    assert checked_psnr(x, x + 0.1, jnp.ones((2, 12, 12, 1))).shape == (2,)
    with pytest.raises(Exception):
        checked_ssim(x, jnp.zeros((2, 12, 13, 3)))
