"""Test setup: 8 fake CPU devices (set before JAX initialises), absl flags parsed, slow marker."""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Several tests build the same model programs (train + resume, sharded + single): a persistent
# compilation cache lets the second compile of an identical program be a lookup.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(os.environ.get("FLEXAVATAR_CACHE", os.path.expanduser("~/.cache/flexavatar_jax")),
                                   "xla_test_cache"))

import pytest  # noqa: E402
from absl import flags  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long-running test, run with --runslow")
    # absl flags are parsed once so library code that reads FLAGS works under pytest.
    if not flags.FLAGS.is_parsed():
        flags.FLAGS(["pytest"], known_only=True)


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run slow tests")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip_slow = pytest.mark.skip(reason="slow: run with --runslow (make test-all)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)


@pytest.fixture(scope="session")
def procedural_head():
    from flexavatar_jax.head.procedural import load_procedural_head

    return load_procedural_head()


@pytest.fixture(scope="session")
def procedural_arrays():
    from flexavatar_jax.head.procedural import load_procedural_arrays

    return load_procedural_arrays()
