"""grain pipelines: random-access frame sources, training examples, sharded checkpointable loaders.

Two layers:

* a **frame source** gives random access to (identity, frame, camera): the per-identity table of
  expression codes / marginal labels, and `view(identity, frame, camera)` → image, alpha, camera,
  head parameters. `SyntheticFrames` renders on the fly (camera k of a frame is a deterministic draw
  from the world seed, so cameras are unlimited); `VHAPFrames` reads on-disk VHAP sequences.
* `ExampleSource` (a grain random-access source) turns a frame source into training examples:
  1–4 **input** views of one identity (count drawn per example; no camera or expression label
  unless `input_annotations=True`, only `input_view_directions`, the training label of the
  `view_pose` lifter, `motion.view_directions`) and T **target** views with driving parameters, camera, image
  and mask. With probability `reconstruction_prob` an example is in *3D reconstruction mode*: the
  targets show the inputs' own frames from other cameras; otherwise (*animation mode*) target frames
  are drawn from the identity's frames with the expression-balanced distribution (`balance.py`).

`make_loader` shuffles globally with a seed, shards by JAX process (disjoint slices of one global
permutation), batches to fixed shapes (inputs padded to 4 with `input_mask`), optionally runs
worker processes, and returns a grain iterator whose `get_state()/set_state()` resume exactly.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

import grain
import numpy as np

from flexavatar_jax.data import balance, motion
from flexavatar_jax.data.synthetic import SyntheticWorld, train_ids
from flexavatar_jax.head import HeadParams
from flexavatar_jax.render.camera import camera_center

MAX_INPUTS = 4
PARAM_FIELDS = ("shape", "expression", "global_pose", "neck_pose", "jaw_pose", "eyes_pose", "translation")
SPEC_PARAM_FIELDS = PARAM_FIELDS[1:]  # what the host sends per view: the identity supplies the shape


@dataclasses.dataclass(frozen=True)
class View:
    """One rendered or loaded view: `image [H,W,3]`, `alpha [H,W,1]` in [0,1], OpenCV `viewmat`,
    `K`, the head parameters (numpy, unbatched) and the camera azimuth (degrees, 0 = frontal;
    NaN when unknown)."""

    image: np.ndarray
    alpha: np.ndarray
    viewmat: np.ndarray
    K: np.ndarray
    params: dict[str, np.ndarray]
    azimuth_deg: float


class FrameSource(Protocol):
    image_size: int

    def num_identities(self) -> int: ...
    def num_frames(self, identity: int) -> int: ...
    def num_cameras(self, identity: int, frame: int) -> int | None: ...  # None = unlimited
    def expression_codes(self, identity: int) -> np.ndarray: ...
    def marginal(self, identity: int) -> np.ndarray: ...
    def view(self, identity: int, frame: int, camera: int) -> View: ...


def _params_dict(p: HeadParams) -> dict[str, np.ndarray]:
    return {f: np.asarray(getattr(p, f), np.float32) for f in PARAM_FIELDS}


@dataclasses.dataclass(frozen=True)
class ViewSpec:
    """What the device needs to render one synthetic view (`SyntheticWorld.render_views`): the
    frame's head parameters without the shape (the identity supplies it), the OpenCV `viewmat`,
    `K`, the `background` colour and the camera azimuth (degrees, 0 = frontal)."""

    params: dict[str, np.ndarray]
    viewmat: np.ndarray
    K: np.ndarray
    background: np.ndarray
    azimuth_deg: float


class SyntheticFrames:
    """Synthetic frames of identities `ids` (default: the first N training ids), rendered on the
    device: `view_spec` is all the host computes per view (a few dozen numbers); `view` renders
    one view through the engine (for inspection and tests; the training pipeline renders whole
    batches, `ground_truth.py`)."""

    renders_on_device = True

    def __init__(self, world: SyntheticWorld, num_identities: int | None = None, ids: np.ndarray | None = None):
        if (num_identities is None) == (ids is None):
            raise ValueError("give exactly one of num_identities or ids")
        self.world = world
        self.ids = train_ids(num_identities) if ids is None else np.asarray(ids)
        self.image_size = world.config.image_size

    def num_identities(self) -> int:
        return len(self.ids)

    def world_id(self, identity: int) -> int:
        return int(self.ids[identity])

    def num_frames(self, identity: int) -> int:
        return self.world.config.frames_per_identity

    def num_cameras(self, identity: int, frame: int) -> None:
        return None

    def expression_codes(self, identity: int) -> np.ndarray:
        m = self.world.identity_motion(self.world_id(identity))
        return balance.expression_codes(m.concatenated("expression"), m.concatenated("jaw_pose"),
                                        m.concatenated("eyes_pose"))

    def marginal(self, identity: int) -> np.ndarray:
        return self.world.identity_motion(self.world_id(identity)).marginal

    def camera(self, identity: int, frame: int, camera: int) -> motion.CameraSet:
        rng = np.random.default_rng([self.world.config.seed, self.world_id(identity), 7, frame, camera])
        size = self.image_size
        return motion.sample_cameras(rng, 1, size, size)

    def view_spec(self, identity: int, frame: int, camera: int) -> ViewSpec:
        m = self.world.identity_motion(self.world_id(identity))
        params = _params_dict(m.flat_frame_params(frame, np.zeros(self.world.model.num_shape, np.float32)))
        del params["shape"]
        cams = self.camera(identity, frame, camera)
        rng = np.random.default_rng([self.world.config.seed, self.world_id(identity), 8, frame, camera])
        return ViewSpec(params=params, viewmat=cams.viewmats[0], K=cams.Ks[0], background=self.world.backgrounds(rng, 1)[0],
                        azimuth_deg=float(cams.azimuth_deg[0]))

    def view(self, identity: int, frame: int, camera: int) -> View:
        spec = self.view_spec(identity, frame, camera)
        lead = lambda x: np.asarray(x)[None, None]  # noqa: E731
        params = HeadParams(shape=None, **{f: lead(v) for f, v in spec.params.items()})
        out = self.world.render_views([self.world_id(identity)], params, lead(spec.viewmat), lead(spec.K),
                                      lead(spec.background))
        shape = np.asarray(out["shape"][0], np.float32)
        return View(image=np.asarray(out["rgb"][0, 0]), alpha=np.asarray(out["alpha"][0, 0]), viewmat=spec.viewmat,
                    K=spec.K, params={"shape": shape, **spec.params}, azimuth_deg=spec.azimuth_deg)


class VHAPFrames:
    """Frames of on-disk VHAP sequences, one folder per identity; every image must be
    `image_size`² (real data is resized offline: nothing is silently resampled here)."""

    def __init__(self, folders: list[str], image_size: int, skip_bad: bool = False, head_model=None):
        from flexavatar_jax.data import vhap

        if not folders:
            raise ValueError("VHAPFrames: no sequence folders given")
        self.sequences = [vhap.read_sequence(f, skip_bad=skip_bad, head_model=head_model) for f in folders]
        self.image_size = image_size
        self._by_timestep = []
        for seq in self.sequences:
            table: dict[int, list[int]] = {}
            for i, fr in enumerate(seq.frames):
                if (fr.width, fr.height) != (image_size, image_size):
                    raise ValueError(f"{fr.image_path}: image is {fr.width}x{fr.height}, the pipeline expects "
                                     f"{image_size}x{image_size}")
                table.setdefault(fr.timestep_index, []).append(i)
            self._by_timestep.append([table[t] for t in sorted(table)])

    @property
    def num_skipped(self) -> int:
        return sum(s.num_skipped for s in self.sequences)

    def num_identities(self) -> int:
        return len(self.sequences)

    def num_frames(self, identity: int) -> int:
        return len(self._by_timestep[identity])

    def num_cameras(self, identity: int, frame: int) -> int:
        return len(self._by_timestep[identity][frame])

    def _timestep(self, identity: int, frame: int) -> int:
        seq = self.sequences[identity]
        return seq.frames[self._by_timestep[identity][frame][0]].timestep_index

    def expression_codes(self, identity: int) -> np.ndarray:
        rows = []
        for f in range(self.num_frames(identity)):
            p = self.sequences[identity].head_params(self._timestep(identity, f))
            rows.append(balance.expression_codes(np.asarray(p.expression)[None], np.asarray(p.jaw_pose)[None],
                                                 np.asarray(p.eyes_pose)[None])[0])
        return np.stack(rows)

    def marginal(self, identity: int) -> np.ndarray:
        # Real data carries no label: call the top decile of expression-code norms marginal.
        norms = np.linalg.norm(self.expression_codes(identity), axis=1)
        return norms >= np.quantile(norms, 0.9)

    def view(self, identity: int, frame: int, camera: int) -> View:
        seq = self.sequences[identity]
        fr = seq.frames[self._by_timestep[identity][frame][camera]]
        rgb = seq.load_image(fr)
        alpha = seq.load_mask(fr)[..., None] if fr.mask_path is not None else np.ones((*rgb.shape[:2], 1), np.float32)
        params = seq.head_params(fr.timestep_index)
        c = np.asarray(camera_center(fr.viewmat))
        return View(image=rgb, alpha=alpha.astype(np.float32), viewmat=fr.viewmat.astype(np.float32),
                    K=fr.K.astype(np.float32), params=_params_dict(params),
                    azimuth_deg=float(np.rad2deg(np.arctan2(c[0], c[2]))))


@dataclasses.dataclass(frozen=True)
class ExampleConfig:
    min_inputs: int = 1
    max_inputs: int = 4
    # Relative weights of min_inputs..max_inputs input views per example (empty: all equally likely).
    input_count_weights: tuple[float, ...] = ()
    num_targets: int = 4
    reconstruction_prob: float = 0.3
    examples_per_identity: int = 64
    input_annotations: bool = False
    balance: balance.BalanceConfig = balance.BalanceConfig()

    def __post_init__(self):
        if not 1 <= self.min_inputs <= self.max_inputs <= MAX_INPUTS:
            raise ValueError(f"need 1 <= min_inputs <= max_inputs <= {MAX_INPUTS}, got {self.min_inputs}, {self.max_inputs}")
        if self.num_targets < 1 or self.examples_per_identity < 1:
            raise ValueError("num_targets and examples_per_identity must be >= 1")
        if not 0.0 <= self.reconstruction_prob <= 1.0:
            raise ValueError(f"reconstruction_prob must be in [0,1], got {self.reconstruction_prob}")
        w = np.asarray(self.input_count_weights, np.float64)
        if w.size and (w.shape != (self.max_inputs - self.min_inputs + 1,) or not np.all(np.isfinite(w))
                       or w.min() < 0 or w.sum() <= 0):
            raise ValueError(f"input_count_weights must be {self.max_inputs - self.min_inputs + 1} finite weights >= 0 "
                             f"(for {self.min_inputs}..{self.max_inputs} inputs) with a positive sum, or empty; "
                             f"got {self.input_count_weights!r}")

    def draw_num_inputs(self, rng: np.random.Generator) -> int:
        """The number of input views of one example."""
        if not self.input_count_weights:
            return int(rng.integers(self.min_inputs, self.max_inputs + 1))
        w = np.asarray(self.input_count_weights, np.float64)
        return self.min_inputs + int(rng.choice(w.size, p=w / w.sum()))


class ExampleSource:
    """grain random-access source: index -> one training example (a dict of numpy arrays with
    fixed shapes). Deterministic in (seed, index)."""

    def __init__(self, frames: FrameSource, config: ExampleConfig, seed: int = 0, anchors: np.ndarray | None = None):
        self.frames = frames
        self.config = config
        self.seed = seed
        self.anchors = anchors
        self._probs: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return self.frames.num_identities() * self.config.examples_per_identity

    def _frame_probabilities(self, identity: int) -> np.ndarray:
        if identity not in self._probs:
            codes = self.frames.expression_codes(identity)
            anchors = self.anchors if self.anchors is not None else balance.anchors_from_data(codes)
            self._probs[identity] = balance.sampling_probabilities(codes, anchors, self.config.balance)
        return self._probs[identity]

    def _camera(self, rng, identity: int, frame: int, avoid: int | None = None) -> int:
        n = self.frames.num_cameras(identity, frame)
        if n is None:
            return int(rng.integers(0, 2**31 - 1))
        if avoid is not None and n > 1:
            c = int(rng.integers(0, n - 1))
            return c + (c >= avoid)
        return int(rng.integers(0, n))

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        if not 0 <= index < len(self):
            raise IndexError(f"example index {index} out of range [0, {len(self)})")
        cfg = self.config
        rng = np.random.default_rng([self.seed, int(index)])
        identity = int(index // cfg.examples_per_identity)
        n_frames = self.frames.num_frames(identity)
        n_in = cfg.draw_num_inputs(rng)
        in_frames = rng.choice(n_frames, size=n_in, replace=n_in > n_frames)
        in_cams = [self._camera(rng, identity, int(f)) for f in in_frames]
        recon = bool(rng.uniform() < cfg.reconstruction_prob)
        if recon:
            pick = rng.integers(0, n_in, size=cfg.num_targets)
            tgt_frames = in_frames[pick]
            tgt_cams = [self._camera(rng, identity, int(in_frames[k]), avoid=in_cams[k]) for k in pick]
        else:
            tgt_frames = rng.choice(n_frames, size=cfg.num_targets, p=self._frame_probabilities(identity))
            tgt_cams = [self._camera(rng, identity, int(f)) for f in tgt_frames]
        if getattr(self.frames, "renders_on_device", False):
            return self._spec_example(identity, n_in, recon, in_frames, in_cams, tgt_frames, tgt_cams)
        inputs = [self.frames.view(identity, int(f), c) for f, c in zip(in_frames, in_cams)]
        targets = [self.frames.view(identity, int(f), c) for f, c in zip(tgt_frames, tgt_cams)]
        marginal = self.frames.marginal(identity)

        size = self.frames.image_size
        ex = {
            "identity": np.int64(identity),
            "reconstruction_mode": np.bool_(recon),
            "num_inputs": np.int32(n_in),
            "input_mask": np.arange(MAX_INPUTS) < n_in,
            "input_images": np.zeros((MAX_INPUTS, size, size, 3), np.float32),
            "target_images": np.stack([v.image for v in targets]).astype(np.float32),
            "target_alphas": np.stack([v.alpha for v in targets]).astype(np.float32),
            "target_viewmats": np.stack([v.viewmat for v in targets]),
            "target_Ks": np.stack([v.K for v in targets]),
            "target_marginal": marginal[tgt_frames],
            "target_azimuth_deg": np.array([v.azimuth_deg for v in targets], np.float32),
        }
        for f in PARAM_FIELDS:
            ex[f"target_{f}"] = np.stack([v.params[f] for v in targets])
        ex["input_images"][:n_in] = np.stack([v.image for v in inputs])
        directions = motion.view_directions(*(np.stack(x) for x in zip(*[
            (v.viewmat, v.params["global_pose"], v.params["neck_pose"], v.params["translation"]) for v in inputs])))
        ex["input_view_directions"] = _padded(list(np.asarray(directions)), 0.0)
        if cfg.input_annotations:
            ex["input_viewmats"] = _padded([v.viewmat for v in inputs], np.eye(4, dtype=np.float32))
            ex["input_Ks"] = _padded([v.K for v in inputs], np.eye(3, dtype=np.float32))
            ex["input_alphas"] = _padded([v.alpha for v in inputs], 0.0)
            for f in PARAM_FIELDS:
                ex[f"input_{f}"] = _padded([v.params[f] for v in inputs], 0.0)
        return ex

    def _spec_example(self, identity, n_in, recon, in_frames, in_cams, tgt_frames, tgt_cams) -> dict[str, np.ndarray]:
        """An example of a device-rendered source: the specs of its views, no images (module
        docstring; `ground_truth.render_example_batch` turns a batch of them into images)."""
        inputs = [self.frames.view_spec(identity, int(f), c) for f, c in zip(in_frames, in_cams)]
        targets = [self.frames.view_spec(identity, int(f), c) for f, c in zip(tgt_frames, tgt_cams)]
        ex = {
            "identity": np.int64(identity),
            "world_id": np.int32(self.frames.world_id(identity)),
            "reconstruction_mode": np.bool_(recon),
            "num_inputs": np.int32(n_in),
            "input_mask": np.arange(MAX_INPUTS) < n_in,
            "input_viewmats": _padded([v.viewmat for v in inputs], np.eye(4, dtype=np.float32)),
            "input_Ks": _padded([v.K for v in inputs], np.eye(3, dtype=np.float32)),
            "input_backgrounds": _padded([v.background for v in inputs], 0.0),
            "target_viewmats": np.stack([v.viewmat for v in targets]).astype(np.float32),
            "target_Ks": np.stack([v.K for v in targets]).astype(np.float32),
            "target_backgrounds": np.stack([v.background for v in targets]).astype(np.float32),
            "target_marginal": self.frames.marginal(identity)[tgt_frames],
            "target_azimuth_deg": np.array([v.azimuth_deg for v in targets], np.float32),
        }
        for f in SPEC_PARAM_FIELDS:
            ex[f"input_{f}"] = _padded([v.params[f] for v in inputs], 0.0)
            ex[f"target_{f}"] = np.stack([v.params[f] for v in targets]).astype(np.float32)
        return ex


def _padded(rows: list[np.ndarray], pad) -> np.ndarray:
    """[MAX_INPUTS, ...] float32: the rows, then `pad` (a scalar or an array of a row's shape)."""
    rows = [np.asarray(r, np.float32) for r in rows]
    fill = np.broadcast_to(np.asarray(pad, np.float32), rows[0].shape)
    return np.stack(rows + [fill] * (MAX_INPUTS - len(rows)))


def make_loader(source: ExampleSource, batch_size: int, seed: int, *, num_epochs: int | None = None,
                shuffle: bool = True, worker_count: int = 0, read_threads: int = 1,
                process_index: int | None = None, process_count: int | None = None) -> grain.DatasetIterator:
    """A checkpointable iterator of fixed-shape batches (see the module docstring).

    Each process gets `batch_size` examples per step (its share of the global batch); shards are
    disjoint slices of one global permutation, reshuffled every epoch. On-the-fly rendering already
    uses every core inside XLA, so `read_threads` defaults to 1; `worker_count` adds processes."""
    import jax

    pi = jax.process_index() if process_index is None else process_index
    pc = jax.process_count() if process_count is None else process_count
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if len(source) < pc * batch_size:
        raise ValueError(f"{len(source)} examples cannot fill one batch of {batch_size} on each of {pc} processes")
    ds = grain.MapDataset.source(source)
    if shuffle:
        ds = ds.shuffle(seed=seed)
    ds = ds.repeat(num_epochs, reseed_each_epoch=True)
    ds = ds.slice(slice(pi, None, pc))
    ds = ds.batch(batch_size, drop_remainder=True)
    it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=2 * batch_size))
    if worker_count > 0:
        it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
    return iter(it_ds)
