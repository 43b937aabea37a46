"""Backend-equivalence checks: `rasterize(..., backend="cuda")` against `backend="jax"`.

Shared by tests/gpu/test_cuda_vs_jax.py (the real kernels on a GPU) and
tests/render/test_cuda_build.py (the same handler interface served by the serial C++ reference,
kernels/splat/reference_cpu.cc, on the CPU). Each `check_*` function renders with both backends
and asserts agreement; the caller decides what "cuda" runs on.

Tolerances: images and alphas 1e-4 absolute; gradients 1e-3 relative to the largest entry of the
same parameter's reference gradient (max |g_cuda − g_jax| ≤ 1e-3 · max |g_jax|), since entry-wise
relative error is meaningless for entries that are sums cancelling to ~0.

The two backends evaluate the same float32 formulas with different instruction sequences (XLA's
fusions vs nvcc's FMAs, exp implementations), so results differ by an ulp or so. Where the
renderer makes a discrete decision, an ulp can flip it, and both outcomes are correct:
* Order: two Gaussians whose camera depths agree to an ulp may be composited in either order.
  Test scenes drop Gaussians closer than `MIN_DEPTH_GAP` in depth to another one in any camera
  (`random_scene`); the large-scene test, where that is impossible, compares statistics.
* Thresholds: a pixel where some α lands within rounding of 1/255, or T·(1 − α) of 1e-4, keeps
  that Gaussian in one backend only (a jump of ~α·T ≈ 4e-3·T). Such pixels are recognised by
  their differing contributor count (`n_contrib`); they must be rare (≤ 0.1% of pixels), are
  excluded from the strict image comparison, and the Gaussians whose boxes cover them, and the
  per-camera gradients of their cameras, from the strict gradient comparison (`_decision_flips`).
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np

from flexavatar_jax.render import camera
from flexavatar_jax.render import TileOverflowWarning, rasterize

IMAGE_ATOL = 1e-4
GRAD_RTOL = 1e-3
MIN_DEPTH_GAP = 1e-5  # world units; ~40 float32 ulps at the test scenes' depths (~2.5)
PARAMS = ("means", "quats", "scales", "opacities", "colors", "backgrounds", "viewmats", "Ks")
_SCENE_KEYS = ("means", "quats", "scales", "opacities", "colors")


def separate_depths(scene: dict, min_gap: float = MIN_DEPTH_GAP, keep: int = 0) -> dict:
    """Drop Gaussians (never the first `keep`) whose camera depth is within `min_gap` of another's."""
    means = scene["means"].astype(np.float64)
    drop = np.zeros(len(means), bool)
    for viewmat in scene["viewmats"].astype(np.float64):
        depth = means @ viewmat[2, :3] + viewmat[2, 3]
        order = np.argsort(np.where(np.isfinite(depth), depth, np.inf), kind="stable")
        close = np.diff(depth[order]) < min_gap
        first, second = order[:-1][close], order[1:][close]
        drop[second[second >= keep]] = True
        drop[first[(second < keep) & (first >= keep)]] = True
    return dict(scene, **{k: scene[k][~drop] for k in _SCENE_KEYS})


def random_scene(seed: int, num_gaussians: int, num_views: int, channels: int, width: int = 48, height: int = 40,
                 opaque_fraction: float = 0.2, min_depth_gap: float | None = MIN_DEPTH_GAP) -> dict:
    """Gaussians in a box at the origin seen from ~2.5 units, off-centre principal points; with
    `min_depth_gap`, Gaussians at near-equal depths are dropped (see the module docstring)."""
    rng = np.random.default_rng(seed)
    means = rng.uniform(-0.6, 0.6, (num_gaussians, 3))
    quats = rng.normal(size=(num_gaussians, 4))
    scales = np.exp(rng.uniform(np.log(0.01), np.log(0.2), (num_gaussians, 3)))
    opacities = rng.uniform(0.05, 1.0, num_gaussians)
    opaque = rng.random(num_gaussians) < opaque_fraction
    opacities[opaque] = rng.uniform(0.98, 1.0, opaque.sum())  # α clamp and early termination
    colors = rng.uniform(0, 1, (num_gaussians, channels))
    eyes = rng.normal(size=(num_views, 3))
    eyes = 2.5 * eyes / np.linalg.norm(eyes, axis=1, keepdims=True)
    viewmats = camera.look_at(eyes.astype(np.float32), rng.uniform(-0.2, 0.2, (num_views, 3)).astype(np.float32))
    Ks = np.stack([np.asarray(camera.intrinsics_from_fov(fov, width, height)) for fov in rng.uniform(35, 60, num_views)])
    Ks[:, 0, 2] += rng.uniform(-3, 3, num_views)
    backgrounds = rng.uniform(0, 1, (num_views, channels))
    f32 = lambda x: np.array(x, np.float32)  # noqa: E731 - a writable copy (tests edit scenes)
    scene = dict(means=f32(means), quats=f32(quats), scales=f32(scales), opacities=f32(opacities), colors=f32(colors),
                 viewmats=f32(viewmats), Ks=f32(Ks), backgrounds=f32(backgrounds))
    return scene if min_depth_gap is None else separate_depths(scene, min_depth_gap)


def degenerate_scene(seed: int = 0, channels: int = 3, width: int = 48, height: int = 40) -> dict:
    """A random scene from one frontal camera plus every kind of bad Gaussian the renderer must
    survive: NaN/inf parameters, zero and negative scales, a zero quaternion, Gaussians behind the
    camera, straddling and just beyond the near plane, beyond the frustum clamp, huge splats,
    opacities of 0, 1/255 and 1, and a NaN colour."""
    scene = random_scene(seed, 200, 1, channels, width, height, min_depth_gap=None)
    scene["viewmats"] = np.asarray(camera.look_at(np.array([[0.0, 0.0, 2.5]], np.float32),
                                                  np.zeros((1, 3), np.float32)), np.float32)
    m, q, s, o, c = (scene[k] for k in ("means", "quats", "scales", "opacities", "colors"))
    m[0] = np.nan                                    # non-finite mean
    s[1] = 0.0                                       # zero scale: only eps2d remains
    s[2] = -s[2]                                     # negative scale: same covariance
    q[3] = 0.0                                       # zero quaternion: identity rotation
    m[4] = (0.0, 0.0, 3.5)                           # behind the camera
    m[5], s[5] = (0.0, 0.0, 2.495), (0.3, 0.3, 0.3)  # centre 5 mm in front of the camera: culled by near
    m[6], s[6] = (0.0, 0.0, 2.47), (0.2, 0.2, 0.2)   # 3 cm in front: valid, straddles the near plane
    m[7], s[7] = (0.1, -0.1, 0.0), (30.0, 30.0, 30.0)  # huge splat covering every tile
    m[8] = (40.0, 0.0, 0.0)                          # far outside the frustum clamp
    m[9], s[9] = (2.0, 0.0, 1.0), (1.5, 1.5, 1.5)    # off-screen centre, clamped Jacobian, visible edge
    o[10], o[11], o[12] = 0.0, 1.0 / 255.0, 1.0
    s[13] = np.inf
    q[14] = np.nan
    o[15] = np.nan
    c[16] = np.nan                                   # culled in RGB modes only
    return separate_depths(scene, keep=17)


def _split(scene: dict):
    arrays = tuple(scene[k] for k in ("means", "quats", "scales", "opacities", "colors", "viewmats", "Ks"))
    return arrays, scene.get("backgrounds")


def render(backend: str, scene: dict, width: int, height: int, **kw):
    """(images, alphas, diagnostics) as numpy."""
    arrays, backgrounds = _split(scene)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TileOverflowWarning)
        out = rasterize(*arrays, width, height, backgrounds=backgrounds, backend=backend, return_diagnostics=True,
                        **kw)
    return jax.tree.map(np.asarray, out)


def assert_close_images(got, want, what: str, atol: float = IMAGE_ATOL):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    assert np.all(np.isfinite(got)), f"{what}: non-finite values"
    err = float(np.max(np.abs(got - want))) if got.size else 0.0
    assert err <= atol, f"{what}: max abs error {err:.3g} > {atol}"


def _assert_mostly_equal(got, want, what: str, fraction: float) -> None:
    """All but max(1, (1 − fraction)·size) entries equal."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    differ = int(np.sum(got != want))
    allowed = max(1, int((1.0 - fraction) * got.size))
    assert differ <= allowed, f"{what}: {differ} of {got.size} entries differ (at most {allowed} allowed)"


def check_structure(got, want) -> None:
    """The integer diagnostics agree. A float32 rounding coincidence (a radius at an integer, a
    box edge on a tile edge or the image border) can move one box by a pixel or a tile without
    changing any composited α, since boxes end where α drops below 1/255; so per-Gaussian and
    per-tile entries must agree almost everywhere, and everything else exactly when they all do."""
    _assert_mostly_equal(got.valid, want.valid, "valid", 0.9995)
    radii_diff = np.abs(got.radii.astype(np.int64) - want.radii)
    assert radii_diff.size == 0 or radii_diff.max() <= 1, "radii differ by more than one pixel"
    _assert_mostly_equal(got.radii, want.radii, "radii", 0.999)
    _assert_mostly_equal(got.tiles_per_gaussian, want.tiles_per_gaussian, "tiles_per_gaussian", 0.999)
    _assert_mostly_equal(got.tile_counts, want.tile_counts, "tile_counts", 0.99)
    exact = all(np.array_equal(getattr(got, f), getattr(want, f))
                for f in ("valid", "tiles_per_gaussian", "tile_counts", "tile_composited"))
    if exact:
        for field in ("tile_offsets", "flatten_ids", "overflow"):
            np.testing.assert_array_equal(getattr(got, field), getattr(want, field), err_msg=field)


MAX_FLIP_FRACTION = 1e-3


def _flipped_pixels(got, want) -> np.ndarray:
    """[V,H,W] pixels where the backends kept different Gaussians (threshold flips)."""
    _assert_mostly_equal(got.n_contrib, want.n_contrib, "contributor counts (more flips than rounding explains)",
                         1.0 - MAX_FLIP_FRACTION)
    return np.asarray(got.n_contrib) != np.asarray(want.n_contrib)


def _decision_flips(scene: dict, width: int, height: int, **kw):
    """(Gaussians [N] whose box covers a flipped pixel, cameras [V] with a flipped pixel)."""
    _, _, want = render("jax", scene, width, height, **kw)
    _, _, got = render("cuda", scene, width, height, **kw)
    flips = _flipped_pixels(got, want)
    touched = np.zeros(want.valid.shape[1], bool)
    for v, y, x in zip(*np.nonzero(flips)):
        d = np.abs(want.means2d[v] - np.array([x + 0.5, y + 0.5]))
        touched |= want.valid[v] & np.all(d <= want.radii[v] + 1.0, axis=-1)
    return touched, flips.any(axis=(1, 2))


def check_forward(scene: dict, width: int, height: int, **kw) -> None:
    """Images, alphas and the diagnostics agree between the two backends."""
    want_img, want_alpha, want = render("jax", scene, width, height, **kw)
    got_img, got_alpha, got = render("cuda", scene, width, height, **kw)
    steady = ~_flipped_pixels(got, want)[..., None]
    assert_close_images(np.where(steady, got_img, want_img), want_img, "images")
    assert_close_images(np.where(steady, got_alpha, want_alpha), want_alpha, "alphas")
    assert_close_images(got_alpha, want_alpha, "alphas at flipped pixels", atol=0.01)
    check_structure(got, want)
    both = want.valid & got.valid
    for field in ("means2d", "depths", "conics"):
        w, g = getattr(want, field)[both], getattr(got, field)[both]
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5 * max(1.0, float(np.abs(w).max(initial=0.0))),
                                   err_msg=field)


def check_forward_statistics(scene: dict, width: int, height: int, **kw) -> None:
    """For scenes too dense to separate depths (near-tied Gaussians may swap): 99.9% of values
    within IMAGE_ATOL and a tiny mean error instead of a max."""
    want_img, want_alpha, want = render("jax", scene, width, height, **kw)
    got_img, got_alpha, got = render("cuda", scene, width, height, **kw)
    for what, g, w in (("images", got_img, want_img), ("alphas", got_alpha, want_alpha)):
        err = np.abs(g - w)
        assert np.all(np.isfinite(g)), what
        assert np.mean(err <= IMAGE_ATOL) >= 0.999, f"{what}: {np.mean(err > IMAGE_ATOL):.4%} of values off"
        assert float(err.mean()) <= 1e-5, f"{what}: mean abs error {err.mean():.3g}"
    check_structure(got, want)


def _loss(backend: str, width: int, height: int, **kw):
    def loss(params):
        images, alphas = rasterize(
            params["means"], params["quats"], params["scales"], params["opacities"], params["colors"],
            params["viewmats"], params["Ks"], width, height, backgrounds=params["backgrounds"], backend=backend, **kw,
        )
        # Fixed pseudo-random weights so that every pixel and channel matters differently.
        w_img = jnp.cos(jnp.arange(images.size, dtype=jnp.float32) * 0.7).reshape(images.shape)
        w_alpha = jnp.sin(jnp.arange(alphas.size, dtype=jnp.float32) * 1.3).reshape(alphas.shape)
        return jnp.sum(images * w_img) + jnp.sum(alphas * w_alpha)

    return loss


def gradients(backend: str, scene: dict, width: int, height: int, **kw) -> dict:
    params = {k: jnp.asarray(scene[k]) for k in PARAMS}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TileOverflowWarning)
        grads = jax.grad(_loss(backend, width, height, **kw))(params)
    return jax.tree.map(np.asarray, grads)


_PER_GAUSSIAN = ("means", "quats", "scales", "opacities", "colors")


def assert_close_gradients(got: dict, want: dict, names=PARAMS, rtol: float = GRAD_RTOL, exclude_gaussians=None,
                           exclude_cameras=None, metric: str = "max") -> None:
    """max: max |g − w| ≤ rtol·max |w|; l2: ‖g − w‖ ≤ rtol·‖w‖ (robust to a few swapped pairs).
    Excluded Gaussians/cameras (threshold flips) are left out of the comparison."""
    for name in names:
        g, w = np.asarray(got[name]), np.asarray(want[name])
        assert np.all(np.isfinite(g)), f"d/d{name}: non-finite gradient"
        skip = exclude_gaussians if name in _PER_GAUSSIAN else exclude_cameras
        if skip is not None and np.any(skip):
            g, w = g[~skip], w[~skip]
        if metric == "max":
            scale, err = float(np.max(np.abs(w), initial=0.0)), float(np.max(np.abs(g - w), initial=0.0))
            assert err <= rtol * scale + 1e-7, f"d/d{name}: max abs error {err:.3g} vs max |grad| {scale:.3g}"
        else:
            err = float(np.linalg.norm(g - w)) / max(float(np.linalg.norm(w)), 1e-12)
            assert err <= rtol, f"d/d{name}: relative L2 error {err:.3g}"


def check_gradients(scene: dict, width: int, height: int, names=PARAMS, metric: str = "max", **kw) -> None:
    touched, cameras = _decision_flips(scene, width, height, **kw)
    # Guard against a vacuous comparison (flips are already bounded per pixel).
    assert touched.mean() <= 0.1 if touched.size else True, f"{touched.mean():.2%} of Gaussians near flipped pixels"
    assert_close_gradients(gradients("cuda", scene, width, height, **kw), gradients("jax", scene, width, height, **kw),
                           names, exclude_gaussians=touched, exclude_cameras=cameras, metric=metric)


def check_vmap_jit_grad(width: int = 40, height: int = 32, channels: int = 3) -> None:
    """vmap over scenes (one batched call per stage) equals per-scene calls and the JAX backend,
    under jit, and its gradient equals the per-scene gradients."""
    scenes = [random_scene(seed, 120, 2, channels, width, height) for seed in (11, 12, 13)]
    n = min(len(s["means"]) for s in scenes)  # depth separation may have dropped a few
    scenes = [dict(s, **{k: s[k][:n] for k in _SCENE_KEYS}) for s in scenes]
    batch = {k: jnp.stack([jnp.asarray(s[k]) for s in scenes]) for k in PARAMS}

    def images_of(backend):
        def one(p):
            return rasterize(p["means"], p["quats"], p["scales"], p["opacities"], p["colors"], p["viewmats"],
                             p["Ks"], width, height, backgrounds=p["backgrounds"], backend=backend)
        return one

    batched = jax.jit(jax.vmap(images_of("cuda")))(batch)
    for i, scene in enumerate(scenes):
        single = images_of("cuda")({k: jnp.asarray(scene[k]) for k in PARAMS})
        for got, want in zip(batched, single):
            assert_close_images(got[i], want, f"vmap scene {i}", atol=1e-6)
    for got, want in zip(batched, jax.vmap(images_of("jax"))(batch)):
        assert_close_images(got, want, "vmap vs jax backend")

    # Gaussians shared, cameras batched: vmap over viewmats only.
    shared = {k: jnp.asarray(scenes[0][k]) for k in PARAMS}
    per_camera = jax.vmap(lambda vm: images_of("cuda")(dict(shared, viewmats=vm))[0])(batch["viewmats"])
    for i in range(len(scenes)):
        want = images_of("jax")(dict(shared, viewmats=batch["viewmats"][i]))[0]
        assert_close_images(per_camera[i], want, f"vmap over viewmats {i}")

    def batch_loss(backend):
        def loss(p):
            images, alphas = jax.vmap(images_of(backend))(p)
            return jnp.sum(images * jnp.cos(jnp.arange(images.size, dtype=jnp.float32)).reshape(images.shape)) + \
                jnp.sum(alphas)
        return loss

    got = jax.tree.map(np.asarray, jax.jit(jax.grad(batch_loss("cuda")))(batch))
    want = jax.tree.map(np.asarray, jax.grad(batch_loss("jax"))(batch))
    assert_close_gradients(got, want)


def check_overflow(width: int = 48, height: int = 40) -> None:
    """Capacities bite identically: same overflow counts, same images, a warning from both."""
    scene = random_scene(5, 400, 2, 3, width, height)
    for kw in (dict(max_intersections=300), dict(max_gaussians_per_tile=7),
               dict(max_intersections=900, max_gaussians_per_tile=20)):
        _, _, want = render("jax", scene, width, height, **kw)
        _, _, got = render("cuda", scene, width, height, **kw)
        assert np.sum(want.overflow) > 0
        np.testing.assert_array_equal(got.overflow, want.overflow)
        check_forward(scene, width, height, **kw)
        arrays, backgrounds = _split(scene)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            rasterize(*arrays, width, height, backgrounds=backgrounds, backend="cuda", **kw)
        assert any(issubclass(w.category, TileOverflowWarning) for w in caught)
