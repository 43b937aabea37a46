"""UV decoder (pixel shuffle, shapes, initial attributes, resolution errors), the deformation
UNet, and the config variants (build, parameter counts from `jax.eval_shape`, Gaussian counts)."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flexavatar_jax.config import Config
from flexavatar_jax.configs import flexavatar
from flexavatar_jax.models.avatar import FlexAvatar, parameter_counts
from flexavatar_jax.models.unet import DeformationUNet
from flexavatar_jax.models.uv_decoder import NUM_ATTRIBUTES, AttributeActivation, UVDecoder, pixel_shuffle


def test_pixel_shuffle_matches_depth_to_space():
    """Channel (i·f + j)·C' + c of input pixel (h, w) lands on output pixel (h·f + i, w·f + j),
    channel c (TensorFlow's depth_to_space order)."""
    f, c_out = 2, 3
    x = np.arange(2 * 2 * 3 * f * f * c_out, dtype=np.float32).reshape(2, 2, 3, f * f * c_out)
    expected = np.zeros((2, 2 * f, 3 * f, c_out), np.float32)
    for b in range(2):
        for h in range(2):
            for w in range(3):
                for i in range(f):
                    for j in range(f):
                        for c in range(c_out):
                            expected[b, h * f + i, w * f + j, c] = x[b, h, w, (i * f + j) * c_out + c]
    np.testing.assert_array_equal(np.asarray(pixel_shuffle(jnp.asarray(x), f)), expected)


# ----------------------------------------------------------------------------- UV decoder


@pytest.fixture(scope="module")
def decoded():
    decoder = UVDecoder(resolution=32, channels=16, id_channels=8)
    tokens = jax.random.normal(jax.random.key(0), (2, 8, 8, 64))
    params = jax.jit(decoder.init)(jax.random.key(1, impl="rbg"), tokens)  # rbg: one draw kernel, fast compile
    return jax.jit(decoder.apply)(params, tokens)


def test_uv_decoder_shapes(decoded):
    identity, raw = decoded
    assert identity.shape == (2, 32, 32, 8) and identity.dtype == jnp.float32
    assert raw.shape == (2, 32, 32, NUM_ATTRIBUTES) and raw.dtype == jnp.float32


def test_uv_decoder_starts_at_the_documented_attributes(decoded):
    _, raw = decoded
    activation = AttributeActivation(init_opacity=0.7, init_scale=0.7, offset_scale=0.01)
    a = {k: np.asarray(v) for k, v in activation(raw).items()}
    assert np.abs(a["offsets"]).max() < 1e-3  # metres
    np.testing.assert_allclose(a["colors"], 0.5, atol=0.03)
    np.testing.assert_allclose(a["opacities"], 0.7, atol=0.02)
    np.testing.assert_allclose(a["relative_scales"], 0.7, rtol=0.1)
    np.testing.assert_allclose(np.linalg.norm(a["local_quats"], axis=-1), 1.0, atol=1e-5)
    assert a["local_quats"][..., 0].min() > 0.995  # within ~11° of the identity rotation
    # Not constant: the maps do depend on the tokens.
    assert a["colors"].std() > 1e-4


@pytest.mark.parametrize("resolution", [24, 20, 4])
def test_uv_decoder_resolution_must_be_grid_times_power_of_two(resolution):
    decoder = UVDecoder(resolution=resolution, channels=8, id_channels=4)
    with pytest.raises(ValueError, match=f"UV resolution {resolution} must be the grid 8 times a power of two"):
        jax.eval_shape(decoder.init, jax.random.key(0), jnp.zeros((1, 8, 8, 16)))


# ----------------------------------------------------------------------------- deformation UNet


def test_deformation_unet_shape():
    unet = DeformationUNet(channels=(8, 16, 32))
    identity, driving = jnp.ones((2, 16, 16, 6)), jnp.zeros((2, 16, 16, 3))
    out = jax.eval_shape(lambda: unet.init_with_output(jax.random.key(0), identity, driving)[0])
    assert out.shape == (2, 16, 16, NUM_ATTRIBUTES) and out.dtype == jnp.float32


def test_deformation_unet_needs_a_divisible_resolution():
    unet = DeformationUNet(channels=(8, 16, 32))
    with pytest.raises(ValueError, match="UV resolution 18 must be divisible by 2\\^2 for a 3-level UNet"):
        jax.eval_shape(unet.init, jax.random.key(0), jnp.zeros((1, 18, 18, 6)), jnp.zeros((1, 18, 18, 3)))


# ----------------------------------------------------------------------------- config variants


@pytest.fixture(scope="module")
def variants(procedural_head):
    """name -> (system, parameter counts) without materialising any parameter."""
    out = {}
    for name in ("tiny", "base", "large"):
        system = FlexAvatar(Config.from_dict(flexavatar.get_config(name)).model, procedural_head)
        shapes = jax.eval_shape(system.init, jax.random.key(0))
        out[name] = (system, parameter_counts(shapes), flax.linen.meta.unbox(shapes))
    return out


def test_variants_build_and_grow(variants):
    counts = {name: c["total"] for name, (_, c, _) in variants.items()}
    assert counts["tiny"] < counts["base"] < counts["large"]
    assert 1e5 < counts["tiny"] < 5e6
    for name, (system, c, shapes) in variants.items():
        assert set(shapes) == {"encoder", "lifter", "decoder", "shape_head", "unet"}, name
        assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(shapes)), name  # params stay float32
        k = system.cfg.uv_resolution
        assert system.dynamic_uv_mask.shape == (k, k)


def test_variant_gaussian_counts(variants):
    tiny, base, large = (variants[n][0].num_gaussians for n in ("tiny", "base", "large"))
    assert 2_000 < tiny < 5_000
    assert 200_000 <= large <= 300_000
    assert tiny < base < large


def test_base_has_about_100k_gaussians(variants):
    # 256² texels (80.5% valid) with the scalp (~30% of the atlas) at 2×2 samples per texel.
    assert 90_000 <= variants["base"][0].num_gaussians <= 110_000
