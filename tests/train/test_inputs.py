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
