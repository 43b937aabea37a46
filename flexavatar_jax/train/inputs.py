"""From a config to data: the head model, the synthetic world (or VHAP folders), example sources
and checkpointable loaders."""

from __future__ import annotations

import threading

import numpy as np

from flexavatar_jax.config import Config
from flexavatar_jax.data import eval_sets, pipeline
from flexavatar_jax.data.synthetic import SyntheticWorld, heldout_ids
from flexavatar_jax.head import HeadModel


def make_world(config: Config, head: HeadModel | None = None) -> SyntheticWorld:
    """The synthetic world of the config (it renders at `model.image_size`)."""
    return SyntheticWorld(config.data.synthetic, head)


def frame_source(config: Config, world: SyntheticWorld | None):
    d = config.data
    if d.source == "synthetic":
        return pipeline.SyntheticFrames(world, num_identities=d.num_identities)
    if d.source == "vhap":
        folders = [f for f in d.vhap_folders.split(",") if f]
        if not folders:
            raise ValueError("data.source=vhap needs data.vhap_folders (comma-separated VHAP export folders)")
        return pipeline.VHAPFrames(folders, config.model.image_size)
    raise ValueError(f"data.source must be synthetic or vhap, got {d.source!r}")


class MemoizedSource:
    """Random-access source that keeps every example it has produced (examples are deterministic
    in the index, so this changes speed, never content). For CPU runs whose dataset fits in memory:
    after the first epoch no frame is rendered again."""

    def __init__(self, source, max_items: int):
        if len(source) > max_items:
            raise ValueError(f"data.memoize_examples={max_items} cannot hold the {len(source)} examples of the source; "
                             "raise it or set it to 0")
        self.source = source
        self._cache: dict[int, dict[str, np.ndarray]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        with self._lock:
            hit = self._cache.get(index)
        if hit is None:
            hit = self.source[index]
            with self._lock:
                self._cache[index] = hit
        return hit


def renders_on_device(source) -> bool:
    """Whether the examples of a (possibly wrapped) source are view specs for `ground_truth`."""
    while hasattr(source, "source"):
        source = source.source
    return bool(getattr(getattr(source, "frames", None), "renders_on_device", False))


def train_source(config: Config, world: SyntheticWorld | None, needs_cameras: bool):
    """The training examples of the config. Synthetic examples are view specs, rendered on the
    device inside each step (`data.ground_truth`); `data.cache_dir` keeps the held-out eval sets."""
    if config.data.cache_dir and config.data.source != "synthetic":
        raise ValueError(f"data.cache_dir keeps rendered synthetic eval sets; data.source={config.data.source!r} "
                         "is read from disk already (leave data.cache_dir empty)")
    source = pipeline.ExampleSource(frame_source(config, world), config.data.example_config(needs_cameras),
                                    seed=config.seed)
    if config.data.memoize_examples > 0:
        source = MemoizedSource(source, config.data.memoize_examples)
    return source


def train_loader(config: Config, source, process_count: int, process_index: int):
    global_batch = config.train.batch_size
    if global_batch % process_count:
        raise ValueError(f"train.batch_size={global_batch} is not divisible by the {process_count} processes")
    return pipeline.make_loader(source, global_batch // process_count, seed=config.seed,
                                worker_count=config.data.worker_count, process_index=process_index,
                                process_count=process_count)


def heldout(config: Config) -> np.ndarray:
    return heldout_ids(config.data.num_heldout)


def heldout_for_eval(config: Config) -> np.ndarray:
    """The first `eval.num_identities` held-out ids (there must be that many)."""
    n, have = config.eval.num_identities, config.data.num_heldout
    if not 1 <= n <= have:
        raise ValueError(f"eval.num_identities={n} must be in [1, data.num_heldout={have}]")
    return heldout(config)[:n]


def heldout_eval_set(config: Config, world: SyntheticWorld, mode: str = "self",
                     num_views: int | None = None) -> dict[str, np.ndarray]:
    """The held-out eval set a run of `config` is scored on in `mode`: its `eval.num_identities`
    held-out ids, `eval.num_targets` targets, `eval.seed`, `num_views` inputs (default
    `max(eval.views)`), kept in `data.cache_dir` when set (`eval_sets.cached_eval_set`)."""
    e = config.eval
    return eval_sets.cached_eval_set(world, heldout_for_eval(config), num_views or max(e.views), e.num_targets, mode,
                                     e.seed, config.data.cache_dir or None)
