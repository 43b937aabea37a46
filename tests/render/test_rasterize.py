"""Tests for `flexavatar_jax.render.rasterize` (pure-JAX backend) against an independent dense
float64 reference.

The reference below is written from the gsplat 1.5.3 formulas (not from the module under test):
every pixel is tested against every Gaussian, Gaussians are ordered by camera depth and composited
front to back one at a time. It has no tiles and no bounding boxes at all, so it also checks that
the tiling never drops a contribution.
"""

from __future__ import annotations

import dataclasses
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from flexavatar_jax.render import MAX_ALPHA, RasterDiagnostics, RasterOptions, TileOverflowWarning, camera, rasterize
from flexavatar_jax.render.common import default_tile_size

# --------------------------------------------------------------------------------------------
# Dense float64 reference
# --------------------------------------------------------------------------------------------


def reference_project(means, quats, scales, viewmat, K, width, height, near=0.01, far=1e10, eps2d=0.3):
    """Per-Gaussian (mean2d [N,2], depth [N], conic [N,2,2], visible [N]) in float64."""
    means, quats, scales = (np.asarray(x, np.float64) for x in (means, quats, scales))
    viewmat, K = np.asarray(viewmat, np.float64), np.asarray(K, np.float64)
    rot_world = Rotation.from_quat(quats[:, [1, 2, 3, 0]]).as_matrix()  # scipy wants xyzw
    cov = rot_world @ (scales[:, :, None] ** 2 * np.swapaxes(rot_world, 1, 2))
    w, t = viewmat[:3, :3], viewmat[:3, 3]
    p = means @ w.T + t
    cov_c = w @ cov @ w.T
    x, y, z = p[:, 0], p[:, 1], p[:, 2]
    visible = (z > near) & (z < far)
    zs = np.where(visible, z, 1.0)
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    half_x, half_y = 0.5 * width / fx, 0.5 * height / fy
    u = np.clip(x / zs, -(cx / fx + 0.3 * half_x), (width - cx) / fx + 0.3 * half_x)
    v = np.clip(y / zs, -(cy / fy + 0.3 * half_y), (height - cy) / fy + 0.3 * half_y)
    jac = np.zeros((len(z), 2, 3))
    jac[:, 0, 0] = fx / zs
    jac[:, 1, 1] = fy / zs
    jac[:, 0, 2] = -fx * u / zs
    jac[:, 1, 2] = -fy * v / zs
    cov2d = jac @ cov_c @ np.swapaxes(jac, 1, 2) + eps2d * np.eye(2)
    det = np.linalg.det(cov2d)
    visible &= det > 0
    conic = np.linalg.inv(np.where(visible[:, None, None], cov2d, np.eye(2)))
    mean2d = np.stack([fx * x / zs + cx, fy * y / zs + cy], -1)
    return mean2d, z, conic, visible


def reference_render(means, quats, scales, opacities, colors, viewmats, Ks, width, height,
                     backgrounds=None, render_mode="RGB", near=0.01, far=1e10, eps2d=0.3):
    """Dense float64 rendering: (images [V,H,W,D], alphas [V,H,W,1], n_contrib [V,H,W])."""
    opacities, colors = np.asarray(opacities, np.float64), np.asarray(colors, np.float64)
    ys, xs = np.mgrid[0:height, 0:width]
    pix = np.stack([xs.ravel() + 0.5, ys.ravel() + 0.5], -1)  # [P,2]
    images, alphas, counts = [], [], []
    for view in range(len(viewmats)):
        mean2d, depth, conic, visible = reference_project(
            means, quats, scales, viewmats[view], Ks[view], width, height, near, far, eps2d
        )
        feats = []
        if render_mode in ("RGB", "RGB+D"):
            feats.append(colors)
        if render_mode in ("D", "RGB+D"):
            feats.append(depth[:, None])
        feats = np.concatenate(feats, -1)
        color = np.zeros((len(pix), feats.shape[1]))
        trans = np.ones(len(pix))
        done = np.zeros(len(pix), bool)
        count = np.zeros(len(pix), int)
        for g in np.argsort(np.where(visible, depth, np.inf), kind="stable"):
            if not visible[g]:
                break
            d = mean2d[g] - pix
            (a, b), (_, c) = conic[g]
            sigma = 0.5 * (a * d[:, 0] ** 2 + c * d[:, 1] ** 2) + b * d[:, 0] * d[:, 1]
            alpha = np.minimum(MAX_ALPHA, opacities[g] * np.exp(-sigma))
            use = ~done & (sigma >= 0) & (alpha >= 1.0 / 255.0)
            next_t = trans * (1 - alpha)
            stop = use & (next_t <= 1e-4)
            done |= stop
            use &= ~stop
            color[use] += feats[g] * (alpha[use] * trans[use])[:, None]
            trans = np.where(use, next_t, trans)
            count += use
        alpha_img = 1 - trans
        out = []
        if render_mode in ("RGB", "RGB+D"):
            rgb = color[:, : colors.shape[1]]
            if backgrounds is not None:
                rgb = rgb + trans[:, None] * np.asarray(backgrounds[view], np.float64)
            out.append(rgb)
        if render_mode in ("D", "RGB+D"):
            out.append(color[:, -1:] / np.maximum(alpha_img, 1e-10)[:, None])
        images.append(np.concatenate(out, -1).reshape(height, width, -1))
        alphas.append(alpha_img.reshape(height, width, 1))
        counts.append(count.reshape(height, width))
    return np.stack(images), np.stack(alphas), np.stack(counts)


# --------------------------------------------------------------------------------------------
# Scenes
# --------------------------------------------------------------------------------------------


def random_scene(seed, num_gaussians, num_views, channels, width=40, height=32, opaque_fraction=0.2):
    """Gaussians in a unit box at the origin, seen by cameras ~2.5 units away (some off-axis)."""
    rng = np.random.default_rng(seed)
    means = rng.uniform(-0.6, 0.6, (num_gaussians, 3))
    quats = rng.normal(size=(num_gaussians, 4))
    scales = np.exp(rng.uniform(np.log(0.01), np.log(0.25), (num_gaussians, 3)))
    opacities = rng.uniform(0.05, 1.0, num_gaussians)
    opaque = rng.random(num_gaussians) < opaque_fraction
    opacities[opaque] = rng.uniform(0.98, 1.0, opaque.sum())  # exercises α clamp and early stop
    colors = rng.uniform(0, 1, (num_gaussians, channels))
    eyes = rng.normal(size=(num_views, 3))
    eyes = 2.5 * eyes / np.linalg.norm(eyes, axis=1, keepdims=True)
    targets = rng.uniform(-0.2, 0.2, (num_views, 3))
    viewmats = camera.look_at(eyes.astype(np.float32), targets.astype(np.float32))
    fovs = rng.uniform(35, 60, num_views)
    Ks = np.stack([np.asarray(camera.intrinsics_from_fov(fov, width, height)) for fov in fovs])
    Ks[:, 0, 2] += rng.uniform(-3, 3, num_views)  # off-centre principal point
    f32 = lambda x: np.asarray(x, np.float32)  # noqa: E731
    return dict(means=f32(means), quats=f32(quats), scales=f32(scales), opacities=f32(opacities),
                colors=f32(colors), viewmats=f32(viewmats), Ks=f32(Ks))


def call(fn, scene, width=40, height=32, **kw):
    s = scene
    args = [s[k] for k in ("means", "quats", "scales", "opacities", "colors", "viewmats", "Ks")]
    return fn(*args, width, height, **kw)


def with_diagnostics(*args, **kw):
    return rasterize(*args, return_diagnostics=True, **kw)


def assert_close_to_reference(ours, ref):
    err = np.abs(np.asarray(ours, np.float64) - ref)
    per_pixel = err.reshape(-1, err.shape[-1]).max(-1)
    assert np.isfinite(per_pixel).all()
    assert np.mean(per_pixel <= 1e-4) >= 0.999, f"{np.mean(per_pixel > 1e-4):.4%} pixels above 1e-4"
    assert per_pixel.max() <= 5e-3, f"max abs error {per_pixel.max():.3g}"


# --------------------------------------------------------------------------------------------
# Forward against the reference
# --------------------------------------------------------------------------------------------


# Most tests use this scene shape (N, V, C) at 40×32 with backgrounds, so that the jit cache of a
# test worker is reused across tests instead of compiling per test.
STANDARD = (150, 2, 3)


def standard_backgrounds(seed=0):
    return np.random.default_rng(seed).uniform(0, 1, (STANDARD[1], STANDARD[2])).astype(np.float32)


# The pure-JAX compositor's two formulations (RasterOptions.compositor; "lockstep" is the default).
COMPOSITORS = ["sequential", "lockstep"]


@pytest.mark.parametrize(
    "seed,num_gaussians,num_views,channels,with_background,tile_size,render_mode,compositor",
    [
        (0, *STANDARD, True, 16, "RGB", "sequential"),
        (1, 150, 2, 7, True, 16, "RGB", "lockstep"),
        (2, 300, 3, 3, False, 16, "RGB", "lockstep"),
        (3, 300, 1, 7, False, 8, "RGB", "sequential"),
        (4, 120, 2, 3, True, 32, "RGB+D", "sequential"),
        (0, *STANDARD, True, 16, "RGB", "lockstep"),
        (3, 300, 1, 7, False, 8, "RGB", "lockstep"),
        (4, 120, 2, 3, True, 32, "RGB+D", "lockstep"),
    ],
)
def test_matches_dense_reference(seed, num_gaussians, num_views, channels, with_background, tile_size, render_mode,
                                 compositor):
    scene = random_scene(seed, num_gaussians, num_views, channels)
    backgrounds = None
    if with_background:
        backgrounds = np.random.default_rng(seed).uniform(0, 1, (num_views, channels)).astype(np.float32)
    images, alphas, diag = call(
        with_diagnostics, scene, backgrounds=backgrounds, tile_size=tile_size, render_mode=render_mode,
        compositor=compositor,
    )
    ref_images, ref_alphas, ref_counts = reference_render(
        **scene, width=40, height=32, backgrounds=backgrounds, render_mode=render_mode
    )
    depth_channels = int(render_mode == "RGB+D")
    assert images.shape == (num_views, 32, 40, channels + depth_channels) and alphas.shape == (num_views, 32, 40, 1)
    if depth_channels:  # depth is ~2.5 world units: compare it relative to that scale
        scale = np.array([1.0] * channels + [2.5])
        images, ref_images = np.asarray(images) / scale, ref_images / scale
    assert_close_to_reference(images, ref_images)
    assert_close_to_reference(alphas, ref_alphas)
    assert int(np.sum(diag.overflow)) == 0
    # Contributor counts may differ only where a decision sits on a threshold.
    assert np.mean(np.asarray(diag.n_contrib) == ref_counts) >= 0.995
    # The scenes must actually exercise early termination, or the test proves less than it claims.
    if num_gaussians >= 150:
        assert np.any(ref_alphas > 1 - 1.1e-3)


@pytest.mark.parametrize("compositor", COMPOSITORS)
def test_float64_matches_reference_to_rounding(compositor):
    """Run in float64, the tiled renderer and the dense reference agree on every pixel to ~1e-12:
    tiling, capacities, chunking and log-space transmittance change nothing but rounding."""
    scene = random_scene(8, 200, 2, 3)
    backgrounds = np.full((2, 3), 0.25)
    with jax.enable_x64(True):
        args = [jnp.asarray(scene[k], jnp.float64) for k in ("means", "quats", "scales", "opacities", "colors")]
        cams = [jnp.asarray(scene[k], jnp.float64) for k in ("viewmats", "Ks")]
        images, alphas = rasterize(*args, *cams, 40, 32, backgrounds=jnp.asarray(backgrounds), render_mode="RGB+D",
                                   compositor=compositor)
        assert images.dtype == jnp.float64
    ref_images, ref_alphas, _ = reference_render(
        **scene, width=40, height=32, backgrounds=backgrounds, render_mode="RGB+D"
    )
    np.testing.assert_allclose(images, ref_images, rtol=0, atol=1e-9)
    np.testing.assert_allclose(alphas, ref_alphas, rtol=0, atol=1e-9)


def test_depth_mode_is_expected_depth():
    """ "D" = z rendered as a colour channel, divided by alpha (0 where empty); bg never applies."""
    scene = random_scene(5, 150, 1, 3)
    depth, alphas = call(rasterize, scene, render_mode="D", backgrounds=np.full((1, 3), 0.5, np.float32))
    ref_depth, ref_alphas, _ = reference_render(**scene, width=40, height=32, render_mode="D")
    assert depth.shape == (1, 32, 40, 1)
    assert_close_to_reference(np.asarray(depth) / 2.5, ref_depth / 2.5)  # depth ~2.5 world units
    assert_close_to_reference(alphas, ref_alphas)
    assert np.any(ref_alphas == 0) and np.all(np.asarray(depth)[ref_alphas == 0] == 0)
    viewmat = scene["viewmats"][0]
    z = scene["means"] @ viewmat[2, :3] + viewmat[2, 3]
    as_colour, alphas_z = call(rasterize, {**scene, "colors": z[:, None].astype(np.float32)})
    np.testing.assert_array_equal(alphas_z, alphas)
    expected = np.asarray(as_colour) / np.maximum(np.asarray(alphas_z), 1e-10)
    np.testing.assert_allclose(depth, expected, rtol=1e-5, atol=1e-5)


def test_non_square_small_and_empty_views():
    scene = random_scene(7, 60, 1, 3, width=17, height=5)
    bg = np.array([[0.1, 0.2, 0.3]], np.float32)
    render = jax.jit(
        lambda viewmats: call(rasterize, {**scene, "viewmats": viewmats}, width=17, height=5, backgrounds=bg)
    )
    images, alphas = render(scene["viewmats"])
    ref_images, ref_alphas, _ = reference_render(**scene, width=17, height=5, backgrounds=bg)
    assert_close_to_reference(images, ref_images)
    assert_close_to_reference(alphas, ref_alphas)
    # A camera looking away from everything renders the background exactly.
    away = camera.look_at(np.array([[0.0, 0.0, 5.0]], np.float32), np.array([[0.0, 0.0, 10.0]], np.float32))
    images, alphas = render(np.asarray(away))
    np.testing.assert_array_equal(alphas, 0.0)
    np.testing.assert_allclose(images, np.broadcast_to(bg[:, None, None], images.shape))


# --------------------------------------------------------------------------------------------
# Gradients against finite differences of the float64 reference
# --------------------------------------------------------------------------------------------


def look_at_origin_from(eye):
    """[1,4,4] float64 world->camera matrix of a camera at `eye` looking at the origin."""
    return np.asarray(camera.look_at(np.array([eye], np.float32), np.zeros((1, 3), np.float32)), np.float64)


def smooth_scene(seed):
    """Few semi-transparent Gaussians inside the view, away from α clamping and early stop."""
    rng = np.random.default_rng(seed)
    n = 8
    scene = dict(
        means=rng.uniform(-0.35, 0.35, (n, 3)),
        quats=rng.normal(size=(n, 4)),
        scales=rng.uniform(0.08, 0.2, (n, 3)),
        opacities=rng.uniform(0.3, 0.8, n),
        colors=rng.uniform(0, 1, (n, 3)),
        viewmats=look_at_origin_from([0.3, -0.2, 2.5]),
        Ks=np.asarray(camera.intrinsics_from_fov(45.0, 24, 20), np.float64)[None],
        backgrounds=rng.uniform(0, 1, (1, 3)),
    )
    return scene


DIFFERENTIABLE = ["means", "quats", "scales", "opacities", "colors", "backgrounds", "viewmats", "Ks"]


@pytest.mark.parametrize("render_mode,compositor", [("RGB", "lockstep"), ("RGB+D", "sequential"), ("RGB+D", "lockstep")])
def test_gradients_match_reference_finite_differences(render_mode, compositor):
    width, height = 24, 20
    scene = smooth_scene(0)
    rng = np.random.default_rng(1)
    channels = 3 + (render_mode == "RGB+D")
    weights = rng.normal(size=(1, height, width, channels))
    alpha_weights = rng.normal(size=(1, height, width, 1))

    def loss_ours(params):
        images, alphas = rasterize(
            params["means"], params["quats"], params["scales"], params["opacities"], params["colors"],
            params["viewmats"], params["Ks"], width, height, backgrounds=params["backgrounds"], render_mode=render_mode,
            compositor=compositor,
        )
        return jnp.sum(images * weights) + jnp.sum(alphas * alpha_weights)

    def loss_ref(params):
        images, alphas, _ = reference_render(
            params["means"], params["quats"], params["scales"], params["opacities"], params["colors"],
            params["viewmats"], params["Ks"], width, height, backgrounds=params["backgrounds"], render_mode=render_mode,
        )
        return np.sum(images * weights) + np.sum(alphas * alpha_weights)

    params32 = {k: jnp.asarray(v, jnp.float32) for k, v in scene.items()}
    grads = jax.jit(jax.grad(loss_ours))(params32)
    for name in DIFFERENTIABLE:
        direction = rng.normal(size=scene[name].shape)
        if name == "viewmats":
            direction[:, 3] = 0.0  # keep the homogeneous row
        if name == "Ks":
            direction = direction * np.array([[1, 0, 1], [0, 1, 1], [0, 0, 0]])  # fx, fy, cx, cy
        h = 1e-6
        plus = {**scene, name: scene[name] + h * direction}
        minus = {**scene, name: scene[name] - h * direction}
        fd = (loss_ref(plus) - loss_ref(minus)) / (2 * h)
        ours = float(np.sum(np.asarray(grads[name], np.float64) * direction))
        assert np.isfinite(ours)
        assert abs(ours - fd) <= 2e-3 * max(abs(fd), 1.0), f"{name}: grad·dir {ours:.6g} vs finite difference {fd:.6g}"


@pytest.mark.parametrize("compositor", COMPOSITORS)
def test_gradients_with_early_termination_match_finite_differences(compositor):
    """Opaque stacks: the backward must skip exactly the Gaussians the forward skipped."""
    width, height = 16, 16
    rng = np.random.default_rng(3)
    n = 6
    means = np.stack([rng.uniform(-0.05, 0.05, n), rng.uniform(-0.05, 0.05, n), np.linspace(-0.3, 0.3, n)], -1)
    scene = dict(
        means=means, quats=rng.normal(size=(n, 4)), scales=rng.uniform(0.3, 0.4, (n, 3)),
        opacities=np.array([0.97, 0.95, 0.9, 0.96, 0.93, 0.9]), colors=rng.uniform(0, 1, (n, 3)),
        viewmats=look_at_origin_from([0.0, 0.0, 3.0]),
        Ks=np.asarray(camera.intrinsics_from_fov(30.0, width, height), np.float64)[None],
    )
    weights = rng.normal(size=(1, height, width, 3))
    _, ref_alphas, ref_counts = reference_render(**scene, width=width, height=height)
    assert ref_counts.min() < n  # some pixels do stop early

    def loss_ours(means, opacities, colors):
        images, _ = rasterize(
            means, scene["quats"], scene["scales"], opacities, colors, scene["viewmats"], scene["Ks"], width, height,
            compositor=compositor,
        )
        return jnp.sum(images * weights)

    names = ("means", "opacities", "colors")
    grads = jax.grad(loss_ours, argnums=(0, 1, 2))(*(jnp.asarray(scene[k], jnp.float32) for k in names))
    def loss_ref(name, value):
        return np.sum(reference_render(**{**scene, name: value}, width=width, height=height)[0] * weights)

    for name, grad in zip(names, grads):
        direction = rng.normal(size=scene[name].shape)
        h = 1e-6
        fd = (loss_ref(name, scene[name] + h * direction) - loss_ref(name, scene[name] - h * direction)) / (2 * h)
        ours = float(np.sum(np.asarray(grad, np.float64) * direction))
        assert abs(ours - fd) <= 2e-3 * max(abs(fd), 1.0), f"{name}: {ours:.6g} vs {fd:.6g}"


def test_hand_written_chunk_vjp_matches_autodiff():
    """The compositor's backward for one chunk equals jax.vjp of its forward definition."""
    from flexavatar_jax.render.jax_backend import _chunk_backward, _chunk_composite, _pixel_moment_basis

    rng = np.random.default_rng(4)
    chunk, tile, features = 64, 16, 5
    centre = np.array([16.0 + 7.5, 32.0 + 7.5])
    ys, xs = np.mgrid[0:tile, 0:tile]
    pixels = np.stack([xs.ravel() + 16.5, ys.ravel() + 32.5], -1)
    cov = rng.uniform(0.5, 20.0, (chunk, 2)) * [1.0, 1.0]
    corr = rng.uniform(-0.8, 0.8, chunk) * np.sqrt(cov[:, 0] * cov[:, 1])
    det = cov[:, 0] * cov[:, 1] - corr**2
    rows = np.concatenate(
        [centre + rng.uniform(-14, 14, (chunk, 2)), np.stack([cov[:, 1] / det, -corr / det, cov[:, 0] / det], -1),
         rng.uniform(0.2, 1.0, (chunk, 1)), rng.normal(size=(chunk, features))], axis=1)
    rows[::7, 5] = 1.0  # some clamp at MAX_ALPHA
    live = np.arange(chunk)[None, :] < rng.integers(0, chunk + 1, (tile * tile, 1))
    t_start = rng.uniform(0.05, 1.0, tile * tile)
    cot_acc, cot_t = rng.normal(size=(tile * tile, features)), rng.normal(size=tile * tile)
    f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
    rows, pixels, t_start, cot_acc, cot_t, centre = map(f32, (rows, pixels, t_start, cot_acc, cot_t, centre))
    live = jnp.asarray(live)

    (_, t_end), vjp = jax.vjp(lambda r, t0: _chunk_composite(r, t0, live, pixels), rows, t_start)
    want_rows, want_t = vjp((cot_acc, cot_t))
    basis = _pixel_moment_basis(pixels, centre)
    got_rows, got_t_start, got_t = _chunk_backward(rows, pixels, centre, basis, live, t_end, cot_acc, cot_t)
    np.testing.assert_allclose(got_t_start, t_start, rtol=1e-5)
    np.testing.assert_allclose(got_t, want_t, rtol=1e-4, atol=1e-4 * np.abs(want_t).max())
    for column in range(rows.shape[1]):
        scale = np.abs(want_rows[:, column]).max()
        np.testing.assert_allclose(got_rows[:, column], want_rows[:, column], rtol=1e-4, atol=2e-5 * scale)


# --------------------------------------------------------------------------------------------
# Transformations
# --------------------------------------------------------------------------------------------


def test_jit_vmap_grad_compose():
    scenes = [random_scene(10 + i, 80, 2, 3) for i in range(3)]
    names = ("means", "quats", "scales", "opacities", "colors")
    args = [np.stack([s[k] for s in scenes]) for k in names]
    viewmats, Ks = scenes[0]["viewmats"], scenes[0]["Ks"]

    def loss(means, quats, scales, opacities, colors):
        images, _ = rasterize(means, quats, scales, opacities, colors, viewmats, Ks, 40, 32)
        return jnp.sum(images**2), images

    value_and_grads = jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4), has_aux=True)
    (_, batched_images), batched_grads = jax.jit(jax.vmap(value_and_grads))(*args)
    single = jax.jit(value_and_grads)
    for i in range(3):
        (_, images), grads = single(*[a[i] for a in args])
        np.testing.assert_allclose(batched_images[i], images, atol=1e-6)
        ref, _, _ = reference_render(**{**scenes[i], "viewmats": viewmats, "Ks": Ks}, width=40, height=32)
        assert_close_to_reference(images, ref)
        for got, want in zip(batched_grads, grads):
            # Batched and unbatched matmuls sum in different orders: float32 noise only.
            np.testing.assert_allclose(got[i], want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


# --------------------------------------------------------------------------------------------
# Capacity and diagnostics
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tile", [None, 8, 16])  # None: the platform default (8 on CPU)
def test_diagnostics_are_consistent(tile):
    scene = random_scene(11, *STANDARD)
    width, height = 40, 32
    with warnings.catch_warnings():
        warnings.simplefilter("error", TileOverflowWarning)  # no overflow, no warning
        _, _, diag = call(with_diagnostics, scene, backgrounds=standard_backgrounds(), tile_size=tile)
    tile = tile or default_tile_size()
    nx, ny = -(-width // tile), -(-height // tile)
    assert diag.tile_counts.shape == (2, ny, nx)
    assert int(np.sum(diag.overflow)) == 0
    radii, means2d = np.asarray(diag.radii), np.asarray(diag.means2d)
    # Brute-force tile counts from the reported boxes.
    counts = np.zeros((2, ny, nx), int)
    for v in range(2):
        for g in np.nonzero(np.asarray(diag.valid[v]))[0]:
            (mx, my), (rx, ry) = means2d[v, g], radii[v, g]
            x0, x1 = max(int(np.floor((mx - rx) / tile)), 0), min(int(np.ceil((mx + rx) / tile)), nx)
            y0, y1 = max(int(np.floor((my - ry) / tile)), 0), min(int(np.ceil((my + ry) / tile)), ny)
            counts[v, y0:y1, x0:x1] += 1
            assert diag.tiles_per_gaussian[v, g] == max(x1 - x0, 0) * max(y1 - y0, 0)
    np.testing.assert_array_equal(diag.tile_counts, counts)
    np.testing.assert_array_equal(diag.tile_composited, counts)
    # Each tile's run in flatten_ids lists its Gaussians front to back.
    depths, ids, offsets = np.asarray(diag.depths), np.asarray(diag.flatten_ids), np.asarray(diag.tile_offsets)
    for v in range(2):
        for ty in range(ny):
            for tx in range(nx):
                run = ids[offsets[v, ty, tx]: offsets[v, ty, tx] + counts[v, ty, tx]]
                assert np.all(np.diff(depths[v, run]) >= 0)
    # Projection agrees with the reference projection.
    for v in range(2):
        ref_mean2d, ref_depth, ref_conic, _ = reference_project(
            scene["means"], scene["quats"], scene["scales"], scene["viewmats"][v], scene["Ks"][v], width, height
        )
        valid = np.asarray(diag.valid[v])
        np.testing.assert_allclose(means2d[v, valid], ref_mean2d[valid], rtol=1e-5, atol=1e-3)
        np.testing.assert_allclose(depths[v, valid], ref_depth[valid], rtol=1e-5)
        ref_abc = np.stack([ref_conic[:, 0, 0], ref_conic[:, 0, 1], ref_conic[:, 1, 1]], -1)
        np.testing.assert_allclose(np.asarray(diag.conics[v])[valid], ref_abc[valid], rtol=2e-3, atol=1e-6)


def test_tile_capacity_overflow_is_counted_and_warned():
    scene = random_scene(12, 200, 1, 3)
    with pytest.warns(TileOverflowWarning, match="max_gaussians_per_tile"):
        _, _, diag = call(with_diagnostics, scene, max_gaussians_per_tile=5)
    expected = np.sum(np.maximum(np.asarray(diag.tile_counts) - 5, 0))
    assert expected > 0 and int(diag.overflow[0]) == expected
    np.testing.assert_array_equal(diag.tile_composited, np.minimum(diag.tile_counts, 5))
    # Inside jit the warning comes from a debug callback when the computation runs.
    render = jax.jit(lambda m: call(rasterize, {**scene, "means": m}, max_gaussians_per_tile=5)[0])
    with pytest.warns(TileOverflowWarning):
        jax.block_until_ready(render(scene["means"]))
        jax.effects_barrier()


def test_intersection_buffer_overflow_is_counted_and_warned():
    scene = random_scene(12, 200, 1, 3)
    # The buffer keeps the pairs of the nearest Gaussians; everything else is reported.
    with pytest.warns(TileOverflowWarning, match="max_intersections"):
        _, _, diag = call(with_diagnostics, scene, max_intersections=50)
    assert int(diag.overflow[0]) == int(np.sum(diag.tile_counts)) - 50
    assert int(np.sum(diag.tile_composited)) == 50


@pytest.mark.parametrize("compositor", COMPOSITORS)
def test_capacity_keeps_the_nearest_gaussians(compositor):
    """With capacity k, a tile renders exactly like its k nearest Gaussians alone."""
    scene = random_scene(13, 40, 1, 3, width=16, height=16)
    with pytest.warns(TileOverflowWarning):  # one 16² tile: the whole image
        images, _, diag = call(with_diagnostics, scene, width=16, height=16, max_gaussians_per_tile=10,
                               compositor=compositor, tile_size=16)
    assert int(diag.tile_counts[0, 0, 0]) > 10
    kept = np.asarray(diag.flatten_ids[:10])
    subset = {k: (v[kept] if k not in ("viewmats", "Ks") else v) for k, v in scene.items()}
    ref, _, _ = reference_render(**subset, width=16, height=16)
    assert_close_to_reference(images, ref)


# --------------------------------------------------------------------------------------------
# Degenerate input and argument checking
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("compositor", COMPOSITORS)
def test_degenerate_inputs_give_finite_outputs_and_gradients(compositor):
    scene = random_scene(14, 40, 2, 3)
    s = {k: np.array(v) for k, v in scene.items()}
    eye_z = np.linalg.inv(s["viewmats"][0])[:3, 3]
    s["scales"][0] = 0.0  # point splat
    s["scales"][1] = -0.1  # negative scale
    s["means"][2] = np.nan
    s["quats"][3] = 0.0
    s["quats"][4] = np.inf
    s["opacities"][5] = np.nan
    s["colors"][6] = np.nan
    s["scales"][7] = 1e6  # huge splat
    s["scales"][8] = 1e30  # overflowing covariance
    s["means"][9] = eye_z  # at the camera centre
    s["means"][10] = eye_z + 0.005 * (s["means"][10] - eye_z) / np.linalg.norm(s["means"][10] - eye_z)  # straddles near
    s["means"][11] = 2 * eye_z  # behind camera 0
    s["scales"][12] = np.array([5.0, 5.0, 1e-9])  # flat and big
    s["opacities"][13] = 0.0
    s["opacities"][14] = 1.0

    def loss(means, quats, scales, opacities, colors, viewmats, backgrounds):
        images, alphas = rasterize(means, quats, scales, opacities, colors, viewmats, s["Ks"], 40, 32,
                                   backgrounds=backgrounds, render_mode="RGB+D", compositor=compositor)
        return jnp.sum(images) + jnp.sum(alphas), (images, alphas)

    names = ("means", "quats", "scales", "opacities", "colors", "viewmats")
    args = (*(s[k] for k in names), np.ones((2, 3), np.float32))
    grads, (images, alphas) = jax.grad(loss, argnums=tuple(range(7)), has_aux=True)(*args)
    assert np.all(np.isfinite(images)) and np.all(np.isfinite(alphas))
    for g in grads:
        assert np.all(np.isfinite(np.asarray(g)))
    # A broken camera renders only its background and poisons nothing else.
    bad_views = s["viewmats"].copy()
    bad_views[1, 0, 0] = np.nan
    grads, (images, alphas) = jax.grad(loss, argnums=tuple(range(7)), has_aux=True)(*args[:5], bad_views, args[6])
    assert np.all(np.isfinite(images)) and np.all(np.asarray(alphas[1]) == 0)
    for g in grads:
        assert np.all(np.isfinite(np.asarray(g)))


def _bad_calls():
    s = random_scene(15, 10, 2, 3)
    good = dict(means=s["means"], quats=s["quats"], scales=s["scales"], opacities=s["opacities"],
                colors=s["colors"], viewmats=s["viewmats"], Ks=s["Ks"], width=40, height=32)
    return [
        ("means", dict(good, means=s["means"][:, :2])),
        ("quats", dict(good, quats=s["quats"][:, :3])),
        ("scales", dict(good, scales=s["scales"][:5])),
        ("opacities", dict(good, opacities=s["opacities"][:, None])),
        ("colors", dict(good, colors=s["colors"][:9])),
        ("colors", dict(good, colors=s["colors"][:, 0])),
        ("viewmats", dict(good, viewmats=s["viewmats"][:, :3])),
        ("Ks", dict(good, Ks=s["Ks"][:1])),
        ("backgrounds", dict(good, backgrounds=np.zeros((2, 4), np.float32))),
        ("backgrounds", dict(good, backgrounds=np.zeros((1, 3), np.float32))),
        ("width", dict(good, width=0)),
        ("height", dict(good, height=-3)),
        ("height", dict(good, height=2.5)),
        ("render_mode", dict(good, render_mode="RGBD")),
        ("backend", dict(good, backend="metal")),
        ("compositor", dict(good, compositor="parallel")),
        ("means", dict(good, means=s["means"].astype(np.int32))),
        ("near_plane", dict(good, near_plane=2.0, far_plane=1.0)),
        ("max_gaussians_per_tile", dict(good, max_gaussians_per_tile=0)),
    ]


@pytest.mark.parametrize("name,kwargs", _bad_calls(), ids=lambda x: x if isinstance(x, str) else "")
def test_bad_arguments_raise_value_error_naming_the_problem(name, kwargs):
    with pytest.raises(ValueError, match=name):
        rasterize(**kwargs)


def test_unknown_option_raises_type_error_naming_it_and_the_valid_ones():
    s = random_scene(15, 10, 2, 3)
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['tile_szie'\].*'tile_size'.*'max_intersections'"):
        call(rasterize, s, tile_szie=8)
    with pytest.raises(TypeError, match="RasterOptions"):
        call(rasterize, s, options={"tile_size": 8})


def test_options_are_checked_static_and_hashable():
    options = RasterOptions(near_plane=np.float32(0.5), tile_size=np.int64(8))
    assert options == RasterOptions(near_plane=float(np.float32(0.5)), tile_size=8)
    assert hash(options) == hash(RasterOptions(near_plane=float(np.float32(0.5)), tile_size=8))
    assert type(options.near_plane) is float and type(options.tile_size) is int
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.tile_size = 16
    with pytest.raises(ValueError, match="eps2d"):
        RasterOptions(eps2d=float("nan"))
    # A traced near plane cannot be a static option: the error says so instead of "unhashable".
    s = random_scene(15, 10, 2, 3)
    with pytest.raises(ValueError, match="near_plane.*static"):
        jax.jit(lambda near: call(rasterize, s, near_plane=near))(0.1)


def test_return_diagnostics_adds_the_diagnostics_and_nothing_else():
    scene = random_scene(11, *STANDARD)
    bg = standard_backgrounds()
    plain = call(rasterize, scene, backgrounds=bg)
    images, alphas, diag = call(rasterize, scene, backgrounds=bg, return_diagnostics=True)
    assert len(plain) == 2 and isinstance(diag, RasterDiagnostics)
    assert diag.valid.shape == (2, STANDARD[0]) and diag.n_contrib.shape == (2, 32, 40)
    np.testing.assert_array_equal(images, plain[0])
    np.testing.assert_array_equal(alphas, plain[1])
    # Keyword overrides apply over `options`: here they restore the defaults exactly.
    other_tile = 16 if default_tile_size() != 16 else 8
    overridden = call(rasterize, scene, backgrounds=bg, options=RasterOptions(render_mode="D", tile_size=other_tile),
                      render_mode="RGB", tile_size=None)
    np.testing.assert_array_equal(overridden[0], plain[0])


def test_cuda_backend_without_a_gpu_raises_with_the_reason():
    s = random_scene(16, *STANDARD)
    with pytest.raises(NotImplementedError, match="CUDA backend is not available"):
        call(rasterize, s, backend="cuda")
    images, _ = call(rasterize, s, backend="auto", backgrounds=standard_backgrounds())
    np.testing.assert_array_equal(images, call(rasterize, s, backend="jax", backgrounds=standard_backgrounds())[0])


def test_annotations_are_checked_by_jaxtyping():
    jaxtyping = pytest.importorskip("jaxtyping")
    beartype = pytest.importorskip("beartype")
    checked = jaxtyping.jaxtyped(typechecker=beartype.beartype)(rasterize)
    s = {k: jnp.asarray(v) for k, v in random_scene(17, *STANDARD).items()}
    images, alphas = call(checked, s, backgrounds=jnp.asarray(standard_backgrounds()))
    assert images.shape == (2, 32, 40, 3)
    with pytest.raises(Exception):  # jaxtyping rejects N mismatch before our own check runs
        checked(s["means"], s["quats"][:5], s["scales"], s["opacities"], s["colors"], s["viewmats"], s["Ks"], 40, 32)


def test_default_capacity_never_drops_a_dense_head_in_a_small_image():
    # ~12K Gaussians in a small 64² frame put > 4K into one 16×16 tile: the default keeps them all.
    rng = np.random.default_rng(0)
    n = 12_000
    d = rng.standard_normal((n, 3))
    means = (0.05 * d / np.linalg.norm(d, axis=1, keepdims=True)).astype(np.float32)
    quats = np.tile(np.array([[1.0, 0, 0, 0]], np.float32), (n, 1))
    scales = np.full((n, 3), 0.004, np.float32)
    view = np.asarray(camera.look_at(np.array([0.0, 0.0, 0.5]), np.zeros(3)))[None]
    K = np.asarray(camera.intrinsics_from_fov(30.0, 64, 64))[None]
    _, _, diag = rasterize(means, quats, scales, np.full(n, 0.9, np.float32), np.ones((n, 3), np.float32), view, K,
                           64, 64, return_diagnostics=True, tile_size=16)
    assert int(np.max(diag.tile_counts)) > 4096
    assert int(np.sum(diag.overflow)) == 0
