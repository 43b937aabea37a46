"""What a study is: a base run config, the points it trains (a grid of identity counts, or named
variants), seeds, and a compute policy.

A study file is a Python config file like a run config (`configs/studies/identity_scaling.py`):
`get_config(variant)` returns an `ml_collections.ConfigDict` with the fields of `Study`. Each
*point* of the study is an ordinary training run, `flexavatar-jax train` with the base config, the
study's `overrides`, the point's own overrides and its `seed` and `train.steps`; with `cache` every
point shares `data.cache_dir = ROOT/cache`, so rendered examples and held-out eval sets are made
once for the whole study. Two kinds:

* **scaling** (no `variants`): the points sweep `data.num_identities` over `identities`, workdirs
  `ROOT/ids{N}_seed{S}`;
* **ablation** (`variants` given): the points are named variants (config overrides of the base;
  the first is the baseline the others are compared with), workdirs `ROOT/{variant}_seed{S}`;
  `claims` name the differences the papers predict (see `ablation.py`).

Compute policies (`compute`):

* `fixed_steps` — every point trains `steps` steps (the same compute whatever N);
* `fixed_epochs` — `ceil(epochs · N · data.examples_per_identity / train.batch_size)` steps;
* `power` — `ceil(coefficient · N ** exponent)` steps.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import shlex
from collections.abc import Mapping
from typing import Any

from flexavatar_jax.config import Config, from_dict, to_dict

COMPUTE_POLICIES = ("fixed_steps", "fixed_epochs", "power")


@dataclasses.dataclass(frozen=True)
class Study:
    """`name`; `base_config` FILE:VARIANT of the run config (a relative FILE is looked up in the
    working directory, then among the installed `flexavatar_jax.configs`); `overrides` applied to
    every point as (dotted field, value) pairs; `identities` the grid of training-identity counts;
    `seeds`; points with more than `multi_seed_max_identities` identities run the first seed only
    (-1: every seed at every N); `compute` policy with `steps` | `epochs` | `coefficient`,
    `exponent`; `variants` ((name, ((field, value), ...)), ...) makes it an ablation study (the
    first variant is the baseline) and `claims` ((claim, "variant:mode/views/split/metric" a,
    "variant:mode/views/split/metric" b, "+" | "-" the expected sign of a − b, source), ...) the
    comparisons its report tests; the points of `refine_variants` are also refined after training
    (`flexavatar-jax refine` on `refine_identities` held-out identities, 0 = all evaluated ones:
    PSNR before/after, a row of the ablation report); `cache` shares `ROOT/cache` as every point's `data.cache_dir` (rendered examples
    and eval sets made once per study: right for small images on CPUs, off where the examples of a
    large run would not fit on disk); `convergence_psnr` the held-out PSNR (dB) whose first crossing is the
    convergence-speed measure; `slurm_*` the job-array script `plan` writes."""

    name: str = ""
    base_config: str = "configs/flexavatar.py:tiny"
    overrides: tuple[tuple[str, Any], ...] = ()
    identities: tuple[int, ...] = (1, 2, 4, 8)
    seeds: tuple[int, ...] = (0,)
    multi_seed_max_identities: int = -1
    compute: str = "fixed_steps"
    steps: int = 1000
    epochs: float = 1.0
    coefficient: float = 100.0
    exponent: float = 0.5
    variants: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = ()
    claims: tuple[tuple[str, str, str, str, str], ...] = ()
    refine_variants: tuple[str, ...] = ()
    refine_identities: int = 0
    cache: bool = True
    convergence_psnr: float = 18.0
    slurm_time: str = "24:00:00"
    slurm_gpus_per_task: int = 1
    slurm_extra: str = ""

    def __post_init__(self):
        if not self.identities or any(int(n) < 1 for n in self.identities):
            raise ValueError(f"study identities must be >= 1, got {self.identities}")
        if len(set(self.identities)) != len(self.identities):
            raise ValueError(f"study identities must be distinct, got {self.identities}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"study seeds must be distinct and non-empty, got {self.seeds}")
        if self.compute not in COMPUTE_POLICIES:
            raise ValueError(f"study compute must be one of {COMPUTE_POLICIES}, got {self.compute!r}")
        reserved = {"seed", "train.steps", "data.cache_dir"} | (set() if self.variants else {"data.num_identities"})
        names = [name for name, _ in self.variants]
        if len(set(names)) != len(names) or any(not n or "/" in n or ":" in n for n in names):
            raise ValueError(f"study variant names must be distinct, non-empty, without '/' or ':', got {names}")
        for where, pairs in [("overrides", self.overrides)] + [(f"variant {n}", o) for n, o in self.variants]:
            clash = sorted(reserved & {k for k, _ in pairs})
            if clash:
                raise ValueError(f"study {where} may not set {clash}: the study sets them per point")
        unknown = sorted(set(self.refine_variants) - set(names))
        if unknown:
            raise ValueError(f"study refine_variants {unknown} are not variants of the study ({names})")
        if self.refine_identities < 0:
            raise ValueError(f"study refine_identities must be >= 0, got {self.refine_identities}")
        for claim in self.claims:
            if len(claim) != 5 or claim[3] not in ("+", "-"):
                raise ValueError(f"a claim is (name, 'variant:cell', 'variant:cell', '+'|'-', source), got {claim}")
            for side in claim[1:3]:
                if side.partition(":")[0] not in names:
                    raise ValueError(f"claim {claim[0]!r} names {side!r}, whose variant is not in {names}")

    @property
    def kind(self) -> str:
        return "ablation" if self.variants else "scaling"

    @classmethod
    def from_dict(cls, mapping: Mapping) -> "Study":
        mapping = dict(mapping.to_dict() if hasattr(mapping, "to_dict") else mapping)
        mapping["overrides"] = _pairs(mapping.get("overrides", ()))
        mapping["variants"] = tuple((str(name), _pairs(o)) for name, o in mapping.get("variants", ()))
        return from_dict(cls, mapping)

    def to_dict(self) -> dict:
        out = to_dict(self)
        out["overrides"] = {k: v for k, v in self.overrides}
        out["variants"] = {name: {k: v for k, v in o} for name, o in self.variants}
        return out


@dataclasses.dataclass(frozen=True)
class Point:
    """One training run of a study: `identities` training identities, `seed`, `steps`; in an
    ablation study also its `variant` name."""

    identities: int
    seed: int
    steps: int
    variant: str = ""

    @property
    def name(self) -> str:
        return f"{self.variant}_seed{self.seed}" if self.variant else f"ids{self.identities}_seed{self.seed}"


def _plain(v: Any) -> Any:
    return tuple(_plain(x) for x in v) if isinstance(v, (list, tuple)) else v


def _pairs(overrides) -> tuple[tuple[str, Any], ...]:
    """(dotted field, value) pairs, sorted, from a mapping or a sequence of pairs."""
    if hasattr(overrides, "to_dict"):
        overrides = overrides.to_dict()
    items = overrides.items() if isinstance(overrides, Mapping) else overrides
    return tuple(sorted((str(k), _plain(v)) for k, v in items))


# ---------------------------------------------------------------------------------------------- loading
def _load_module(path: str):
    spec = importlib.util.spec_from_file_location(f"flexavatar_config_{abs(hash(path))}", path)
    if spec is None or spec.loader is None:
        raise ValueError(f"cannot load config file {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def resolve_config_path(path: str) -> str:
    """A config file by path: as given (relative to the working directory), else relative to the
    installed `flexavatar_jax.configs` (`configs/...` paths work from anywhere)."""
    if os.path.exists(path):
        return path
    from flexavatar_jax import configs

    root = os.path.dirname(configs.__file__)
    candidate = os.path.join(root, path.removeprefix("configs/"))
    if os.path.exists(candidate):
        return candidate
    raise FileNotFoundError(f"config file {path} not found (also looked in {root})")


def _file_variant(spec: str, what: str) -> tuple[str, str | None]:
    path, _, variant = spec.partition(":")
    if not path.endswith(".py"):
        raise ValueError(f"{what} must be FILE.py[:VARIANT], got {spec!r}")
    return resolve_config_path(path), variant or None


def load_config_file(spec: str, what: str = "config"):
    """`get_config(variant)` of FILE.py:VARIANT (a ConfigDict)."""
    path, variant = _file_variant(spec, what)
    module = _load_module(path)
    return module.get_config(variant) if variant is not None else module.get_config()


def load_study(spec: str) -> Study:
    """The `Study` of `configs/studies/NAME.py:VARIANT`."""
    study = Study.from_dict(load_config_file(spec, "a study"))
    return study if study.name else dataclasses.replace(study, name=spec)


# ---------------------------------------------------------------------------------------------- points
def point_steps(study: Study, identities: int, base: Config) -> int:
    if study.compute == "fixed_steps":
        return int(study.steps)
    if study.compute == "fixed_epochs":
        examples = identities * base.data.examples_per_identity
        return max(1, math.ceil(study.epochs * examples / base.train.batch_size))
    return max(1, math.ceil(study.coefficient * identities ** study.exponent))


def points(study: Study, base: Config | None = None) -> list[Point]:
    """Every point, in the order `run` trains them: the first seed over the whole grid (ascending
    N) or every variant first, then the other seeds, so a study cut short still spans the grid."""
    base = base if base is not None else base_config(study)
    out = []
    if study.variants:
        for seed in study.seeds:
            for name, overrides in study.variants:
                n = int(dict(overrides).get("data.num_identities", base.data.num_identities))
                out.append(Point(n, int(seed), point_steps(study, n, base), variant=name))
        return out
    for k, seed in enumerate(study.seeds):
        for n in sorted(int(i) for i in study.identities):
            if k > 0 and 0 <= study.multi_seed_max_identities < n:
                continue
            out.append(Point(n, int(seed), point_steps(study, n, base)))
    return out


def _set(tree, dotted: str, value) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for p in parents:
        if p not in node:
            raise ValueError(f"study override {dotted!r}: the base config has no field {p!r}")
        node = node[p]
    if leaf not in node:
        raise ValueError(f"study override {dotted!r}: the base config has no field {leaf!r}")
    node[leaf] = list(value) if isinstance(value, tuple) else value


def point_overrides(study: Study, point: Point, root: str) -> list[tuple[str, Any]]:
    """The study's overrides, then the point's own (its variant's overrides or its identity count;
    seed; steps) and the shared cache."""
    if point.variant:
        own = [*dict(study.variants)[point.variant], ("seed", point.seed), ("train.steps", point.steps)]
    else:
        own = [("data.num_identities", point.identities), ("seed", point.seed), ("train.steps", point.steps)]
    cache = [("data.cache_dir", os.path.join(root, "cache"))] if study.cache else []
    return [*study.overrides, *own, *cache]


def _resolved(study: Study, pairs) -> Config:
    tree = load_config_file(study.base_config).to_dict()
    for k, v in pairs:
        _set(tree, k, v)
    return Config.from_dict(tree)


def base_config(study: Study) -> Config:
    """The base config with the study's overrides (what every point shares)."""
    return _resolved(study, study.overrides)


def point_config(study: Study, point: Point, root: str) -> Config:
    """The resolved run config of one point (what its `train` command builds)."""
    return _resolved(study, point_overrides(study, point, root))


def _flag_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (tuple, list)):
        return "(" + ",".join(_flag_value(x) for x in v) + ("," if len(v) == 1 else "") + ")"
    return str(v)


def override_flags(overrides) -> list[str]:
    """`--config.a.b=value` command-line flags of (dotted field, value) pairs (or a dict)."""
    items = overrides.items() if isinstance(overrides, dict) else overrides
    return [f"--config.{k}={_flag_value(v)}" for k, v in items]


def point_workdir(root: str, point: Point) -> str:
    return os.path.join(root, point.name)


def train_argv(study: Study, point: Point, root: str) -> list[str]:
    """The `train` arguments of one point (after the program name)."""
    args = ["train", f"--config={study.base_config}"]
    args += override_flags(point_overrides(study, point, root))
    return args + [f"--workdir={point_workdir(root, point)}"]


def refines(study: Study, point: Point) -> bool:
    return bool(point.variant) and point.variant in study.refine_variants


def refine_argv(study: Study, point: Point, root: str) -> list[str]:
    """The `refine` arguments of a point of a `refine_variants` variant (after the program name):
    the point's own config, on `refine_identities` held-out identities when set."""
    args = train_argv(study, point, root)[1:]
    if study.refine_identities:
        flag = "--config.eval.num_identities="
        args = [a for a in args if not a.startswith(flag)] + [f"{flag}{study.refine_identities}"]
    return ["refine", *args]


def train_command(study: Study, point: Point, root: str, program: str = "flexavatar-jax") -> str:
    """The point's shell command: `train`, followed by `refine` for a `refine_variants` point."""
    command = shlex.join([program, *train_argv(study, point, root)])
    if refines(study, point):
        command += " && " + shlex.join([program, *refine_argv(study, point, root)])
    return command


__all__ = ["COMPUTE_POLICIES", "Point", "Study", "base_config", "load_config_file", "load_study", "point_config",
           "override_flags", "point_steps", "point_workdir", "points", "refine_argv", "refines", "resolve_config_path", "train_argv",
           "train_command"]
