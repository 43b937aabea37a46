"""Studies over configs (identity-count scaling, ablations): a study file names a base config, the
points and the compute policy; `runner` plans and runs the points (each an ordinary training run),
`report` reads them back into tables, fits and plots, and `archive` carries finished points to
another machine. Layer: above `train`, below `cli`."""

from flexavatar_jax.studies.spec import Point, Study, load_study, points

__all__ = ["Point", "Study", "load_study", "points"]
