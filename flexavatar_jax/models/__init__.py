"""Flax Linen models: ViT encoder, lifters (structured head queries, Dual-UV, symmetric), UV decoder,
deformation UNet, Gaussian assembly and the `FlexAvatar` avatar API."""
