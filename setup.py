"""flexavatar-jax: animatable 3D Gaussian head avatars from 1-4 uncalibrated photos, in JAX."""

from setuptools import find_packages, setup

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
    packages=find_packages(include=["flexavatar_jax", "flexavatar_jax.*"]),
    package_data={"flexavatar_jax": ["head/README.md"]},
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
    ],
    extras_require={
        "test": ["pytest>=8,<10", "pytest-xdist>=3.5,<4", "beartype>=0.19,<0.24", "scipy>=1.13,<2"],
    },
    entry_points={"console_scripts": ["flexavatar-jax=flexavatar_jax.cli:run"]},
)
