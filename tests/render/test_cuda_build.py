"""The CUDA backend without a GPU: it compiles, exports its handlers, degrades gracefully, and its
handler interface and math (run by the serial C++ reference, kernels/splat/reference_cpu.cc,
registered as the CPU implementation of the same FFI targets) match the pure-JAX backend.

What needs a GPU (the kernels themselves) is in tests/gpu/test_cuda_vs_jax.py.
"""

from __future__ import annotations

import ctypes
import importlib.util
import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from flexavatar_jax.render import cuda_backend
from flexavatar_jax.render import rasterize
from tests.gpu import cuda_cases as cases

REPO = Path(__file__).resolve().parents[2]


def _kernel_build():
    spec = importlib.util.spec_from_file_location("flexavatar_kernels_build_test", REPO / "kernels" / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


kernel_build = _kernel_build()
SCENE_ARGS = ("means", "quats", "scales", "opacities", "colors", "viewmats", "Ks")


def _args(scene):
    return tuple(scene[k] for k in SCENE_ARGS)


def _exported_symbols(path: Path) -> set[str] | None:
    nm = shutil.which("nm")
    if nm is None:
        return None
    out = subprocess.run([nm, "-D", "--defined-only", str(path)], capture_output=True, text=True, check=True).stdout
    return {line.split()[-1] for line in out.splitlines() if line.strip()}


# --------------------------------------------------------------------------------------------
# Compilation
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cuda_library(tmp_path_factory):
    if kernel_build.find_nvcc() is None:
        pytest.skip("nvcc not found")
    out = tmp_path_factory.mktemp("splat_cuda") / "_splat_cuda.so"
    start = time.perf_counter()
    kernel_build.build_cuda(out, arch="sm_90")
    return out, time.perf_counter() - start


def test_cuda_library_compiles_and_exports_every_handler(cuda_library, record_property):
    path, seconds = cuda_library
    record_property("nvcc_build_seconds", round(seconds, 1))
    print(f"nvcc build of {path.name} (sm_90): {seconds:.1f} s")
    symbols = _exported_symbols(path)
    if symbols is not None:
        wanted = set(kernel_build.HANDLER_SYMBOLS) | set(kernel_build.INFO_SYMBOLS)
        assert wanted <= symbols, f"missing exports: {wanted - symbols}"
        assert not any(s.startswith("cuda") for s in symbols), "the static CUDA runtime must stay hidden"
    lib = ctypes.CDLL(str(path))  # loads without a GPU: nothing touches the device until a handler runs
    for symbol in (*kernel_build.HANDLER_SYMBOLS, *kernel_build.INFO_SYMBOLS):
        assert hasattr(lib, symbol), symbol
    lib.flexavatar_splat_abi_version.restype = ctypes.c_int
    lib.flexavatar_splat_platform.restype = ctypes.c_char_p
    assert lib.flexavatar_splat_abi_version() == cuda_backend.ABI_VERSION
    assert lib.flexavatar_splat_platform() == b"CUDA"
    assert set(cuda_backend.TARGETS.values()) == set(kernel_build.HANDLER_SYMBOLS)


def test_abi_version_matches_the_kernel_sources():
    text = (REPO / "kernels" / "splat" / "common.h").read_text()
    assert int(re.search(r"kAbiVersion = (\d+);", text).group(1)) == cuda_backend.ABI_VERSION


def test_build_rejects_bad_architecture():
    with pytest.raises(kernel_build.BuildError, match="architecture"):
        kernel_build.parse_arch("compute_bogus")
    assert kernel_build.parse_arch("80, sm_90") == ["sm_80", "sm_90"]
    assert cuda_backend.main(["build", "--arch", "bogus!", "--out", "/nonexistent/x.so"]) == 1


def test_command_line_has_its_own_flags(capsys):
    from absl import flags

    import flexavatar_jax.cli  # noqa: F401 - defines the package CLI's flags on the global FLAGS

    assert "arch" not in flags.FLAGS  # nothing defined on the shared namespace
    assert cuda_backend.main(["--help"]) == 0
    shown = capsys.readouterr().out
    assert all(f"--{name}" in shown for name in ("arch", "out", "jobs")) and "--workdir" not in shown
    assert cuda_backend.main([]) == 2  # no command
    assert cuda_backend.main(["install"]) == 2
    assert cuda_backend.main(["build", "--jobs", "many"]) == 2
    assert cuda_backend.main(["status", "--arch", "sm_90"]) == 2  # build-only flag
    assert "expected one command" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# Graceful degradation
# --------------------------------------------------------------------------------------------


@pytest.fixture
def fresh_probe(monkeypatch):
    cuda_backend._probe.cache_clear()
    yield monkeypatch
    cuda_backend._probe.cache_clear()


def test_missing_library_is_reported(fresh_probe, tmp_path):
    missing = tmp_path / "nope" / "_splat_cuda.so"
    fresh_probe.setenv(cuda_backend.LIBRARY_ENV, str(missing))
    assert not cuda_backend.is_available()
    assert str(missing) in cuda_backend.unavailable_reason()
    scene = cases.random_scene(0, 50, 2, 3)
    with pytest.raises(cuda_backend.CudaBackendUnavailableError, match="CUDA backend is not available.*does not exist"):
        rasterize(*_args(scene), 48, 40, backend="cuda")
    auto = rasterize(*_args(scene), 48, 40, backend="auto")
    jax_images = rasterize(*_args(scene), 48, 40, backend="jax")
    np.testing.assert_array_equal(auto[0], jax_images[0])
    np.testing.assert_array_equal(auto[1], jax_images[1])


def test_no_cuda_device_is_reported(fresh_probe, tmp_path):
    present = tmp_path / "_splat_cuda.so"
    present.write_bytes(b"")  # exists; the device check comes before any loading
    fresh_probe.setenv(cuda_backend.LIBRARY_ENV, str(present))
    assert not cuda_backend.is_available()
    assert "no CUDA device" in cuda_backend.unavailable_reason()
    assert cuda_backend.main(["status"]) == 1


def test_cuda_backend_rejects_unsupported_tile_size():
    scene = cases.random_scene(0, 10, 1, 3)
    with pytest.raises(ValueError, match="tile_size"):
        rasterize(*_args(scene), 48, 40, tile_size=12, backend="cuda")


# --------------------------------------------------------------------------------------------
# The handler interface and math, through the serial C++ reference on the CPU
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference_library(tmp_path_factory):
    out = tmp_path_factory.mktemp("splat_reference") / "_splat_reference.so"
    try:
        kernel_build.build_reference(out)
    except kernel_build.BuildError as err:
        pytest.skip(f"cannot build the CPU reference: {err}")
    cuda_backend.register_library(out, platform="cpu")
    return out


@pytest.fixture
def reference_backend(reference_library, monkeypatch):
    """backend="cuda" runs the reference handlers on the CPU for the duration of one test."""
    monkeypatch.setattr(cuda_backend, "_probe", lambda: (True, ""))


@pytest.mark.parametrize("render_mode", ["RGB", "D", "RGB+D"])
def test_reference_forward_matches_jax(reference_backend, render_mode):
    cases.check_forward(cases.random_scene(1, 300, 2, 3), 48, 40, render_mode=render_mode)


def test_reference_gradients_match_jax(reference_backend):
    scene = cases.random_scene(2, 300, 2, 4)
    cases.check_gradients(scene, 48, 40, render_mode="RGB+D")


def test_reference_degenerate_inputs(reference_backend):
    scene = cases.degenerate_scene()
    cases.check_forward(scene, 48, 40)
    cases.check_gradients(scene, 48, 40)


def test_reference_vmap_jit_grad(reference_backend):
    cases.check_vmap_jit_grad()


def test_reference_overflow(reference_backend):
    cases.check_overflow()
