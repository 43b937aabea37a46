"""Rendering: Gaussian rasterization backends, cameras, mesh z-buffer."""

from flexavatar_jax.render.rasterize import (
    MAX_ALPHA,
    RasterDiagnostics,
    TileOverflowWarning,
    rasterize,
    rasterize_with_diagnostics,
)

__all__ = ["MAX_ALPHA", "RasterDiagnostics", "TileOverflowWarning", "rasterize", "rasterize_with_diagnostics"]
