"""The on-disk example cache: same content as the source, shared across identity counts, atomic
entries, unreadable entries rebuilt."""

import os

import numpy as np
import pytest

from flexavatar_jax.config import Config
from flexavatar_jax.data import cache
from flexavatar_jax.train import inputs
from tests.train.test_loop import micro_dict


class CountingSource:
    def __init__(self, n):
        self.n, self.calls = n, 0

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        self.calls += 1
        rng = np.random.default_rng(i)
        return {"x": rng.normal(size=(3, 2)).astype(np.float32), "i": np.int64(i), "flag": np.bool_(i % 2)}


def test_disk_cache_returns_the_source_items_and_renders_each_once(tmp_path):
    source = CountingSource(5)
    cached = cache.DiskCachedSource(source, str(tmp_path / "c"))
    first = [cached[i] for i in range(5)]
    again = cache.DiskCachedSource(CountingSource(5), str(tmp_path / "c"))
    second = [again[i] for i in range(5)]
    assert source.calls == 5 and again.source.calls == 0 and (cached.misses, again.hits) == (5, 5)
    for i in range(5):
        want = CountingSource(5)[i]
        for k in want:
            np.testing.assert_array_equal(first[i][k], want[k])
            np.testing.assert_array_equal(second[i][k], want[k])
            assert second[i][k].dtype == np.asarray(want[k]).dtype
    assert not [f for f in os.listdir(tmp_path / "c") if ".tmp-" in f]  # no temporary files left
    with pytest.raises(IndexError, match="out of range"):
        cached[5]


def test_unreadable_entry_is_rebuilt(tmp_path):
    cached = cache.DiskCachedSource(CountingSource(2), str(tmp_path))
    cached[1]
    (tmp_path / "00000001.npz").write_bytes(b"truncated")
    np.testing.assert_array_equal(cached[1]["x"], CountingSource(2)[1]["x"])
    assert cached.source.calls == 2
    assert cache.load_arrays(str(tmp_path / "00000001.npz")) is not None  # rewritten whole


def test_example_directory_is_shared_across_identity_counts_not_seeds(tmp_path):
    def directory(num_identities=4, seed=0, num_targets=1):
        c = micro_dict()
        c.data.update(cache_dir=str(tmp_path), num_identities=num_identities, num_targets=num_targets)
        c.seed = seed
        return inputs.example_cache_directory(Config.from_dict(c), needs_cameras=False)

    assert directory(num_identities=2) == directory(num_identities=64)
    assert directory(seed=1) != directory()
    assert directory(num_targets=2) != directory()


def test_cached_training_examples_equal_fresh_ones_for_any_identity_count(tmp_path):
    c = micro_dict()
    c.data.memoize_examples = 0
    fresh = inputs.train_source(Config.from_dict(c), inputs.make_world(Config.from_dict(c)), False)
    c.data.cache_dir = str(tmp_path)
    small = Config.from_dict(c)
    c.data.num_identities = 8
    large = Config.from_dict(c)
    cached_small = inputs.train_source(small, inputs.make_world(small), False)
    cached_large = inputs.train_source(large, inputs.make_world(large), False)
    for i in (0, 5):
        a, b, f = cached_small[i], cached_large[i], fresh[i]
        for k in f:
            np.testing.assert_array_equal(a[k], f[k], err_msg=k)
            np.testing.assert_array_equal(b[k], f[k], err_msg=k)
    assert cached_large.hits == 2  # the second run read what the first rendered
    c.data.source = "vhap"
    with pytest.raises(ValueError, match="cache_dir"):
        inputs.train_source(Config.from_dict(c), None, False)
