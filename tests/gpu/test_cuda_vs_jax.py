"""The CUDA backend (kernels/splat via XLA FFI) against the pure-JAX backend, on one GPU.

Needs an NVIDIA GPU and the built library. On the GPU machine, from the repository root:

    pip install -e ".[test]"     # builds flexavatar_jax/render/_splat_cuda.so when nvcc is found
    python -m flexavatar_jax.render.cuda_backend build   # (re)build explicitly, e.g. --arch sm_90
    JAX_PLATFORMS=cuda,cpu XLA_PYTHON_CLIENT_PREALLOCATE=false python -m pytest tests/gpu -q --durations=10

(one process: no `-n`, the tests share the GPU; `-k "not large"` / `-k large` splits the run). The
whole module is skipped when JAX sees no CUDA device (as on CPU-only CI), and fails loudly
(`test_library_is_available`) when a device exists but the library is missing or broken. Both
backends run on the GPU, so the comparison is kernel against XLA-compiled reference on the same
hardware. Tolerances are in tests/gpu/cuda_cases.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest


def _cuda_devices():
    try:
        return jax.devices("cuda")
    except RuntimeError:
        return []


if not _cuda_devices():
    pytest.skip("no CUDA device visible to JAX (run with JAX_PLATFORMS=cuda,cpu on a GPU machine)",
                allow_module_level=True)

from flexavatar_jax.render import cuda_backend  # noqa: E402
from flexavatar_jax.render import rasterize  # noqa: E402
from tests.gpu import cuda_cases as cases  # noqa: E402

W, H = 96, 80


def test_library_is_available():
    assert cuda_backend.is_available(), cuda_backend.unavailable_reason()
    assert jax.default_backend() == "gpu"


@pytest.mark.parametrize("render_mode", ["RGB", "D", "RGB+D"])
@pytest.mark.parametrize("num_views", [1, 4])
@pytest.mark.parametrize("channels", [3, 32])
def test_forward_matches_jax(channels, num_views, render_mode):
    scene = cases.random_scene(100 * channels + num_views, 3000, num_views, channels, W, H)
    cases.check_forward(scene, W, H, render_mode=render_mode)


@pytest.mark.parametrize("render_mode", ["RGB", "RGB+D"])
@pytest.mark.parametrize("num_views", [1, 3])
@pytest.mark.parametrize("channels", [3, 32])
def test_gradients_match_jax(channels, num_views, render_mode):
    # channels=32 with "RGB+D" is 33 features: two kernel passes (32 + 1).
    scene = cases.random_scene(7 * channels + num_views, 2000, num_views, channels, W, H)
    cases.check_gradients(scene, W, H, render_mode=render_mode)


def test_depth_only_gradients_match_jax():
    scene = cases.random_scene(3, 2000, 2, 3, W, H)
    cases.check_gradients(scene, W, H, render_mode="D", names=("means", "quats", "scales", "opacities", "viewmats"))


@pytest.mark.parametrize("tile_size", [8, 16])
def test_tile_sizes_and_ragged_images(tile_size):
    width, height = 77, 45  # not multiples of the tile size: partial edge tiles
    scene = cases.random_scene(21, 1500, 2, 3, width, height)
    cases.check_forward(scene, width, height, tile_size=tile_size)
    cases.check_gradients(scene, width, height, tile_size=tile_size)


@pytest.mark.parametrize("render_mode", ["RGB", "D", "RGB+D"])
def test_degenerate_inputs(render_mode):
    scene = cases.degenerate_scene(channels=3, width=W, height=H)
    cases.check_forward(scene, W, H, render_mode=render_mode)
    cases.check_gradients(scene, W, H, render_mode=render_mode)


def test_non_finite_camera_and_background():
    scene = cases.random_scene(4, 1000, 3, 3, W, H)
    scene["viewmats"][1, 0, 0] = np.nan
    scene["backgrounds"][2, 1] = np.inf
    cases.check_forward(scene, W, H)
    cases.check_gradients(scene, W, H)


def test_empty_scene_renders_background():
    scene = cases.random_scene(4, 0, 2, 3, W, H)
    images, alphas, diagnostics = cases.render("cuda", scene, W, H)
    np.testing.assert_array_equal(alphas, 0.0)
    np.testing.assert_allclose(images, np.broadcast_to(scene["backgrounds"][:, None, None], images.shape))
    assert diagnostics.valid.shape == (2, 0)


def test_vmap_jit_grad_compose():
    cases.check_vmap_jit_grad(W, H, channels=3)


def test_overflow_is_reported_like_jax():
    cases.check_overflow(W, H)


def test_large_scene():
    """A head-sized load: 60K Gaussians at 256², four cameras; thousands of Gaussians per tile and
    too many near-tied depths to separate, hence statistical comparisons (cuda_cases docstring)."""
    scene = cases.random_scene(8, 60_000, 4, 3, 256, 256, opaque_fraction=0.05, min_depth_gap=None)
    scene["scales"] *= 0.3
    cases.check_forward_statistics(scene, 256, 256)
    cases.check_gradients(scene, 256, 256, metric="l2")


def test_auto_picks_cuda_on_gpu():
    scene = cases.random_scene(9, 500, 2, 3, W, H)
    auto = cases.render("auto", scene, W, H)
    cuda = cases.render("cuda", scene, W, H)
    np.testing.assert_array_equal(auto[0], cuda[0])


def test_forward_is_deterministic():
    scene = cases.random_scene(10, 3000, 2, 3, W, H)
    first, second = cases.render("cuda", scene, W, H), cases.render("cuda", scene, W, H)
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[2].flatten_ids, second[2].flatten_ids)


def test_float64_inputs_are_rendered_in_float32():
    scene = {k: v.astype(np.float64) for k, v in cases.random_scene(12, 300, 1, 3, W, H).items()}
    images, _, diagnostics = rasterize(
        *(scene[k] for k in ("means", "quats", "scales", "opacities", "colors", "viewmats", "Ks")), W, H,
        backend="cuda", return_diagnostics=True,
    )
    assert images.dtype == jnp.float32 and diagnostics.means2d.dtype == jnp.float32


def test_rejects_unsupported_tile_size():
    scene = cases.random_scene(13, 10, 1, 3, W, H)
    with pytest.raises(ValueError, match="tile_size"):
        rasterize(*(scene[k] for k in ("means", "quats", "scales", "opacities", "colors", "viewmats", "Ks")),
                  W, H, tile_size=32, backend="cuda")
