"""flexavatar-jax: animatable 3D Gaussian head avatars from 1-4 uncalibrated photos, in JAX.

Installing also compiles the CUDA splatting kernels (kernels/splat) into
`flexavatar_jax/render/_splat_cuda.so` when nvcc is found (normal and editable installs alike).
Environment: FLEXAVATAR_BUILD_CUDA=0 skips it, FLEXAVATAR_CUDA_ARCH picks the architectures
(default sm_90, comma list allowed), NVCC / CUDA_HOME locate the compiler. A failed or skipped
build only warns: the package then runs on the pure-JAX renderer, and
`python -m flexavatar_jax.render.cuda_backend build` builds the library later.
"""

import importlib.util
import os
import sys
import warnings

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

_HERE = os.path.dirname(os.path.abspath(__file__))
_SPLAT_EXTENSION = "flexavatar_jax.render._splat_cuda"


def _kernel_build_module():
    """kernels/build.py, loaded by path: the one implementation of the kernel build."""
    spec = importlib.util.spec_from_file_location("flexavatar_kernels_build", os.path.join(_HERE, "kernels", "build.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _warn(message: str) -> None:
    # Printed for `pip -v` and plain `setup.py` runs; warnings.warn is what a quiet pip (>= 25)
    # still forwards to the user from the build backend.
    warnings.warn(f"flexavatar-jax: {message}\nOnly the pure-JAX renderer is available; build the CUDA one later "
                  "with `python -m flexavatar_jax.render.cuda_backend build`.", stacklevel=2)
    bar = "!" * 100
    print(f"\n{bar}\nWARNING (flexavatar-jax): {message}\n"
          "The package works without it (pure-JAX renderer); build the CUDA backend later with\n"
          "    python -m flexavatar_jax.render.cuda_backend build [--arch sm_90]\n"
          f"{bar}\n", file=sys.stderr, flush=True)


class _SplatLibrary(Extension):
    """The CUDA splatting library: a plain shared library loaded with ctypes, not a Python module."""

    def __init__(self):
        super().__init__(_SPLAT_EXTENSION, sources=[], optional=True)


class _BuildExt(build_ext):
    """Builds `_SplatLibrary` with kernels/build.py (nvcc); never fails the install."""

    def get_ext_filename(self, fullname):
        # `_splat_cuda.so` (no Python ABI tag), the name cuda_backend.py looks for. distutils asks
        # both with the dotted name and with its last component alone.
        if fullname in (_SPLAT_EXTENSION, _SPLAT_EXTENSION.rpartition(".")[2]):
            return os.path.join(*fullname.split(".")) + ".so"
        return super().get_ext_filename(fullname)

    def build_extension(self, ext):
        if not isinstance(ext, _SplatLibrary):
            return super().build_extension(ext)
        if os.environ.get("FLEXAVATAR_BUILD_CUDA", "1").strip().lower() in ("0", "false", "no", "off"):
            print("flexavatar-jax: FLEXAVATAR_BUILD_CUDA=0, not building the CUDA splatting library", file=sys.stderr)
            return None
        try:
            kernels = _kernel_build_module()
            if kernels.find_nvcc() is None:  # the normal case on CPU-only machines: no loud warning
                print("flexavatar-jax: nvcc not found (set NVCC or CUDA_HOME), not building the CUDA splatting "
                      "library", file=sys.stderr)
                return None
            out = self.get_ext_fullpath(ext.name)
            print(f"flexavatar-jax: compiling the CUDA splatting library -> {out}", file=sys.stderr, flush=True)
            kernels.build_cuda(out, verbose=True)
        except Exception as err:  # noqa: BLE001 - any failure must leave a working pure-JAX install
            _warn(f"building the CUDA splatting library failed:\n{err}")
        return None


_FACES = ["dlib-bin>=19.24,<21", "face-recognition-models>=0.3,<0.4", "opencv-python-headless>=4.8,<6"]

setup(
    name="flexavatar-jax",
    version="0.1.0",
    description=(
        "JAX/Flax reimplementation of FlexAvatar (+ FHAvatar / Dual-UV lifters): "
        "feed-forward animatable 3D Gaussian head avatars."
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.12",
    # configs/ stays at the top of the checkout (`--config configs/flexavatar.py:tiny`) and is also
    # importable as `flexavatar_jax.configs` (`from flexavatar_jax.configs import flexavatar`).
    packages=find_packages(include=["flexavatar_jax", "flexavatar_jax.*"])
    + ["flexavatar_jax.configs", "flexavatar_jax.configs.studies"],
    package_dir={"flexavatar_jax.configs": "configs", "flexavatar_jax.configs.studies": "configs/studies"},
    package_data={"flexavatar_jax": ["head/README.md", "data/assets/*.npz"]},
    install_requires=[
        "jax>=0.11,<0.13",
        "flax>=0.11,<0.13",
        "optax>=0.2.4,<0.3",
        "orbax-checkpoint>=0.11,<0.13",
        "grain>=0.2.12,<0.3",
        "numpy>=2.0,<3",
        "jaxtyping>=0.3,<0.4",
        "absl-py>=2.1,<3",
        "ml_collections>=1.0,<2",
        "pillow>=10,<13",
        "imageio>=2.34,<3",
        "scipy>=1.13,<2",  # study fits
        "matplotlib>=3.8,<4",  # study plots
    ],
    extras_require={
        # Portrait preprocessing (`flexavatar-jax prepare`, flexavatar_jax/data/portrait.py): dlib's face
        # detector and 68-point landmarks with their model files shipped inside face-recognition-models
        # (nothing downloaded at run time, no TensorFlow or PyTorch), OpenCV for the GrabCut matte.
        "faces": _FACES,
        # The tests exercise `prepare` on real photographs (scikit-image ships them).
        "test": ["pytest>=8,<10", "pytest-xdist>=3.5,<4", "beartype>=0.19,<0.24", "scikit-image>=0.22,<0.27", *_FACES],
    },
    entry_points={"console_scripts": ["flexavatar-jax=flexavatar_jax.cli:run"]},
    ext_modules=[_SplatLibrary()],
    cmdclass={"build_ext": _BuildExt},
)
