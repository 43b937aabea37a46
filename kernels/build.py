"""Build the Gaussian-splatting kernels (kernels/splat) into shared libraries.

The one place that knows how to compile them; used by `setup.py` (at install time), by
`python -m flexavatar_jax.render.cuda_backend build` (for an existing checkout) and by the tests.
Standard library only: `setup.py` loads this file by path, before the package or jax may be
importable.

Two libraries, exporting the same XLA FFI handler symbols:

* the CUDA library (`build_cuda`, nvcc): `projection.cu`, `intersect.cu`, `rasterize_fwd.cu`,
  `rasterize_bwd.cu` and `ffi.cu`, one translation unit per stage compiled in parallel, `-O3`,
  SASS for the requested architectures only (default sm_90), the CUDA runtime linked statically
  with its symbols hidden (so it never interposes on the runtime JAX itself loads);
* the serial CPU reference (`build_reference`, the host C++ compiler): `reference_cpu.cc`, used by
  the tests to check the binding and the kernels' math on machines without a GPU.

Environment: `NVCC` (compiler path), `CUDA_HOME`/`CUDA_PATH`, `CXX` (host compiler for the
reference), `FLEXAVATAR_JAX_INCLUDE` (XLA FFI headers, default `jax.ffi.include_dir()`),
`FLEXAVATAR_CUDA_ARCH` (e.g. `sm_90` or `sm_80,sm_90`).

    python kernels/build.py --arch sm_90 --out flexavatar_jax/render/_splat_cuda.so
    python kernels/build.py --reference --out /tmp/_splat_reference.so
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

SPLAT_DIR = Path(__file__).resolve().parent / "splat"
CUDA_SOURCES = ("projection.cu", "intersect.cu", "rasterize_fwd.cu", "rasterize_bwd.cu", "ffi.cu")
REFERENCE_SOURCES = ("reference_cpu.cc",)
HEADERS = ("common.h", "stages.h", "launch.h", "ffi_common.h", "raster_common.cuh")
DEFAULT_ARCH = "sm_90"
# Every library exports these (cuda_backend.py registers them as XLA FFI targets).
HANDLER_SYMBOLS = (
    "FlexavatarSplatProjectFwd",
    "FlexavatarSplatRasterizeFwd",
    "FlexavatarSplatRasterizeBwd",
    "FlexavatarSplatProjectBwd",
)
INFO_SYMBOLS = ("flexavatar_splat_abi_version", "flexavatar_splat_platform")


class BuildError(RuntimeError):
    """The kernels could not be built; the message says why (missing tool, compiler output)."""


def find_nvcc() -> str | None:
    """nvcc from $NVCC, $CUDA_HOME/bin, $CUDA_PATH/bin, PATH or /usr/local/cuda/bin, else None."""
    candidates = [os.environ.get("NVCC")]
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            candidates.append(os.path.join(os.environ[var], "bin", "nvcc"))
    candidates += [shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"]
    for candidate in candidates:
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def find_ffi_include() -> str:
    """Directory holding `xla/ffi/api/ffi.h` (the XLA FFI headers shipped with jaxlib).

    Tries $FLEXAVATAR_JAX_INCLUDE, then `jax.ffi.include_dir()`, then `jaxlib/include` in this
    interpreter's site-packages (a pip build runs in an isolated environment without jax, but with
    the target environment's paths in `sysconfig`).
    """
    candidates = [os.environ.get("FLEXAVATAR_JAX_INCLUDE")]
    try:
        import jax.ffi  # noqa: PLC0415

        candidates.append(jax.ffi.include_dir())
    except Exception:  # noqa: BLE001 - any failure just means "look elsewhere"
        pass
    roots = {sysconfig.get_paths().get(k) for k in ("purelib", "platlib")} | set(sys.path)
    candidates += [os.path.join(root, "jaxlib", "include") for root in sorted(r for r in roots if r)]
    for candidate in candidates:
        if candidate and os.path.isfile(os.path.join(candidate, "xla", "ffi", "api", "ffi.h")):
            return candidate
    raise BuildError(
        "XLA FFI headers not found: install jax/jaxlib in this environment first, or set "
        "FLEXAVATAR_JAX_INCLUDE to the output of `python -c \"import jax; print(jax.ffi.include_dir())\"`"
    )


def parse_arch(arch: str | None) -> list[str]:
    """'sm_90', '90', 'sm_80,sm_90a' -> ['sm_90'] / ['sm_80', 'sm_90a'] (default: $FLEXAVATAR_CUDA_ARCH or sm_90)."""
    arch = arch or os.environ.get("FLEXAVATAR_CUDA_ARCH") or DEFAULT_ARCH
    archs = []
    for item in arch.replace(" ", "").split(","):
        if not item:
            continue
        item = item if item.startswith("sm_") else f"sm_{item}"
        if not re.fullmatch(r"sm_\d{2,3}[af]?", item):
            raise BuildError(f"unrecognised CUDA architecture {item!r} (expected e.g. sm_90 or sm_80,sm_90)")
        archs.append(item)
    if not archs:
        raise BuildError(f"no CUDA architecture in {arch!r}")
    return archs


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        output = (proc.stdout + proc.stderr).strip()
        raise BuildError(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{output[-6000:]}")


def _nvcc_flags(archs: list[str], include: str) -> list[str]:
    flags = ["-std=c++17", "-O3", "-Xcompiler", "-fPIC,-fvisibility=hidden", "-isystem", include, "-I", str(SPLAT_DIR)]
    for arch in archs:
        number = arch[3:]
        flags += ["-gencode", f"arch=compute_{number},code=sm_{number}"]
    return flags


def build_cuda(out: str | os.PathLike, arch: str | None = None, jobs: int | None = None, nvcc: str | None = None,
               verbose: bool = False) -> Path:
    """Compile the CUDA library to `out` (written atomically). Returns its path; raises BuildError."""
    nvcc = nvcc or find_nvcc()
    if nvcc is None:
        raise BuildError("nvcc not found (set NVCC or CUDA_HOME, or put nvcc on PATH)")
    archs = parse_arch(arch)
    include = find_ffi_include()
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    flags = _nvcc_flags(archs, include)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="splat_build_") as tmp:
        objects = [os.path.join(tmp, Path(src).stem + ".o") for src in CUDA_SOURCES]
        commands = [[nvcc, *flags, "-c", str(SPLAT_DIR / src), "-o", obj] for src, obj in zip(CUDA_SOURCES, objects)]
        workers = max(1, min(len(commands), jobs or os.cpu_count() or 1))
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            for future in [pool.submit(_run, cmd) for cmd in commands]:
                future.result()
        partial = out.with_name(out.name + f".tmp{os.getpid()}")
        link = [nvcc, "-shared", *[f for f in flags if f != "-O3"], *objects, "-o", str(partial),
                "-Xlinker", "--exclude-libs=ALL"]
        _run(link)
        os.replace(partial, out)
    if verbose:
        print(f"[kernels/build] {out} ({', '.join(archs)}) in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return out


def build_reference(out: str | os.PathLike, cxx: str | None = None, verbose: bool = False) -> Path:
    """Compile the serial CPU reference handlers to `out`. Returns its path; raises BuildError."""
    cxx = cxx or os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
    if cxx is None:
        raise BuildError("no C++ compiler found (set CXX)")
    include = find_ffi_include()
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + f".tmp{os.getpid()}")
    start = time.perf_counter()
    _run([cxx, "-std=c++17", "-O2", "-fPIC", "-fvisibility=hidden", "-shared", "-isystem", include, "-I", str(SPLAT_DIR),
          *[str(SPLAT_DIR / src) for src in REFERENCE_SOURCES], "-o", str(partial)])
    os.replace(partial, out)
    if verbose:
        print(f"[kernels/build] {out} (CPU reference) in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return out


def sources_mtime() -> float:
    """Newest modification time among the kernel sources and headers (for staleness checks)."""
    files = [SPLAT_DIR / f for f in (*CUDA_SOURCES, *REFERENCE_SOURCES, *HEADERS)] + [Path(__file__)]
    return max(f.stat().st_mtime for f in files if f.exists())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="shared library to write")
    parser.add_argument("--arch", default=None, help=f"CUDA architectures, comma-separated (default {DEFAULT_ARCH})")
    parser.add_argument("--jobs", type=int, default=None, help="parallel nvcc processes (default: CPU count)")
    parser.add_argument("--reference", action="store_true", help="build the CPU reference handlers instead")
    args = parser.parse_args(argv)
    try:
        if args.reference:
            build_reference(args.out, verbose=True)
        else:
            build_cuda(args.out, arch=args.arch, jobs=args.jobs, verbose=True)
    except BuildError as err:
        print(f"[kernels/build] error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
