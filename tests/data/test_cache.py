"""The on-disk cache of rendered eval sets: same content as the build, built once, atomic entries,
unreadable entries rebuilt, keyed directories."""

import os

import numpy as np
import pytest

from flexavatar_jax.config import Config
from flexavatar_jax.data import cache
from flexavatar_jax.train import inputs
from tests.train.test_loop import micro_dict


def _arrays(seed):
    rng = np.random.default_rng(seed)
    return {"x": rng.normal(size=(3, 2)).astype(np.float32), "i": np.int64(seed), "flag": np.bool_(seed % 2)}


def test_cached_arrays_builds_once_and_returns_the_build(tmp_path):
    calls = []

    def build():
        calls.append(1)
        return _arrays(3)

    first = cache.cached_arrays(str(tmp_path), "entry", build)
    second = cache.cached_arrays(str(tmp_path), "entry", build)
    assert len(calls) == 1
    for k, want in _arrays(3).items():
        np.testing.assert_array_equal(first[k], want)
        np.testing.assert_array_equal(second[k], want)
        assert second[k].dtype == np.asarray(want).dtype
    assert not [f for f in os.listdir(tmp_path) if ".tmp-" in f]  # no temporary files left


def test_unreadable_entry_is_rebuilt(tmp_path):
    cache.cached_arrays(str(tmp_path), "entry", lambda: _arrays(1))
    (tmp_path / "entry.npz").write_bytes(b"truncated")
    assert cache.load_arrays(str(tmp_path / "entry.npz")) is None
    again = cache.cached_arrays(str(tmp_path), "entry", lambda: _arrays(1))
    np.testing.assert_array_equal(again["x"], _arrays(1)["x"])
    assert cache.load_arrays(str(tmp_path / "entry.npz")) is not None  # rewritten whole


def test_keyed_directories_differ_by_key_and_record_it(tmp_path):
    a = cache.keyed_directory(tmp_path, "eval_sets", {"seed": 0, "ids": [1, 2]})
    b = cache.keyed_directory(tmp_path, "eval_sets", {"ids": [1, 2], "seed": 0})  # key order is irrelevant
    c = cache.keyed_directory(tmp_path, "eval_sets", {"seed": 1, "ids": [1, 2]})
    assert a == b != c
    assert os.path.exists(os.path.join(a, "key.json"))


def test_cache_dir_is_refused_for_data_read_from_disk(tmp_path):
    c = micro_dict()
    c.data.update(cache_dir=str(tmp_path), source="vhap")
    with pytest.raises(ValueError, match="cache_dir"):
        inputs.train_source(Config.from_dict(c), None, False)
