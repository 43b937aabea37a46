"""CUDA backend of `rasterize`: the kernels of `kernels/splat` behind XLA FFI custom calls.

Same semantics as the pure-JAX backend (`projection.py`, `jax_backend.py`: gsplat 1.5.3 classic
mode), same outputs and `RasterDiagnostics`. The two agree up to float32 rounding (images within
1e-4, gradients within 1e-3 relative; the backward recovers T by division where the JAX backend
works in log space), except where rounding flips a discrete decision: α within an ulp of 1/255,
T·(1 − α) within an ulp of 1e-4, or two depths within an ulp (composited in either order); see
tests/gpu/cuda_cases.py. Computation is float32 whatever the input dtype.

Stages and custom VJPs (kernels/splat/ffi.cu):
  `_project`   = FFI `flexavatar_splat_project_fwd` (EWA projection, culling, radii, conics,
                 tiles per Gaussian), VJP = `flexavatar_splat_project_bwd`.
  `_composite` = FFI `flexavatar_splat_rasterize_fwd` (tile intersection + compositing),
                 VJP = `flexavatar_splat_rasterize_bwd`.
JAX's autodiff chains the two (and handles the background blend and expected-depth division,
which stay in JAX), so gradients reach means, quats, scales, opacities, colors, backgrounds,
viewmats and Ks; near/far/eps2d are static `RasterOptions` (constants here).

Intersections under static shapes: the forward sorts (camera, Gaussian) pairs by full-precision
depth on the device, prefix-sums the tiles each touches and writes the (Gaussian, tile) pairs
into a buffer of `max_intersections` slots (same meaning and default as the JAX backend:
V·max(16N, 65536), filled front to back), then radix-sorts it by tile with CUB. Pairs beyond the
buffer or beyond `max_gaussians_per_tile` are counted in `RasterDiagnostics.overflow` (and
warned about by `rasterize`), never silently dropped. Nothing is copied to the host inside a
handler; the price is that the tile sort always covers all `max_intersections` slots, so an
oversized buffer costs sort time (~12 bytes of scratch per slot). The backward takes the
sorted ids, tile runs, final transmittance and per-pixel stop positions as residual outputs of
the forward.

vmap: every FFI call uses `vmap_method="broadcast_all"`, and the handlers fold all leading batch
dimensions into one "scene" axis (each scene: its own Gaussians, cameras, planes and
`max_intersections` buffer). A vmapped render is therefore one batched launch per stage, and
its outputs equal the unbatched ones scene by scene. jit, grad and vmap compose.

Library: `flexavatar_jax/render/_splat_cuda.so` (built by `pip install`, see setup.py) or the
path in $FLEXAVATAR_SPLAT_LIB; loaded with ctypes and registered for platform "CUDA" on first
use. `is_available()` / `unavailable_reason()` never raise. Build or inspect from a checkout:

    python -m flexavatar_jax.render.cuda_backend build [--arch sm_90] [--out PATH] [--jobs N]
    python -m flexavatar_jax.render.cuda_backend status
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import os
import sys
import threading
import warnings
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from flexavatar_jax.render.common import RasterDiagnostics, RasterOptions, finish_images, prepare_inputs

LIBRARY_ENV = "FLEXAVATAR_SPLAT_LIB"
LIBRARY_NAME = "_splat_cuda.so"
# Must equal splat::kAbiVersion (kernels/splat/common.h): a library built from other sources is refused.
ABI_VERSION = 1
SUPPORTED_TILE_SIZES = (8, 16)  # one CUDA thread per pixel: 64 or 256 threads per tile block
# FFI target name -> exported handler symbol (kernels/splat/ffi_common.h).
TARGETS = {
    "flexavatar_splat_project_fwd": "FlexavatarSplatProjectFwd",
    "flexavatar_splat_rasterize_fwd": "FlexavatarSplatRasterizeFwd",
    "flexavatar_splat_rasterize_bwd": "FlexavatarSplatRasterizeBwd",
    "flexavatar_splat_project_bwd": "FlexavatarSplatProjectBwd",
}

_PACKAGE_DIR = Path(__file__).resolve().parent
_KERNELS_DIR = _PACKAGE_DIR.parent.parent / "kernels"  # present in a source checkout only
_lock = threading.Lock()
_registered: dict[str, tuple[Path, ctypes.CDLL]] = {}  # platform -> (library, handle kept alive)


class CudaBackendUnavailableError(NotImplementedError):
    """backend='cuda' was requested but cannot run here; the message says why."""


# --------------------------------------------------------------------------------------------
# Library discovery, loading and registration
# --------------------------------------------------------------------------------------------


def library_path() -> Path:
    """$FLEXAVATAR_SPLAT_LIB if set, else the in-package `_splat_cuda.so`."""
    env = os.environ.get(LIBRARY_ENV)
    return Path(env).expanduser() if env else _PACKAGE_DIR / LIBRARY_NAME


def register_library(path: str | os.PathLike, platform: str = "CUDA") -> None:
    """Load a splat library and register its handlers as XLA FFI targets for `platform`.

    Raises OSError/RuntimeError when the file cannot be loaded or is not a compatible build.
    Registering the same library again is a no-op; another library for the same platform raises
    (XLA keeps the first registration of a target name).
    """
    path = Path(path).resolve()
    with _lock:
        if platform in _registered:
            if _registered[platform][0] != path:
                raise RuntimeError(
                    f"splat handlers for {platform} are already registered from {_registered[platform][0]}; "
                    f"cannot switch to {path} in the same process"
                )
            return
        lib = ctypes.cdll.LoadLibrary(str(path))
        missing = [s for s in (*TARGETS.values(), "flexavatar_splat_abi_version") if not hasattr(lib, s)]
        if missing:
            raise RuntimeError(f"{path} does not export {missing}; rebuild it")
        lib.flexavatar_splat_abi_version.restype = ctypes.c_int
        version = lib.flexavatar_splat_abi_version()
        if version != ABI_VERSION:
            raise RuntimeError(f"{path} has ABI version {version}, this package needs {ABI_VERSION}; rebuild it")
        for target, symbol in TARGETS.items():
            jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)), platform=platform)
        _registered[platform] = (path, lib)
    _warn_if_stale(path)


def _warn_if_stale(path: Path) -> None:
    build_py = _KERNELS_DIR / "build.py"
    if not build_py.exists():
        return
    try:
        newest = _kernel_build_module().sources_mtime()
    except Exception:  # noqa: BLE001 - a staleness hint must never break loading
        return
    if newest > path.stat().st_mtime:
        warnings.warn(
            f"{path} is older than the kernel sources in {_KERNELS_DIR}; rebuild with "
            "`python -m flexavatar_jax.render.cuda_backend build`",
            RuntimeWarning,
            stacklevel=3,
        )


@functools.cache
def _probe() -> tuple[bool, str]:
    path = library_path()
    if not path.is_file():
        how = f"set {LIBRARY_ENV}" if os.environ.get(LIBRARY_ENV) else "run `python -m flexavatar_jax.render.cuda_backend build`"
        return False, f"the CUDA splat library {path} does not exist ({how})"
    try:
        devices = jax.devices("cuda")
    except Exception as err:  # noqa: BLE001 - no CUDA plugin, JAX_PLATFORMS excludes it, driver error
        return False, f"no CUDA device visible to JAX ({type(err).__name__}: {err})"
    if not devices:
        return False, "no CUDA device visible to JAX"
    try:
        register_library(path, "CUDA")
    except Exception as err:  # noqa: BLE001 - OSError from dlopen, RuntimeError from the checks
        return False, f"cannot load {path}: {err}"
    return True, ""


def is_available() -> bool:
    """True when the CUDA library is built, loads, and JAX sees a CUDA device. Never raises."""
    return _probe()[0]


def unavailable_reason() -> str:
    """Why `is_available()` is False ('' when it is True)."""
    return _probe()[1]


def resolve_backend(backend: str, *, tile_size: int, dtypes) -> str:
    """'jax' or 'cuda' for one `rasterize` call (backend is 'auto', 'jax' or 'cuda').

    'auto' picks CUDA when the default JAX device is a GPU, the library is available, the tile
    size is supported and no input is float64 (the CUDA path computes in float32); otherwise JAX.
    'cuda' raises CudaBackendUnavailableError with the reason when the library or device is
    missing, and ValueError for a tile size it does not support.
    """
    if backend == "jax":
        return "jax"
    if backend == "cuda":
        if tile_size not in SUPPORTED_TILE_SIZES:
            raise ValueError(f"rasterize: backend='cuda' supports tile_size in {SUPPORTED_TILE_SIZES}, got {tile_size}")
        if not is_available():
            raise CudaBackendUnavailableError(f"rasterize: the CUDA backend is not available: {unavailable_reason()}")
        return "cuda"
    if jax.default_backend() != "gpu" or tile_size not in SUPPORTED_TILE_SIZES:
        return "jax"
    if any(jax.dtypes.canonicalize_dtype(d) == jnp.float64 for d in dtypes):  # only with jax_enable_x64
        return "jax"
    return "cuda" if is_available() else "jax"


# --------------------------------------------------------------------------------------------
# FFI calls and custom VJPs
# --------------------------------------------------------------------------------------------


class _Setup(NamedTuple):
    """Static attributes of one render (hashable: a nondiff argument of the custom VJPs)."""

    width: int
    height: int
    tile_size: int
    render_colors: bool
    with_depth: bool
    capacity: int
    max_intersections: int

    @property
    def tiles(self) -> tuple[int, int]:
        return -(-self.height // self.tile_size), -(-self.width // self.tile_size)

    def attrs(self, *names: str) -> dict:
        return {name: np.int64(getattr(self, name)) for name in names}


def _call(target: str, results, *args, **attrs):
    return jax.ffi.ffi_call(target, results, vmap_method="broadcast_all")(*args, **attrs)


def _sds(shape, dtype):
    return jax.ShapeDtypeStruct(shape, dtype)


def _project_fwd_call(means, quats, scales, opacities, extra_valid, viewmats, Ks, planes, setup: _Setup):
    v, n = viewmats.shape[0], means.shape[0]
    results = (
        _sds((v, n, 2), jnp.float32),  # means2d
        _sds((v, n), jnp.float32),  # depths
        _sds((v, n, 3), jnp.float32),  # conics
        _sds((v, n, 2), jnp.int32),  # radii
        _sds((v, n), jnp.bool_),  # valid
        _sds((v, n), jnp.int32),  # tiles_per_gaussian
    )
    return _call("flexavatar_splat_project_fwd", results, means, quats, scales, opacities, extra_valid, viewmats, Ks,
                 planes, **setup.attrs("width", "height", "tile_size"))


@functools.partial(jax.custom_vjp, nondiff_argnums=(8,))
def _project(means, quats, scales, opacities, extra_valid, viewmats, Ks, planes, setup: _Setup):
    return _project_fwd_call(means, quats, scales, opacities, extra_valid, viewmats, Ks, planes, setup)


def _project_vjp_fwd(means, quats, scales, opacities, extra_valid, viewmats, Ks, planes, setup):
    out = _project_fwd_call(means, quats, scales, opacities, extra_valid, viewmats, Ks, planes, setup)
    return out, (means, quats, scales, opacities, viewmats, Ks, planes, out[4])


def _project_vjp_bwd(setup, residuals, cotangents):
    means, quats, scales, opacities, viewmats, Ks, planes, valid = residuals
    v_means2d, v_depths, v_conics = cotangents[:3]
    results = tuple(_sds(x.shape, jnp.float32) for x in (means, quats, scales, viewmats, Ks))
    v_means, v_quats, v_scales, v_viewmats, v_Ks = _call(
        "flexavatar_splat_project_bwd", results, means, quats, scales, opacities, viewmats, Ks, planes, valid,
        v_means2d, v_depths, v_conics, **setup.attrs("width", "height", "tile_size"),
    )
    # Opacity only shapes the (non-differentiable) bounding box; near/far/eps2d: see module doc.
    return (v_means, v_quats, v_scales, jnp.zeros_like(opacities), None, v_viewmats, v_Ks, jnp.zeros_like(planes))


_project.defvjp(_project_vjp_fwd, _project_vjp_bwd)


def _rasterize_fwd_call(means2d, depths, conics, radii, valid, tiles_per_gaussian, opacities, colors, setup: _Setup):
    v = means2d.shape[0]
    ty, tx = setup.tiles
    features = colors.shape[1] * setup.render_colors + setup.with_depth
    pixels = (v, setup.height, setup.width)
    results = (
        _sds((*pixels, features), jnp.float32),  # features
        _sds(pixels, jnp.float32),  # trans
        _sds(pixels, jnp.int32),  # n_contrib
        _sds(pixels, jnp.int32),  # stop
        _sds((setup.max_intersections,), jnp.int32),  # flatten_ids
        _sds((v, ty, tx), jnp.int32),  # tile_offsets
        _sds((v, ty, tx), jnp.int32),  # tile_counts
        _sds((v, ty, tx), jnp.int32),  # tile_composited
        _sds((v,), jnp.int32),  # overflow
    )
    return _call(
        "flexavatar_splat_rasterize_fwd", results, means2d, depths, conics, radii, valid, tiles_per_gaussian,
        opacities, colors,
        **setup.attrs("width", "height", "tile_size", "render_colors", "with_depth", "capacity", "max_intersections"),
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(8,))
def _composite(means2d, depths, conics, radii, valid, tiles_per_gaussian, opacities, colors, setup: _Setup):
    """(features [V,H,W,F], trans [V,H,W], n_contrib, flatten_ids, tile_offsets, tile_counts,
    tile_composited, overflow)."""
    out = _rasterize_fwd_call(means2d, depths, conics, radii, valid, tiles_per_gaussian, opacities, colors, setup)
    return out[:3] + out[4:]


def _composite_vjp_fwd(means2d, depths, conics, radii, valid, tiles_per_gaussian, opacities, colors, setup):
    out = _rasterize_fwd_call(means2d, depths, conics, radii, valid, tiles_per_gaussian, opacities, colors, setup)
    features, trans, n_contrib, stop, flatten_ids, tile_offsets, tile_counts, tile_composited, overflow = out
    residuals = (means2d, depths, conics, opacities, colors, flatten_ids, tile_offsets, tile_composited, trans, stop)
    return out[:3] + out[4:], residuals


def _composite_vjp_bwd(setup, residuals, cotangents):
    means2d, depths, conics, opacities, colors = residuals[:5]
    cot_features, cot_trans = cotangents[:2]
    results = tuple(_sds(x.shape, jnp.float32) for x in (means2d, depths, conics, opacities, colors))
    v_means2d, v_depths, v_conics, v_opacities, v_colors = _call(
        "flexavatar_splat_rasterize_bwd", results, *residuals, cot_features, cot_trans,
        **setup.attrs("width", "height", "tile_size", "render_colors", "with_depth", "max_intersections"),
    )
    return (v_means2d, v_depths, v_conics, None, None, None, v_opacities, v_colors)


_composite.defvjp(_composite_vjp_fwd, _composite_vjp_bwd)


@functools.partial(jax.jit, static_argnames=("width", "height", "options"))
def rasterize_cuda(means, quats, scales, opacities, colors, viewmats, Ks, backgrounds, *, width: int, height: int,
                   options: RasterOptions):
    """The CUDA-backend twin of `jax_backend.rasterize_jax`: (images, alphas, RasterDiagnostics).

    Arguments are validated by `rasterize`; `options` has both capacities resolved to ints. The
    FFI targets must be registered for the platform this runs on.
    """
    f32 = jnp.float32
    requested_gaussians = means.shape[0]
    means, quats, scales, opacities, colors, viewmats, Ks = prepare_inputs(
        means, quats, scales, opacities, colors, viewmats, Ks, f32)
    colors_finite = jnp.all(jnp.isfinite(colors), axis=-1)
    extra_valid = colors_finite if options.render_colors else jnp.ones(colors_finite.shape, bool)
    planes = jnp.stack([jnp.asarray(x, f32) for x in (options.near_plane, options.far_plane, options.eps2d)])
    setup = _Setup(int(width), int(height), options.tile_size, options.render_colors, options.render_depth,
                   options.max_gaussians_per_tile, options.max_intersections)

    means2d, depths, conics, radii, valid, tiles_per_gaussian = _project(
        means, quats, scales, opacities, extra_valid, viewmats, Ks, planes, setup
    )
    colors = jnp.where(colors_finite[:, None], colors, 0.0)
    features, trans, n_contrib, flatten_ids, tile_offsets, tile_counts, tile_composited, overflow = _composite(
        means2d, depths, conics, radii, valid, tiles_per_gaussian, opacities, colors, setup
    )

    images, alphas = finish_images(features, trans[..., None], colors.shape[1], options.render_mode, backgrounds)

    keep = slice(0, requested_gaussians)
    diagnostics = RasterDiagnostics(
        means2d=means2d[:, keep],
        depths=depths[:, keep],
        conics=conics[:, keep],
        radii=radii[:, keep],
        valid=valid[:, keep],
        tiles_per_gaussian=tiles_per_gaussian[:, keep],
        tile_counts=tile_counts,
        tile_offsets=tile_offsets,
        tile_composited=tile_composited,
        flatten_ids=flatten_ids,
        overflow=overflow,
        n_contrib=n_contrib,
    )
    return images, alphas, diagnostics


# --------------------------------------------------------------------------------------------
# Command line: build / status
# --------------------------------------------------------------------------------------------


def _kernel_build_module():
    """kernels/build.py of this checkout (or $FLEXAVATAR_KERNELS_DIR), loaded by path."""
    kernels = Path(os.environ.get("FLEXAVATAR_KERNELS_DIR", _KERNELS_DIR))
    build_py = kernels / "build.py"
    if not build_py.is_file():
        raise FileNotFoundError(
            f"{build_py} not found: building needs a source checkout (set FLEXAVATAR_KERNELS_DIR to its kernels/)"
        )
    spec = importlib.util.spec_from_file_location("flexavatar_kernels_build", build_py)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_PROG = "python -m flexavatar_jax.render.cuda_backend"
_COMMANDS = {
    "build": "compile kernels/splat with nvcc",
    "status": "say whether the CUDA backend can run here, and why not",
}
_BUILD_FLAGS = ("arch", "out", "jobs")


def _command_flags() -> flags.FlagValues:
    """This command's flags, in a FlagValues of their own: the package CLI owns absl's global
    FLAGS, and `--help` should list these flags only."""
    fv = flags.FlagValues()
    flags.DEFINE_string("arch", None, "build: e.g. sm_90 or sm_80,sm_90 (default $FLEXAVATAR_CUDA_ARCH or sm_90)",
                        flag_values=fv)
    flags.DEFINE_string("out", None, f"build: output library (default {_PACKAGE_DIR / LIBRARY_NAME})", flag_values=fv)
    flags.DEFINE_integer("jobs", None, "build: parallel nvcc processes", flag_values=fv)
    flags.DEFINE_bool("help", False, "show this help and exit", short_name="h", flag_values=fv)
    return fv


def _usage(fv: flags.FlagValues) -> str:
    commands = "\n".join(f"  {name:<8}{what}" for name, what in _COMMANDS.items())
    # absl heads the flag list with the defining module's name (a file path under `python -m`).
    flag_lines = fv.get_help(include_special_flags=False).strip("\n").split("\n")[1:]
    return (f"usage: {_PROG} {{build,status}} [--arch ARCH] [--out PATH] [--jobs N]\n\n"
            f"Build or inspect the CUDA splatting library.\n\ncommands:\n{commands}\n\nflags:\n"
            + "\n".join(flag_lines))


def main(argv: list[str] | None = None) -> int:
    """`build` or `status` (see the module docstring); argv excludes the program name. Returns the
    exit status: 0 on success, 1 when the build fails or the backend is unavailable, 2 for bad usage."""
    fv = _command_flags()
    try:
        commands = fv([_PROG, *(sys.argv[1:] if argv is None else argv)])[1:]
    except flags.Error as err:
        print(f"{_PROG}: {err}\n\n{_usage(fv)}", file=sys.stderr)
        return 2
    if fv.help:
        print(_usage(fv))
        return 0
    if len(commands) != 1 or commands[0] not in _COMMANDS:
        print(f"{_PROG}: expected one command, build or status; got {commands}\n\n{_usage(fv)}", file=sys.stderr)
        return 2
    if commands[0] == "status":
        stray = [f"--{name}" for name in _BUILD_FLAGS if fv[name].present]
        if stray:
            print(f"{_PROG}: {', '.join(stray)}: flags of build, not status", file=sys.stderr)
            return 2
        ok, reason = _probe()
        print(f"library: {library_path()}")
        print("CUDA backend: available" if ok else f"CUDA backend: unavailable: {reason}")
        return 0 if ok else 1
    kernel_build = _kernel_build_module()
    out = Path(fv.out) if fv.out else _PACKAGE_DIR / LIBRARY_NAME
    try:
        kernel_build.build_cuda(out, arch=fv.arch, jobs=fv.jobs, verbose=True)
    except kernel_build.BuildError as err:
        print(f"build failed: {err}", file=sys.stderr)
        return 1
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
