"""Rendering: Gaussian rasterization backends, cameras, mesh z-buffer."""
