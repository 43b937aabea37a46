"""Rendering: Gaussian rasterization backends, cameras, mesh z-buffer."""

from flexavatar_jax.render.common import MAX_ALPHA, RasterDiagnostics, RasterOptions, TileOverflowWarning
from flexavatar_jax.render.rasterization import rasterize

__all__ = ["MAX_ALPHA", "RasterDiagnostics", "RasterOptions", "TileOverflowWarning", "rasterize"]
