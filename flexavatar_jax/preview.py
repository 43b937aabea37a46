"""Shaded previews of a head model (contact sheets) for people to look at.

Renders with the exact mesh z-buffer (`render/mesh.py`), Lambert + a little specular, colours per
named region. This is an application-level module (it combines `head` and `render`), used by the
CLI's `preview-head`.
"""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageDraw

from flexavatar_jax.files import write_atomic
from flexavatar_jax.head import HeadModel, HeadParams, lbs
from flexavatar_jax.head.mesh_ops import vertex_normals
from flexavatar_jax.render import camera
from flexavatar_jax.render.mesh import rasterize_mesh

REGION_COLORS = {  # later entries win where regions overlap
    "face_skin": (0.86, 0.68, 0.58),
    "neck": (0.82, 0.64, 0.55),
    "scalp": (0.42, 0.30, 0.22),
    "ears": (0.84, 0.62, 0.54),
    "nose": (0.88, 0.66, 0.57),
    "eyebrows": (0.30, 0.20, 0.14),
    "lips": (0.74, 0.38, 0.38),
    "mouth_interior": (0.45, 0.12, 0.14),
    "tongue": (0.80, 0.36, 0.40),
    "teeth": (0.95, 0.94, 0.88),
    "left_eye": (0.96, 0.96, 0.96),
    "right_eye": (0.96, 0.96, 0.96),
}


def _save_png(image, path) -> None:
    """A PIL image as a PNG, atomically."""
    write_atomic(path, lambda f: image.save(f, "PNG"))


def vertex_colors(model: HeadModel) -> np.ndarray:
    """Per-vertex preview albedo from the named regions; irises painted on the eyeballs."""
    col = np.full((model.num_vertices, 3), 0.7)
    for name, c in REGION_COLORS.items():
        col[model.vertex_mask(name)] = c
    v = np.asarray(model.v_template)
    j = np.asarray(model.J_regressor) @ v
    for region, joint in (("left_eye", 3), ("right_eye", 4)):
        m = model.vertex_mask(region)
        rel = v[m] - j[joint]
        front = rel[:, 2] / np.linalg.norm(rel, axis=1)
        col[m] = np.where(front[:, None] > 0.93, (0.05, 0.04, 0.04),
                          np.where(front[:, None] > 0.80, (0.25, 0.42, 0.55), col[m]))
    return col


def shade(model: HeadModel, vertices: np.ndarray, colors: np.ndarray, viewmat, K, width, height,
          background=(1.0, 1.0, 1.0)) -> np.ndarray:
    """Float image [H,W,3] in [0,1]."""
    faces = np.asarray(model.faces)
    r = rasterize_mesh(vertices, faces, np.asarray(viewmat), np.asarray(K), width, height)
    n = vertex_normals(vertices, faces)
    fid = np.where(r.mask, r.face_id, 0)
    corner = faces[fid]  # [H,W,3]
    bary = r.barycentrics[..., None]
    nrm = (n[corner] * bary).sum(-2)
    nrm /= np.maximum(np.linalg.norm(nrm, axis=-1, keepdims=True), 1e-9)
    alb = (colors[corner] * bary).sum(-2)
    rot = np.asarray(viewmat)[:3, :3]
    n_cam = nrm @ rot.T
    # Double-sided lighting (cavities are seen from inside): flip normals facing away.
    K = np.asarray(K)
    rx, ry = np.meshgrid((np.arange(width) + 0.5 - K[0, 2]) / K[0, 0],
                         (np.arange(height) + 0.5 - K[1, 2]) / K[1, 1], indexing="xy")
    ray = np.stack([rx, ry, np.ones_like(rx)], -1)
    ray /= np.linalg.norm(ray, axis=-1, keepdims=True)
    n_cam = np.where((n_cam * ray).sum(-1, keepdims=True) > 0, -n_cam, n_cam)
    light = np.array([-0.4, -0.6, -0.7])
    light /= np.linalg.norm(light)
    diff = np.clip((n_cam * light).sum(-1, keepdims=True), 0.0, 1.0)
    half = light - ray
    half /= np.linalg.norm(half, axis=-1, keepdims=True)
    spec = np.clip((n_cam * half).sum(-1, keepdims=True), 0, 1) ** 40
    img = alb * (0.30 + 0.75 * diff) + 0.12 * spec
    return np.where(r.mask[..., None], np.clip(img, 0, 1), np.asarray(background))


def _posed(model: HeadModel, params: HeadParams) -> np.ndarray:
    return np.asarray(jax.jit(lbs)(model, params).vertices, np.float64)


def head_views(num_views: int = 8, distance: float = 0.62, fov: float = 30.0, size: int = 256):
    target = np.array([0.0, -0.01, 0.0], np.float32)
    views = np.asarray(camera.orbit(num_views, distance, target=target, elevation_deg=8.0))
    K = np.asarray(camera.intrinsics_from_fov(fov, size, size))
    return views, K


def contact_sheet(images: list[np.ndarray], cols: int, labels: list[str] | None = None) -> Image.Image:
    h, w = images[0].shape[:2]
    rows = (len(images) + cols - 1) // cols
    sheet = Image.new("RGB", (cols * w, rows * h), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, im in enumerate(images):
        x, y = (i % cols) * w, (i // cols) * h
        sheet.paste(Image.fromarray((np.clip(im, 0, 1) * 255).astype(np.uint8)), (x, y))
        if labels:
            draw.text((x + 4, y + 4), labels[i], fill=(0, 0, 0))
    return sheet


def named_expression(model_names: list[str], name: str, value: float, num_expression: int) -> jnp.ndarray:
    e = np.zeros(num_expression, np.float32)
    if name in model_names:
        e[model_names.index(name)] = value
    return jnp.asarray(e)


def preview_head(model: HeadModel, out_dir: str | pathlib.Path, seed: int = 0, size: int = 256,
                 expression_names: list[str] | None = None) -> list[pathlib.Path]:
    """Writes contact sheets: 8 views around the neutral head; random identities; expressions incl.
    an open jaw with visible teeth and an eye roll. Returns the written paths."""
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    colors = vertex_colors(model)
    views, K = head_views(size=size)
    zero = model.zero_params()
    paths = []

    neutral = _posed(model, zero)
    imgs = [shade(model, neutral, colors, vm, K, size, size) for vm in views]
    _save_png(contact_sheet(imgs, 4, [f"az {int(a)}" for a in np.arange(8) * 45]), out / "views_neutral.png")
    paths.append(out / "views_neutral.png")

    rng = np.random.default_rng(seed)
    front, three_q = views[0], views[1]
    imgs, labels = [], []
    for i in range(8):
        p = zero.replace(shape=jnp.asarray(rng.standard_normal(model.num_shape), jnp.float32))
        v = _posed(model, p)
        imgs += [shade(model, v, colors, front, K, size, size), shade(model, v, colors, three_q, K, size, size)]
        labels += [f"id {i} front", f"id {i} 3/4"]
    _save_png(contact_sheet(imgs, 4, labels), out / "random_shapes.png")
    paths.append(out / "random_shapes.png")

    names = list(expression_names or [])
    E = model.num_expression
    s3 = lambda *kv: zero.replace(expression=sum(named_expression(names, k, v, E) for k, v in kv))  # noqa: E731
    cases = [
        ("neutral", zero),
        ("jaw open", zero.replace(jaw_pose=jnp.array([0.35, 0.0, 0.0]))),
        ("bared teeth + jaw", s3(("bared_teeth", 1.6)).replace(jaw_pose=jnp.array([0.18, 0.0, 0.0]))),
        ("smile", s3(("smile_left", 1.5), ("smile_right", 1.5), ("cheek_raise_left", 1.0), ("cheek_raise_right", 1.0))),
        ("blink", s3(("eye_blink_left", 1.0), ("eye_blink_right", 1.0))),
        ("brow raise", s3(("brow_raise_inner", 1.5), ("brow_raise_outer_left", 1.5), ("brow_raise_outer_right", 1.5))),
        ("frown + furrow", s3(("frown_left", 1.5), ("frown_right", 1.5), ("brow_furrow", 1.5))),
        ("pucker", s3(("lip_pucker", 1.5))),
        ("cheek puff", s3(("cheek_puff", 1.5))),
        ("eye roll (up)", zero.replace(eyes_pose=jnp.array([-0.45, 0.0, 0.0, -0.45, 0.0, 0.0]))),
        ("look left", zero.replace(eyes_pose=jnp.array([0.0, 0.5, 0.0, 0.0, 0.5, 0.0]))),
        ("tongue out + jaw", s3(("tongue_out", 1.5)).replace(jaw_pose=jnp.array([0.3, 0.0, 0.0]))),
        ("random expr", zero.replace(expression=jnp.asarray(rng.standard_normal(E) * 0.8, jnp.float32))),
        ("neck turn", zero.replace(neck_pose=jnp.array([0.0, 0.6, 0.0]))),
        ("mouth left + wink", s3(("mouth_left", 1.5), ("eye_blink_right", 1.0))),
        ("squint + nose wrinkle", s3(("eye_squint_left", 1.0), ("eye_squint_right", 1.0), ("nose_wrinkle", 1.5))),
    ]
    closeup = np.asarray(camera.look_at(np.array([0.0, 0.0, 0.42], np.float32), np.array([0.0, -0.01, 0.03], np.float32)))
    imgs = [shade(model, _posed(model, p), colors, closeup, K, size, size) for _, p in cases]
    _save_png(contact_sheet(imgs, 4, [c for c, _ in cases]), out / "expressions.png")
    paths.append(out / "expressions.png")
    return paths


def preview_data(world, out_dir: str | pathlib.Path, num_identities: int = 16) -> pathlib.Path:
    """Contact sheet: identities (rows) × (neutral front, extreme expression, side view, back view),
    rendered at the world's image size."""
    from flexavatar_jax.data import motion

    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    size = world.config.image_size
    target = motion.HEAD_CENTER
    eyes = np.array([[0.0, 0.0, 0.62], [0.0, 0.0, 0.62], [0.62, 0.0, 0.0], [0.0, 0.0, -0.62]], np.float32) + target
    views = np.asarray(camera.look_at(eyes, np.broadcast_to(target, eyes.shape)))
    K = np.broadcast_to(np.asarray(camera.intrinsics_from_fov(30.0, size, size)), (4, 3, 3))
    e, jaw, eyes_pose = motion.anchor_vector("wide_open_bared_teeth", world.expression_names)
    images, labels = [], []
    for i in range(num_identities):
        ident = world.identity(i)
        neutral = world.model.zero_params().replace(shape=jnp.asarray(ident.shape))
        extreme = neutral.replace(expression=jnp.asarray(e), jaw_pose=jnp.asarray(jaw))
        rgb_n = np.asarray(world.render(ident, neutral, views, K)[0])
        rgb_x = np.asarray(world.render(ident, extreme, views[:1], K[:1])[0])
        images += [rgb_n[0], rgb_x[0], rgb_n[2], rgb_n[3]]
        labels += [f"id {i} {ident.hair_style}", "extreme", "side", "back"]
    path = out / "identities.png"
    _save_png(contact_sheet(images, 4, labels), path)
    return path
