"""flexavatar-jax: feed-forward animatable 3D Gaussian head avatars (FlexAvatar) in JAX/Flax.

Layering (lower never imports higher): head <- render <- data <- models <- train <- cli.
"""

__version__ = "0.1.0"
