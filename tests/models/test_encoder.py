"""ViT encoder (shapes, `.npz` checkpoints: round trip, pos-embed resizing, every error) and the
shared attention pieces (`fourier_features` closed form, `Attention` key masking)."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from flexavatar_jax.models.attention import Attention, fourier_features
from flexavatar_jax.models.encoder import ViTEncoder, load_encoder_npz, save_encoder_npz

PATCH, WIDTH, SIZE = 8, 32, 32  # 4x4 patch grid


def _encoder():
    return ViTEncoder(patch_size=PATCH, width=WIDTH, depth=1, num_heads=4)


@pytest.fixture(scope="module")
def images():
    return jax.random.uniform(jax.random.key(0), (2, 3, SIZE, SIZE, 3))


@pytest.fixture(scope="module")
def init(images):
    """Jitted init: one compile for every key."""
    return jax.jit(lambda key: _encoder().init(key, images[:1, :1])["params"])


@pytest.fixture(scope="module")
def encoder_params(init):
    return init(jax.random.key(1, impl="rbg"))


@pytest.fixture(scope="module")
def apply():
    return jax.jit(lambda p, x: _encoder().apply({"params": p}, x))


def _flat(params):
    return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(flax.linen.meta.unbox(params), sep="/").items()}


def test_output_shape(encoder_params, apply, images):
    tokens = apply(encoder_params, images)
    assert tokens.shape == (2, 3, SIZE // PATCH, SIZE // PATCH, WIDTH)
    # Each image is encoded on its own: the token map of one view does not depend on the others.
    alone = apply(encoder_params, images[1:2, 2:3])
    np.testing.assert_allclose(np.asarray(tokens[1, 2]), np.asarray(alone[0, 0]), atol=1e-5)


def test_image_size_must_be_a_multiple_of_the_patch():
    with pytest.raises(ValueError, match="multiple of the patch size 8"):
        jax.eval_shape(_encoder().init, jax.random.key(0), jnp.zeros((1, 30, 32, 3)))


def test_save_load_round_trip(tmp_path, init, encoder_params, apply, images):
    path = tmp_path / "encoder.npz"
    save_encoder_npz(path, encoder_params)
    fresh = init(jax.random.key(2, impl="rbg"))
    assert any(np.any(_flat(fresh)[k] != v) for k, v in _flat(encoder_params).items())
    loaded = load_encoder_npz(path, fresh)
    with np.load(path) as data:
        stored = dict(data)
    flat = _flat(loaded)
    assert set(flat) == set(stored) and "pos_embed" in flat and "block_0/attn/query/kernel" in flat
    for key, value in stored.items():
        np.testing.assert_array_equal(flat[key], value, err_msg=key)
        assert flat[key].dtype == np.float32
    # The logical-axis boxes survive, so sharding rules still apply to the loaded tree.
    boxes = jax.tree.leaves(loaded, is_leaf=lambda x: isinstance(x, flax.linen.meta.AxisMetadata))
    assert all(isinstance(b, flax.linen.Partitioned) for b in boxes)
    assert jax.tree.map(lambda b: b.names, loaded, is_leaf=lambda x: isinstance(x, flax.linen.Partitioned)) == \
        jax.tree.map(lambda b: b.names, fresh, is_leaf=lambda x: isinstance(x, flax.linen.Partitioned))
    np.testing.assert_array_equal(np.asarray(apply(flax.linen.meta.unbox(loaded), images)),
                                  np.asarray(apply(flax.linen.meta.unbox(encoder_params), images)))
    # A plain (unboxed) tree loads too.
    plain = load_encoder_npz(path, flax.linen.meta.unbox(fresh))
    np.testing.assert_array_equal(np.asarray(plain["pos_embed"]), stored["pos_embed"])


def _bilinear_upsample(grid: np.ndarray, dst: int) -> np.ndarray:
    """Half-pixel-centre bilinear resize of a [s,s,d] grid to [dst,dst,d] (upsampling only:
    clamped edge samples, no antialiasing)."""
    src = grid.shape[0]
    coords = np.clip((np.arange(dst) + 0.5) * src / dst - 0.5, 0, src - 1)
    lo = np.floor(coords).astype(int)
    hi = np.minimum(lo + 1, src - 1)
    frac = coords - lo
    rows = grid[lo] * (1 - frac)[:, None, None] + grid[hi] * frac[:, None, None]
    return rows[:, lo] * (1 - frac)[None, :, None] + rows[:, hi] * frac[None, :, None]


def test_pos_embed_from_another_patch_grid_is_resized(tmp_path, encoder_params):
    rng = np.random.default_rng(0)
    stored = _flat(encoder_params)
    # A checkpoint for 16x16 images (2x2 grid) loading into a 4x4-grid encoder.
    small = rng.standard_normal((4, WIDTH)).astype(np.float32)
    path = tmp_path / "small_grid.npz"
    np.savez(path, **{**stored, "pos_embed": small})
    loaded = np.asarray(flax.linen.meta.unbox(load_encoder_npz(path, encoder_params))["pos_embed"])
    expected = _bilinear_upsample(small.reshape(2, 2, WIDTH), 4).reshape(16, WIDTH)
    np.testing.assert_allclose(loaded, expected, atol=1e-5)
    # Larger grid (8x8 -> 4x4): a constant table stays constant, a smooth ramp stays a ramp in range.
    ramp = np.broadcast_to(np.linspace(-1, 1, 8)[:, None, None], (8, 8, WIDTH)).reshape(64, WIDTH)
    path = tmp_path / "large_grid.npz"
    np.savez(path, **{**stored, "pos_embed": ramp.astype(np.float32)})
    loaded = np.asarray(flax.linen.meta.unbox(load_encoder_npz(path, encoder_params))["pos_embed"]).reshape(4, 4, -1)
    assert np.all(np.diff(loaded[:, 0, 0]) > 0) and np.abs(loaded).max() <= 1.0
    # Constant along columns.
    np.testing.assert_allclose(loaded, np.broadcast_to(loaded[:, :1], loaded.shape), atol=1e-6)


@pytest.mark.parametrize("case", ["missing", "unexpected", "shape", "non_square"])
def test_mismatched_checkpoint_names_the_key(tmp_path, encoder_params, case):
    data = _flat(encoder_params)
    if case == "missing":
        del data["block_0/mlp/fc1/kernel"]
        match = "missing.*block_0/mlp/fc1/kernel"
    elif case == "unexpected":
        data["cls_token"] = np.zeros((1, WIDTH), np.float32)
        match = "unexpected.*cls_token"
    elif case == "shape":
        data["block_0/attn/query/kernel"] = np.zeros((WIDTH, 2, WIDTH // 2), np.float32)
        match = r"block_0/attn/query/kernel has shape \(32, 2, 16\).*\(32, 4, 8\)"
    else:
        data["pos_embed"] = np.zeros((5, WIDTH), np.float32)
        match = "pos_embed: cannot resize 5 tokens"
    path = tmp_path / f"{case}.npz"
    np.savez(path, **data)
    with pytest.raises(ValueError, match=match):
        load_encoder_npz(path, encoder_params)


def test_missing_or_corrupt_file(tmp_path, encoder_params):
    path = tmp_path / "nowhere.npz"
    with pytest.raises(FileNotFoundError, match="nowhere.npz"):
        load_encoder_npz(path, encoder_params)
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="corrupt.npz"):
        load_encoder_npz(corrupt, encoder_params)


# ----------------------------------------------------------------------------- attention pieces


def test_fourier_features_closed_form():
    x = jnp.array([[0.25, -0.5], [1.0, 0.0]])
    out = np.asarray(fourier_features(x, num_frequencies=2, scale=2.0))
    assert out.shape == (2, 2 + 2 * 2 * 2)
    # Frequency-major: [x, sin(π x/2), sin(2π x/2), cos(π x/2), cos(2π x/2)], coordinates inner.
    a, b = 0.25, -0.5
    s, c = np.sin, np.cos
    row0 = [a, b, s(np.pi * a / 2), s(np.pi * b / 2), s(np.pi * a), s(np.pi * b),
            c(np.pi * a / 2), c(np.pi * b / 2), c(np.pi * a), c(np.pi * b)]
    row1 = [1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, -1.0, 1.0]
    np.testing.assert_allclose(out, np.array([row0, row1]), atol=1e-6)


def test_attention_ignores_masked_keys():
    attn = Attention(num_heads=2)
    rng = np.random.default_rng(0)
    queries = jnp.asarray(rng.standard_normal((2, 3, 8)), jnp.float32)
    kv = jnp.asarray(rng.standard_normal((2, 5, 8)), jnp.float32)
    mask = jnp.array([[True, True, False, True, False], [False, True, False, False, False]])
    apply = jax.jit(attn.apply)
    params = jax.jit(attn.init)(jax.random.key(0), queries, kv, mask)
    out = apply(params, queries, kv, mask)
    changed = jnp.where(mask[..., None], kv, 100.0 * jnp.asarray(rng.standard_normal(kv.shape), jnp.float32))
    np.testing.assert_allclose(np.asarray(apply(params, queries, changed, mask)), np.asarray(out), atol=1e-6)
    # Same as attending to the unmasked keys alone (row 0: keys 0, 1, 3).
    kept = apply(params, queries[:1], kv[:1, jnp.array([0, 1, 3])], None)
    np.testing.assert_allclose(np.asarray(kept), np.asarray(out[:1]), atol=1e-5)
    # An unmasked key does matter.
    moved = apply(params, queries, kv.at[:, 1].add(1.0), mask)
    assert float(jnp.abs(moved - out).min(axis=(1, 2)).min()) > 0.0
