"""From a config to data: the held-out ids evaluation uses."""

import pytest

from flexavatar_jax.config import Config
from flexavatar_jax.data.synthetic import heldout_ids
from flexavatar_jax.train import inputs
from tests.train.test_loop import micro_dict


def test_evaluation_uses_the_first_heldout_ids_and_refuses_more_than_exist():
    c = micro_dict()
    c.data.num_heldout, c.eval.num_identities = 5, 3
    assert inputs.heldout_for_eval(Config.from_dict(c)).tolist() == heldout_ids(3).tolist()
    c.eval.num_identities = 6
    with pytest.raises(ValueError, match=r"eval.num_identities=6 must be in \[1, data.num_heldout=5\]"):
        inputs.heldout_for_eval(Config.from_dict(c))


def test_heldout_eval_set_is_the_eval_sections_set_and_is_cached(tmp_path, procedural_head):
    import numpy as np

    from flexavatar_jax.data import eval_sets

    c = micro_dict()
    c.data.num_heldout, c.eval.num_identities, c.eval.num_targets, c.eval.seed = 4, 2, 3, 5
    c.eval.views = (1, 2)
    c.data.cache_dir = str(tmp_path)
    config = Config.from_dict(c)
    world = inputs.make_world(config, procedural_head)
    got = inputs.heldout_eval_set(config, world, "cross")
    want = eval_sets.build_eval_set(world, heldout_ids(2), 2, 3, "cross", 5)
    assert set(got) == set(want)
    for key, value in want.items():
        np.testing.assert_array_equal(got[key], value, err_msg=key)
    assert len(list((tmp_path / "eval_sets").iterdir())) == 1
    four = inputs.heldout_eval_set(config, world, num_views=4)
    assert four["input_mask"].shape == (2, 4) and four["input_mask"].all()
