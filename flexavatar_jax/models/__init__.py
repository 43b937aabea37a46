"""Flax Linen models (filled by the model issue) and Gaussian assembly from UV maps (`gaussians`)."""
