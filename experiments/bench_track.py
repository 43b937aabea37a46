"""Face tracker (`data/tracking.py`): speed and known-truth errors, in one run.

    python experiments/bench_track.py --out experiments/results/bench_track/cpu.json

* `fit` — the jitted per-frame fit (Levenberg-Marquardt, warm-started from the previous frame,
  `WARM_ITERATIONS` steps, the host reading each frame's result as the tracker does) at
  `--image_size`², after compilation: ms per frame and frames/s over a clip; `track_s_per_frame`
  is a whole `fit_landmark_track` call (identity fit once, every frame, smoothing) per frame;
  `compile_s` the first call's extra time. The fit's cost does not depend on the image size.
* `detector` — `portrait.detect_faces` (dlib HOG, no CNN fallback, as the tracker calls it) on the
  rendered frames: ms per frame, the fraction of frames with a face.
* `fitter_alone` — the tracker on landmarks *projected* from the ground truth through the
  landmark embedding (what the fit alone can recover: no detector), clean and with Gaussian
  pixel noise (`--noise_px`), without and with the one-euro smoothing: jaw opening error (degrees,
  mean |·| and bias), expression-code cosine, head rotation error (degrees), reprojection RMS (px).
* `end_to_end` — the same clips rendered by the synthetic engine (`SyntheticWorld.render`, the
  tracker's camera = the engine's front camera), landmarks from the detector, tracked: the same
  errors, plus `detector_vs_embedding_px`, the mean distance between the detected landmarks and
  the ground truth's embedded landmarks (per group): the detector's bias on our synthetic faces.
* `astronaut` — `skimage.data.astronaut()`: one frame, the fit's reprojection error (px) against
  the detector's landmarks.

Clips: `--identities` held-out synthetic identities, the first `--frames` frames of their first
clip (talking, blinks, small head motion; `--event_rate` adds expressive events).
"""

from __future__ import annotations

import json
import os
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_integer("image_size", 256, "Rendered frame size.")
flags.DEFINE_integer("identities", 3, "Held-out synthetic identities (ids 1000000 + k).")
flags.DEFINE_integer("frames", 48, "Frames per clip.")
flags.DEFINE_float("event_rate", 0.03, "Expressive events per frame in the synthetic clips.")
flags.DEFINE_float("noise_px", 1.0, "Landmark noise (pixels, std) of the noisy fitter-alone run.")
flags.DEFINE_integer("uv_resolution", 128, "Gaussians per UV side of the rendered identities.")
flags.DEFINE_bool("end_to_end", True, "Render, detect and track (needs the faces extra).")
flags.DEFINE_string("out", "out/bench_track.json", "JSON output.")


def _mean_dicts(rows: list[dict]) -> dict:
    return {k: float(np.nanmean([r[k] for r in rows])) for k in rows[0]}


def _errors(tracking, result, truth) -> dict:
    out = tracking.motion_errors(result.motion, truth)
    out["reprojection_px"] = float(np.nanmean(result.reprojection_px))
    return out


def fit_speed(tracking, head, shape, landmarks, size: int) -> dict:
    """Per-frame fit time over one clip, after compilation."""
    vm, K = map(jnp.asarray, tracking.tracking_camera(size, size))
    obs = [tracking.observation(lm) for lm in landmarks]
    priors = tracking.Priors()
    x0 = tracking.initial_unknowns(head, shape, obs[0], vm, K)
    x0, _ = tracking.fit_frame(head, shape, obs[0], vm, K, x0, x0, jnp.float32(0.0), priors,
                               iterations=tracking.COLD_ITERATIONS)

    def run():
        x = x0
        for o in obs:
            x, e = tracking.fit_frame(head, shape, o, vm, K, x, x, jnp.float32(1.0), priors)
            float(e)  # the tracker reads every frame's error on the host

    t0 = time.perf_counter()
    run()
    first = time.perf_counter() - t0
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        run()
        times.append((time.perf_counter() - t0) / len(obs))
    ms = 1e3 * float(np.median(times))
    return {"ms_per_frame": ms, "frames_per_s": 1e3 / ms, "iterations": tracking.WARM_ITERATIONS,
            "compile_s": max(first - ms * len(obs) / 1e3, 0.0), "landmark_vertices": len(head.vertex_ids)}


def main(argv):
    del argv
    from flexavatar_jax.data import landmarks as lmk
    from flexavatar_jax.data import tracking
    from flexavatar_jax.data.synthetic import SyntheticConfig, SyntheticWorld

    size = FLAGS.image_size
    world = SyntheticWorld(SyntheticConfig(uv_resolution=FLAGS.uv_resolution, image_size=size,
                                           frames_per_clip=FLAGS.frames, event_rate=FLAGS.event_rate))
    model = world.model
    embedding = lmk.procedural_embedding(model)
    head = tracking.landmark_head(model, embedding)
    vm, K = map(jnp.asarray, tracking.tracking_camera(size, size))
    project = jax.jit(jax.vmap(lambda p: tracking.project_landmarks(head, p, vm, K)))
    ids = [1_000_000 + k for k in range(FLAGS.identities)]
    rng = np.random.default_rng(0)

    report = {"backend": jax.default_backend(), "image_size": size, "frames": FLAGS.frames,
              "identities": ids, "event_rate": FLAGS.event_rate, "noise_px": FLAGS.noise_px,
              "load_avg_1min": os.getloadavg()[0], "embedding": embedding.method}
    alone = {f"{name}{'_smoothed' if smooth else ''}": [] for name in ("clean", "noisy") for smooth in (False, True)}
    e2e = {"raw": [], "smoothed": []}
    detector_rows, det_ms, found, clips = [], [], [], []
    for identity in ids:
        frames, truth, _, _ = tracking.synthetic_clip(world, identity, FLAGS.frames, size, render=FLAGS.end_to_end)
        truth_j = jax.tree.map(jnp.asarray, truth)
        projected = np.asarray(project(truth_j))
        clips.append((identity, truth, projected))
        for name, lm in (("clean", projected), ("noisy", projected + FLAGS.noise_px * rng.normal(size=projected.shape))):
            for smooth in (False, True):
                result = tracking.fit_landmark_track(lm.astype(np.float32), size, size, model=model,
                                                     embedding=embedding, smooth=smooth)
                alone[f"{name}{'_smoothed' if smooth else ''}"].append(_errors(tracking, result, truth))
        if not FLAGS.end_to_end:
            continue
        from flexavatar_jax.data import portrait

        detected = []
        for frame in frames:
            t0 = time.perf_counter()
            faces = portrait.detect_faces(frame, cnn_fallback=False)
            det_ms.append(1e3 * (time.perf_counter() - t0))
            detected.append(faces[0].landmarks if faces else np.full((68, 2), np.nan, np.float32))
        detected = np.stack(detected)
        ok = np.isfinite(detected).all(axis=(1, 2))
        found.append(float(ok.mean()))
        if ok.any():
            d = np.linalg.norm(detected[ok] - projected[ok], axis=-1)
            detector_rows.append({g: float(d[:, idx].mean()) for g, idx in lmk.IBUG68_GROUPS.items()} |
                                 {"all": float(d.mean())})
            for smooth, key in ((False, "raw"), (True, "smoothed")):
                result = tracking.fit_landmark_track(detected, size, size, model=model, embedding=embedding,
                                                     smooth=smooth)
                e2e[key].append(_errors(tracking, result, truth) | {"frames_with_face": float(ok.mean())})

    report["fitter_alone"] = {k: _mean_dicts(v) for k, v in alone.items()}
    if FLAGS.end_to_end:
        report["detector"] = {"ms_per_frame": float(np.median(det_ms)), "frames_with_face": float(np.mean(found)),
                              "per_identity_frames_with_face": found}
        report["end_to_end"] = {k: _mean_dicts(v) for k, v in e2e.items() if v}
        if detector_rows:
            report["end_to_end"]["detector_vs_embedding_px"] = _mean_dicts(detector_rows)

    # Speed: the first identity's clip, clean projected landmarks, its true shape.
    identity, truth, projected = clips[0]
    report["fit"] = fit_speed(tracking, head, jnp.asarray(truth.shape[0]), projected, size)
    tracking.fit_landmark_track(projected, size, size, model=model, embedding=embedding)
    t0 = time.perf_counter()
    tracking.fit_landmark_track(projected, size, size, model=model, embedding=embedding)
    report["fit"]["track_s_per_frame"] = (time.perf_counter() - t0) / len(projected)

    try:
        from skimage import data as skdata

        from flexavatar_jax.data import portrait

        image = skdata.astronaut()
        faces = portrait.detect_faces(image)
        result = tracking.fit_landmark_track(faces[0].landmarks[None], image.shape[1], image.shape[0], model=model,
                                             embedding=embedding, identity_frames=1)
        box = faces[0].box
        report["astronaut"] = {"reprojection_rms_px": float(result.reprojection_px[0]),
                               "face_box_px": [float(box[2] - box[0]), float(box[3] - box[1])],
                               "image": list(image.shape[:2])}
    except ImportError as e:
        report["astronaut"] = {"skipped": str(e)}

    text = json.dumps(report, indent=2)
    print(text)
    out = pathlib.Path(FLAGS.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")


if __name__ == "__main__":
    app.run(main)
