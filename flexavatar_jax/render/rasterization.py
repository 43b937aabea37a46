"""`rasterize`: the one public entry point of the Gaussian renderer.

It checks the arguments, resolves the options (capacities, backend) and calls one backend: the
pure-JAX stages in `jax_backend.py` or the CUDA kernels behind `cuda_backend.py` (imported lazily,
so the pure-JAX path never touches ctypes/FFI). Both return (images, alphas, RasterDiagnostics).
"""

from __future__ import annotations

import numpy as np
from jaxtyping import Array, Float

from flexavatar_jax.render.common import RasterDiagnostics, RasterOptions, validate_inputs, warn_on_overflow
from flexavatar_jax.render.jax_backend import rasterize_jax

_Images = Float[Array, "v h w d"]
_Alphas = Float[Array, "v h w 1"]


def rasterize(
    means: Float[Array, "n 3"], quats: Float[Array, "n 4"], scales: Float[Array, "n 3"],
    opacities: Float[Array, " n"], colors: Float[Array, "n c"],
    viewmats: Float[Array, "v 4 4"], Ks: Float[Array, "v 3 3"],
    width: int, height: int,
    *,
    backgrounds: Float[Array, "v c"] | None = None,
    options: RasterOptions | None = None,
    return_diagnostics: bool = False,
    **option_overrides,
) -> tuple[_Images, _Alphas] | tuple[_Images, _Alphas, RasterDiagnostics]:
    """Render N 3D Gaussians into V pinhole cameras (gsplat 1.5.3 `rasterization`, classic mode).

    Args:
      means: [N,3] world positions. quats: [N,4] wxyz rotations (normalised here).
      scales: [N,3] linear standard deviations along the local axes (world units).
      opacities: [N] in [0,1]. colors: [N,C] any C (RGB, features, ...).
      viewmats: [V,4,4] world->camera, OpenCV axes (x right, y down, z forward).
      Ks: [V,3,3] pixel intrinsics, pixel centres at +0.5. width, height: image size in pixels.
      backgrounds: [V,C] colour behind the Gaussians (colour channels only), default black.
      options: a `RasterOptions` (its docstring describes every option); default RasterOptions().
      return_diagnostics: also return the `RasterDiagnostics` of every intermediate stage.
      **option_overrides: RasterOptions fields by name (near_plane, far_plane, eps2d, tile_size,
        render_mode, backend, max_gaussians_per_tile, max_intersections, compositor,
        lockstep_tiles), applied over `options`; an unknown name raises TypeError listing the fields.

    Returns:
      colors [V,H,W,C] ("RGB"), [V,H,W,1] ("D") or [V,H,W,C+1] ("RGB+D");
      alphas [V,H,W,1] = 1 - final transmittance;
      with return_diagnostics=True, also the `RasterDiagnostics`.

    Differentiable (reverse mode) w.r.t. means, quats, scales, opacities, colors, backgrounds,
    viewmats and Ks; jit-, vmap- and grad-composable. Gaussians with any non-finite parameter
    (and cameras with non-finite viewmats/Ks) are culled and non-finite background entries read
    as 0, so outputs and gradients stay finite; `RasterDiagnostics.valid` shows what was culled.
    Bad shapes/arguments raise ValueError before tracing. Intersections dropped by a capacity
    (see RasterOptions) raise a TileOverflowWarning, also from inside jit when the render runs.
    """
    if options is None:
        options = RasterOptions()
    elif not isinstance(options, RasterOptions):
        raise TypeError(f"rasterize: `options` must be a RasterOptions, got {type(options).__name__}")
    options = options.replace(**option_overrides)
    num_views, num_gaussians, _ = validate_inputs(
        means, quats, scales, opacities, colors, viewmats, Ks, backgrounds, width, height
    )
    options = options.resolved(num_views, num_gaussians)
    render = rasterize_jax
    if options.backend != "jax":
        # Imported lazily: the pure-JAX path never touches ctypes/FFI. Raises for an unusable
        # backend="cuda"; "auto" falls back to JAX (see cuda_backend.resolve_backend).
        from flexavatar_jax.render import cuda_backend

        dtypes = [x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype
                  for x in (means, quats, scales, opacities, colors, viewmats, Ks)]
        backend = cuda_backend.resolve_backend(options.backend, tile_size=options.tile_size, dtypes=dtypes)
        if backend == "cuda":
            render = cuda_backend.rasterize_cuda
        options = options.replace(backend=backend)  # "auto" and "jax" share one compiled JAX render
    images, alphas, diagnostics = render(
        means, quats, scales, opacities, colors, viewmats, Ks, backgrounds, width=int(width), height=int(height),
        options=options,
    )
    warn_on_overflow(diagnostics.overflow, options)
    if return_diagnostics:
        return images, alphas, diagnostics
    return images, alphas
