"""`sweep report`: read every point of a study back into one report.

Writes `ROOT/report/{report.md, results.json, scaling.png, convergence.png}`. Per point: status
(finished / unfinished / missing / unreadable — named in the report, never dropped silently), wall
time and the share of it spent waiting for data. Per identity count N (seeds pooled): held-out
metrics with 95% bootstrap intervals (resampling held-out identities and seeds) for self- and
cross-reenactment from 1 and 4 views, split by expression (ordinary / marginal) and viewpoint
(frontal / side-back), with the input-shuffle control's *identity gain*. Fits of the saturating
power law (`fits.py`) for the identity gain and the error metrics, the extrapolation check, and
convergence (held-out PSNR and identity gain against step; steps to reach `convergence_psnr`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import warnings
from typing import Any

import numpy as np

from flexavatar_jax.files import replacing, write_atomic
from flexavatar_jax.studies import fits
from flexavatar_jax.studies.runner import point_status
from flexavatar_jax.studies.spec import Point, Study, point_workdir, points
from flexavatar_jax.train.evaluate import finite_or_none, split_masks

# Per-target quantities read from eval.json (`<name>` and `<name>_shuffled`).
BASE_METRICS = ("psnr", "psnr_head", "ssim", "iou")
# What is fitted against N: (key, label, transform of the per-target values, direction).
FITTED = {
    "identity_gain_psnr": "identity gain, PSNR (dB) ↑",
    "identity_gain_psnr_head": "identity gain, head PSNR (dB) ↑",
    "mse_head": "head-region MSE ↓",
    "mse": "MSE ↓",
    "one_minus_ssim": "1 − SSIM ↓",
    "one_minus_iou": "1 − alpha IoU ↓",
}
PRIMARY = "identity_gain_psnr"
SHOWN = ("identity_gain_psnr", "identity_gain_psnr_head", "psnr", "psnr_shuffled", "psnr_head", "ssim", "iou",
         "iou_shuffled", "identity_gain_iou", "mse", "mse_head", "one_minus_ssim", "one_minus_iou", "psnr_mouth",
         "depth_err_mm", "offset_mm")
PRIMARY_CELL = ("self", "4_views", "all")


# ---------------------------------------------------------------------------------------------- reading
def per_identity(per_target: dict[str, list], name: str, select: np.ndarray) -> np.ndarray | None:
    """Per held-out identity: mean of a quantity over the selected targets ([I], NaN where none)."""
    def mean(values):
        v = np.where(select, np.asarray(values, np.float64), np.nan)
        with np.errstate(invalid="ignore"), _quiet():
            return np.nanmean(v, axis=1)

    def mse(key):
        return 10.0 ** (-np.asarray(per_target[key], np.float64) / 10.0)

    if name in per_target:
        return mean(per_target[name])
    if name.startswith("identity_gain_"):
        base = name.removeprefix("identity_gain_")
        if base in per_target and f"{base}_shuffled" in per_target:
            return mean(per_target[base]) - mean(per_target[f"{base}_shuffled"])
        return None
    if name == "mse" and "psnr" in per_target:
        return mean(mse("psnr"))
    if name == "mse_head" and "psnr_head" in per_target:
        return mean(mse("psnr_head"))
    if name == "one_minus_ssim" and "ssim" in per_target:
        return 1.0 - mean(per_target["ssim"])
    if name == "one_minus_iou" and "iou" in per_target:
        return 1.0 - mean(per_target["iou"])
    return None


@contextlib.contextmanager
def _quiet():
    """No RuntimeWarnings (means of all-NaN slices: empty splits are expected)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def _split_masks(per_target: dict[str, list]) -> dict[str, np.ndarray]:
    """`evaluate.split_masks` of an eval.json result's per-target lists."""
    return split_masks(per_target["marginal"], per_target["azimuth_deg"])


def read_point(root: str, point: Point) -> dict[str, Any]:
    """Everything the report needs of one point; `status` says whether it can be used."""
    status, reason = point_status(root, point)
    out: dict[str, Any] = {"name": point.name, "identities": point.identities, "seed": point.seed,
                           "steps": point.steps, "status": status, "reason": reason}
    workdir = point_workdir(root, point)
    rows = []
    try:
        if os.path.exists(os.path.join(workdir, "metrics.jsonl")):
            with open(os.path.join(workdir, "metrics.jsonl")) as f:
                rows = [json.loads(line) for line in f if line.strip()]
    except (OSError, ValueError) as err:
        out.update(status="unreadable", reason=f"metrics.jsonl: {type(err).__name__}: {err}")
        rows = []
    logged = [r for r in rows if "wall_s" in r]
    wall = sum(r["wall_s"] for r in logged)
    evals = [r for r in rows if "heldout/psnr" in r]
    # A resumed point replays the steps after its last checkpoint: keep the last score per step.
    curve_rows = sorted({r["step"]: r for r in evals}.values(), key=lambda r: r["step"])
    out["train_seconds"] = wall
    out["eval_seconds"] = sum(r.get("heldout/seconds", 0.0) for r in evals)
    out["data_share"] = sum(r["data_s"] for r in logged) / wall if wall else None
    out["last_step"] = max((r["step"] for r in rows), default=0)
    out["curve"] = [{"step": r["step"], "psnr": r["heldout/psnr"],
                     "identity_gain_psnr": r.get("heldout/identity_gain_psnr")} for r in curve_rows]
    if out["status"] != "finished":
        return out
    try:
        with open(os.path.join(workdir, "eval.json")) as f:
            results = json.load(f)
        cells = {}
        for mode, by_views in results.items():
            for views, res in by_views.items():
                per_target = res["per_target"]
                masks = _split_masks(per_target)
                for split, select in masks.items():
                    for name in SHOWN:
                        values = per_identity(per_target, name, select)
                        if values is not None:
                            cells[(mode, views, split, name)] = values
        out["cells"] = cells
    except (OSError, ValueError, KeyError, TypeError) as err:
        out.update(status="unreadable", reason=f"eval.json: {type(err).__name__}: {err}")
    return out


# ---------------------------------------------------------------------------------------------- aggregation
def _mean_ci(samples: np.ndarray, rng: np.random.Generator, resamples: int) -> tuple[float, list[float]]:
    """Mean of [seeds, identities] values and a 95% bootstrap interval over identities and seeds."""
    with _quiet():
        mean = float(np.nanmean(samples))
        s, i = samples.shape
        boots = [np.nanmean(samples[rng.integers(0, s, s)][:, rng.integers(0, i, i)]) for _ in range(resamples)]
        return mean, [float(np.nanpercentile(boots, 2.5)), float(np.nanpercentile(boots, 97.5))]


def aggregate(point_results: list[dict], resamples: int) -> dict:
    """`{cell key: {N: (mean, ci, samples [seeds, ids])}}` over the finished points."""
    rng = np.random.default_rng(0)
    by_n: dict[int, list[dict]] = {}
    for p in point_results:
        if p["status"] == "finished":
            by_n.setdefault(p["identities"], []).append(p)
    table: dict[tuple, dict[int, dict]] = {}
    for n, pts in sorted(by_n.items()):
        keys = set.intersection(*(set(p["cells"]) for p in pts))
        for key in sorted(keys):  # a fixed order: the bootstrap draws are reproducible
            samples = np.stack([p["cells"][key] for p in pts])
            if np.all(np.isnan(samples)):
                continue
            mean, ci = _mean_ci(samples, rng, resamples)
            table.setdefault(key, {})[n] = {"mean": mean, "ci": ci, "samples": samples, "seeds": len(pts)}
    return table


def _fit_cell(series: dict[int, dict], resamples: int) -> dict | None:
    ns = sorted(series)
    if len(ns) < 4:
        return None
    samples = [series[n]["samples"] for n in ns]
    try:
        result = fits.bootstrap_fit(np.asarray(ns, np.float64), samples, resamples)
        boot = result.pop("bootstrap_params")
        grid = np.geomspace(min(ns), max(ns) * 2, 100)
        curves = fits.power_law(grid[None], boot[:, :1], boot[:, 1:2], boot[:, 2:3])
        with _quiet():
            result["band"] = (np.nanpercentile(curves, 2.5, axis=0), np.nanpercentile(curves, 97.5, axis=0))
        result["extrapolation"] = fits.extrapolation_check(np.asarray(ns, np.float64), samples,
                                                           max(100, resamples // 3))
    except (RuntimeError, ValueError) as err:
        return {"error": f"{type(err).__name__}: {err}"}
    return result


def convergence(point_results: list[dict], threshold: float) -> dict[str, Any]:
    """Per point: steps to first reach `threshold` dB of held-out PSNR (None = not reached)."""
    out = {}
    for p in point_results:
        crossing = next((c["step"] for c in p["curve"] if c["psnr"] >= threshold), None)
        out[p["name"]] = {"identities": p["identities"], "seed": p["seed"], "steps_to_threshold": crossing,
                          "final_psnr": p["curve"][-1]["psnr"] if p["curve"] else None}
    return out


# ---------------------------------------------------------------------------------------------- plots
def _plots(study: Study, table: dict, fitted: dict, point_results: list[dict], out_dir: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = [(("self", "4_views", "all"), "self, 4 views", "C0", "-"), (("self", "1_views", "all"), "self, 1 view", "C1", "-"),
             (("self", "4_views", "side_back"), "self, 4 views, side/back", "C2", "--"),
             (("self", "4_views", "frontal"), "self, 4 views, frontal", "C3", "--"),
             (("self", "4_views", "marginal"), "self, 4 views, marginal expr.", "C4", ":"),
             (("cross", "4_views", "all"), "cross, 4 views", "C5", "-.")]
    panels = [*FITTED, "psnr", "psnr_shuffled"]
    labels = {**FITTED, "psnr": "PSNR (dB) ↑", "psnr_shuffled": "PSNR from another identity's inputs (dB)"}
    cols = 4
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    for ax, metric in zip(axes.flat, panels):
        for k, ((mode, views, split), label, color, style) in enumerate(lines):
            series = table.get((mode, views, split, metric))
            if not series:
                continue
            # Dodged a little along N so the intervals of the lines do not hide each other.
            ns = np.array(sorted(series), np.float64) * 1.05 ** (k - (len(lines) - 1) / 2)
            means = np.array([series[n]["mean"] for n in sorted(series)])
            lo = means - np.array([series[n]["ci"][0] for n in sorted(series)])
            hi = np.array([series[n]["ci"][1] for n in sorted(series)]) - means
            ax.errorbar(ns, means, yerr=[lo, hi], color=color, linestyle=style, marker="o", ms=3, capsize=2,
                        label=label, lw=1.2 if (mode, views, split) == PRIMARY_CELL else 0.8)
        fit = fitted.get(metric)
        if fit and "alpha" in fit:
            grid = np.geomspace(min(fit["n"]), max(fit["n"]) * 2, 100)
            ax.plot(grid, fits.power_law(grid, fit["e"], fit["a"], fit["alpha"]), color="k", lw=1,
                    label=f"fit: α={fit['alpha']:.2f} [{fit['alpha_ci'][0]:.2f}, {fit['alpha_ci'][1]:.2f}]")
            band = fit.get("band")
            if band is not None:
                ax.fill_between(grid, *band, color="k", alpha=0.12, lw=0)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("training identities N")
        ax.set_title(labels[metric], fontsize=9)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    handles, names = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.suptitle(f"{study.name}: held-out metrics against the number of training identities (95% intervals)")
    fig.tight_layout(rect=(0, 0.07, 1, 0.96))
    scaling = os.path.join(out_dir, "scaling.png")
    with replacing(scaling) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    ns = sorted({p["identities"] for p in point_results if p["curve"]})
    cmap = plt.get_cmap("viridis")
    for p in point_results:
        if not p["curve"]:
            continue
        color = cmap(ns.index(p["identities"]) / max(len(ns) - 1, 1))
        steps = [c["step"] for c in p["curve"]]
        label = f"N={p['identities']}" if p["seed"] == min(q["seed"] for q in point_results
                                                          if q["identities"] == p["identities"]) else None
        axes[0].plot(steps, [c["psnr"] for c in p["curve"]], color=color, marker="o", ms=3, label=label,
                     linestyle="-" if p["seed"] == study.seeds[0] else "--")
        gains = [c["identity_gain_psnr"] for c in p["curve"]]
        if all(g is not None for g in gains):
            axes[1].plot(steps, gains, color=color, marker="o", ms=3, linestyle="-" if p["seed"] == study.seeds[0] else "--")
    axes[0].axhline(study.convergence_psnr, color="grey", lw=0.8, linestyle=":")
    axes[0].set_title("held-out self-reenactment PSNR (dB), max views")
    axes[1].set_title("identity gain (dB): own inputs − another identity's")
    for ax in axes:
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    conv = os.path.join(out_dir, "convergence.png")
    with replacing(conv) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return [scaling, conv]


# ---------------------------------------------------------------------------------------------- report
def _fmt(x, digits=2) -> str:
    return "–" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{digits}f}"


def _ci(entry, digits=2) -> str:
    return f"{_fmt(entry['mean'], digits)} [{_fmt(entry['ci'][0], digits)}, {_fmt(entry['ci'][1], digits)}]"


def _trend(series: dict[int, dict]) -> str:
    """Whether the largest N is above / below / level with the smallest, outside the intervals."""
    ns = sorted(series)
    first, last = series[ns[0]], series[ns[-1]]
    if last["ci"][0] > first["ci"][1]:
        return "rises"
    if last["ci"][1] < first["ci"][0]:
        return "falls"
    return "no change outside the intervals"


def _reading(table: dict) -> list[str]:
    """Measured statements on how each quality metric, the same metric from another identity's
    inputs, and their difference (the identity gain) move between the smallest and largest N."""
    lines = []
    for metric, unit in (("psnr", "dB"), ("iou", "")):
        own, other = table.get((*PRIMARY_CELL, metric)), table.get((*PRIMARY_CELL, f"{metric}_shuffled"))
        gain = table.get((*PRIMARY_CELL, f"identity_gain_{metric}"))
        if not (own and other and gain) or len(set(own) & set(other) & set(gain)) < 2:
            continue
        ns = sorted(set(own) & set(other) & set(gain))
        a, b = ns[0], ns[-1]
        low = min(ns, key=lambda n: own[n]["mean"])
        f = (lambda x: f"{x:.2f} dB") if unit else (lambda x: f"{x:.3f}")  # noqa: E731
        lines.append(f"* **{metric}** (self-reenactment, 4 views), N={a} → N={b}: own inputs {f(own[a]['mean'])} → "
                     f"{f(own[b]['mean'])} ({_trend(own)}; lowest {f(own[low]['mean'])} at N={low}); another identity's "
                     f"inputs {f(other[a]['mean'])} → {f(other[b]['mean'])} ({_trend(other)}); identity gain "
                     f"{gain[a]['mean']:+.3g} → {gain[b]['mean']:+.3g} ({_trend(gain)}).")
        if _trend(gain) == "rises" and _trend(own) != "rises":
            lines.append(f"  The identity gain rises while {metric} itself does not: at N={a} the prediction does not "
                         f"depend on the input (gain {gain[a]['mean']:+.3g}), i.e. the model renders one average head, "
                         f"and that average scores {f(other[a]['mean'])} on anybody; as N grows the prediction follows "
                         "the person in the photos — better for that person, worse for anybody else (the shuffled "
                         f"score goes {f(other[a]['mean'])} → {f(other[b]['mean'])}) — so the absolute {metric} moves "
                         "much less than what the model knows about identity.")
        elif _trend(own) == "falls" and _trend(gain) != "rises":
            lines.append(f"  {metric} falls for the own and the shuffled inputs alike (the identity gain does not rise): "
                         "what gets worse with N here does not depend on whose photos the model sees.")
    return ["", "## Reading", ""] + lines if lines else []


def build_report(study: Study, root: str, bootstrap: int = 1000) -> dict:
    """Read, aggregate and fit (no files written); see `write_report`."""
    pts = points(study)
    point_results = [read_point(root, p) for p in pts]
    table = aggregate(point_results, bootstrap)
    fitted: dict[str, dict | None] = {}
    for metric in FITTED:
        series = table.get((*PRIMARY_CELL, metric))
        fitted[metric] = _fit_cell(series, bootstrap) if series else None
    return {"points": point_results, "table": table, "fits": fitted,
            "convergence": convergence(point_results, study.convergence_psnr)}


def write_report(study: Study, root: str, bootstrap: int = 1000, out_dir: str | None = None) -> str:
    """Write report.md, results.json and the plots under `out_dir` (default ROOT/report); returns
    the markdown path."""
    out_dir = out_dir or os.path.join(root, "report")
    os.makedirs(out_dir, exist_ok=True)
    rep = build_report(study, root, bootstrap)
    point_results, table, fitted = rep["points"], rep["table"], rep["fits"]
    images = _plots(study, table, fitted, point_results, out_dir) if any(p["status"] == "finished"
                                                                          for p in point_results) else []

    # results.json: small, no per-identity arrays.
    cells = {"/".join(k): {str(n): {"mean": v["mean"], "ci": v["ci"], "seeds": v["seeds"]} for n, v in series.items()}
             for k, series in sorted(table.items())}
    results = finite_or_none({
        "study": study.to_dict(),
        "points": [{k: v for k, v in p.items() if k not in ("cells",)} for p in point_results],
        "metrics": cells,
        "fits": {k: (None if v is None else {kk: vv for kk, vv in v.items() if kk != "band"}) for k, v in fitted.items()},
        "fit_cell": "/".join(PRIMARY_CELL),
        "convergence": rep["convergence"],
    })
    write_atomic(os.path.join(out_dir, "results.json"),
                 json.dumps(results, indent=1, allow_nan=False, default=lambda x: None))

    md = [f"# Study {study.name}", "",
          f"Base `{study.base_config}`, compute `{study.compute}`, seeds {list(study.seeds)} "
          f"(N > {study.multi_seed_max_identities} first seed only)" if study.multi_seed_max_identities >= 0 else
          f"Base `{study.base_config}`, compute `{study.compute}`, seeds {list(study.seeds)}", ""]
    bad = [p for p in point_results if p["status"] != "finished"]
    md += ["## Points", "", "| point | N | seed | steps | status | train min | eval min | data share |",
           "|---|---|---|---|---|---|---|---|"]
    for p in point_results:
        share = "–" if p["data_share"] is None else f"{100 * p['data_share']:.0f}%"
        status = p["status"] + (f" ({p['reason']})" if p["reason"] else "")
        md.append(f"| {p['name']} | {p['identities']} | {p['seed']} | {p['last_step']}/{p['steps']} | {status} | "
                  f"{p['train_seconds'] / 60:.1f} | {p['eval_seconds'] / 60:.1f} | {share} |")
    if bad:
        md += ["", f"**{len(bad)} point(s) not in the tables and fits:** " +
               ", ".join(f"{p['name']} ({p['status']})" for p in bad)]
    md += ["", "## Held-out metrics against N", "",
           "Mean over held-out identities and seeds, [95% bootstrap interval]. *Identity gain* = the metric from "
           "the identity's own inputs minus the same targets predicted from another held-out identity's inputs.", ""]
    ns = sorted({n for series in table.values() for n in series})
    for mode, views, split in (PRIMARY_CELL, ("self", "1_views", "all"), ("self", "4_views", "side_back"),
                               ("self", "4_views", "marginal"), ("cross", "4_views", "all")):
        md += [f"### {mode}-reenactment, {views.replace('_', ' ')}, split `{split}`", "",
               "| N | " + " | ".join(SHOWN) + " |", "|---|" + "---|" * len(SHOWN)]
        for n in ns:
            row = []
            for metric in SHOWN:
                entry = table.get((mode, views, split, metric), {}).get(n)
                digits = 4 if metric.startswith(("mse", "one_minus", "ssim", "iou")) else 2
                row.append("–" if entry is None else _ci(entry, digits))
            md.append(f"| {n} | " + " | ".join(row) + " |")
        md.append("")
    md += ["## Trends (smallest vs largest N, self-reenactment, 4 views)", ""]
    for metric in SHOWN:
        series = table.get((*PRIMARY_CELL, metric))
        if series and len(series) >= 2:
            md.append(f"* `{metric}`: {_trend(series)}")
    md += _reading(table)
    md += ["", f"## Power-law fits y(N) = E + A·N^(−α) (cell {'/'.join(PRIMARY_CELL)})", "",
           "| metric | E [95%] | A | α [95%] | rmse | extrapolation: fit without largest N, predict it |", "|---|---|---|---|---|---|"]
    for metric, fit in fitted.items():
        if fit is None:
            md.append(f"| {metric} | not enough finished points (≥ 4 N needed) | | | | |")
        elif "error" in fit:
            md.append(f"| {metric} | fit failed: {fit['error']} | | | | |")
        else:
            ex = fit["extrapolation"]
            md.append(f"| {FITTED[metric]} | {fit['e']:.4g} [{fit['e_ci'][0]:.4g}, {fit['e_ci'][1]:.4g}] | {fit['a']:.3g} | "
                      f"{fit['alpha']:.2f} [{fit['alpha_ci'][0]:.2f}, {fit['alpha_ci'][1]:.2f}] | {fit['rmse']:.3g} | "
                      f"N={ex['held_out_n']:.0f}: predicted {ex['predicted']:.4g} [{ex['predicted_ci'][0]:.4g}, "
                      f"{ex['predicted_ci'][1]:.4g}], measured {ex['measured']:.4g} (error {ex['error']:+.3g}; "
                      f"{'inside' if ex['measured_inside_ci'] else 'outside'} the interval) |")
    md += ["", "## Convergence", "",
           f"Steps to first reach {study.convergence_psnr} dB held-out self-reenactment PSNR (evaluated every "
           "`train.eval_every` steps; – = not reached).", "", "| point | N | steps to threshold | final held-out PSNR |",
           "|---|---|---|---|"]
    for name, c in rep["convergence"].items():
        md.append(f"| {name} | {c['identities']} | {c['steps_to_threshold'] if c['steps_to_threshold'] else '–'} | "
                  f"{_fmt(c['final_psnr'])} |")
    md += [""] + [f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in images]
    path = os.path.join(out_dir, "report.md")
    write_atomic(path, "\n".join(md) + "\n")
    return path


__all__ = ["FITTED", "PRIMARY", "aggregate", "build_report", "convergence", "per_identity", "read_point", "write_report"]
