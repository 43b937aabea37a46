"""`sweep report` of an ablation study: held-out metrics per variant and the papers' claims tested.

Per variant (seeds pooled): the metrics of `report.SHOWN` in the main cells, mean [95% bootstrap
interval over held-out identities and seeds]. Per claim (`Study.claims`): the difference a − b of
two cells (of one variant or two), its 95% interval from a *paired* bootstrap (the same resampled
held-out identities and seeds on both sides: every variant is scored on the same targets), and
whether it has the sign the paper reports: `yes` (interval on the expected side of 0), `no`
(interval on the other side), `not resolved` (interval contains 0). The input-view counts of the
baseline get a table of their own (every split), and the points of `Study.refine_variants` a
refinement table (PSNR before/after on novel views and unseen expressions, paired the same way).
A `findings.md` in the study root (what the person who ran it found, e.g. why a claim fails) is
appended to the report.
"""

from __future__ import annotations

import json
import os

import numpy as np

from flexavatar_jax.files import replacing, write_atomic
from flexavatar_jax.studies.report import SHOWN, _ci, _mean_ci, _quiet, read_point
from flexavatar_jax.studies.spec import Study, points
from flexavatar_jax.train.evaluate import finite_or_none

MAIN_CELLS = (("self", "4_views", "all"), ("self", "1_views", "all"), ("self", "4_views", "side_back"),
              ("self", "1_views", "side_back"), ("self", "4_views", "frontal"), ("self", "1_views", "frontal"),
              ("self", "4_views", "marginal"), ("cross", "4_views", "all"))
MAIN_METRICS = ("psnr", "identity_gain_psnr", "psnr_head", "psnr_mouth", "ssim", "iou", "depth_err_mm", "offset_mm")
VIEW_SPLITS = ("all", "frontal", "side_back", "ordinary", "marginal")
REFINE_SETS = ("novel_views", "unseen_expressions")


def parse_cell(text: str) -> tuple[str, tuple[str, str, str, str]]:
    """'variant:mode/views/split/metric' -> (variant, (mode, views, split, metric))."""
    variant, _, cell = text.partition(":")
    parts = tuple(cell.split("/"))
    if len(parts) != 4 or parts[3] not in SHOWN:
        raise ValueError(f"a claim cell is 'variant:mode/views/split/metric' with a metric of {SHOWN}, got {text!r}")
    return variant, parts


def variant_samples(point_results: list[dict]) -> dict[str, dict[int, dict]]:
    """`{variant: {seed: cells}}` of the finished points."""
    out: dict[str, dict[int, dict]] = {}
    for p in point_results:
        if p["status"] == "finished":
            out.setdefault(p["name"].rsplit("_seed", 1)[0], {})[p["seed"]] = p["cells"]
    return out


def stacked(by_seed: dict[int, dict], seeds: list[int], cell) -> np.ndarray | None:
    """[seeds, identities] values of a cell; None when a seed lacks it or it has no targets (an
    empty split)."""
    if not seeds or any(cell not in by_seed[s] for s in seeds):
        return None
    values = np.stack([by_seed[s][cell] for s in seeds])
    return None if np.all(np.isnan(values)) else values


def paired_difference(a: np.ndarray, b: np.ndarray, resamples: int, seed: int = 0) -> dict:
    """Mean of a − b ([seeds, identities] each, paired) with a paired 95% bootstrap interval."""
    rng = np.random.default_rng(seed)
    s, i = a.shape
    with _quiet():
        mean = float(np.nanmean(a) - np.nanmean(b))
        boots = []
        for _ in range(resamples):
            si, ii = rng.integers(0, s, s), rng.integers(0, i, i)
            boots.append(np.nanmean(a[si][:, ii]) - np.nanmean(b[si][:, ii]))
        return {"mean": mean, "ci": [float(np.nanpercentile(boots, 2.5)), float(np.nanpercentile(boots, 97.5))]}


def verdict(diff: dict, sign: str) -> str:
    lo, hi = diff["ci"]
    if lo > 0 or hi < 0:
        return "yes" if (lo > 0) == (sign == "+") else "no"
    return "not resolved"


def _mean_entry(values: np.ndarray, rng: np.random.Generator, bootstrap: int) -> dict:
    """`report._mean_ci` of [seeds, identities] values as a table entry."""
    mean, ci = _mean_ci(values, rng, bootstrap)
    return {"mean": mean, "ci": ci, "seeds": values.shape[0]}


def read_refinement(root: str, study: Study) -> dict[str, dict[int, dict[str, np.ndarray]]]:
    """`{variant: {seed: {"before/<set>": [I], "after/<set>": [I]}}}` from the refine.json of the
    finished points of `refine_variants` (identities in the order refine wrote them)."""
    out: dict[str, dict[int, dict[str, np.ndarray]]] = {}
    for p in points(study):
        if p.variant not in study.refine_variants:
            continue
        path = os.path.join(root, p.name, "refine.json")
        try:
            with open(path) as f:
                rows = json.load(f)["identities"]
            values = {f"{when}/{s}": np.array([r[f"psnr_{when}"][s] for r in rows], np.float64)
                      for when in ("before", "after") for s in REFINE_SETS}
        except (OSError, ValueError, KeyError, TypeError):
            continue
        out.setdefault(p.variant, {})[p.seed] = values
    return out


def _refinement_rows(refined: dict, bootstrap: int, rng: np.random.Generator) -> list[dict]:
    rows = []
    for variant, by_seed in refined.items():
        seeds = sorted(by_seed)
        sizes = {len(by_seed[s]["before/novel_views"]) for s in seeds}
        if len(sizes) != 1:
            continue  # seeds refined on different identity counts cannot be paired
        for s_name in REFINE_SETS:
            before = np.stack([by_seed[s][f"before/{s_name}"] for s in seeds])
            after = np.stack([by_seed[s][f"after/{s_name}"] for s in seeds])
            diff = paired_difference(after, before, bootstrap)
            rows.append({"variant": variant, "set": s_name, "seeds": seeds, "identities": int(before.shape[1]),
                         "before": _mean_entry(before, rng, bootstrap), "after": _mean_entry(after, rng, bootstrap),
                         "difference": diff, "matches": verdict(diff, "+")})
    return rows


def build_ablation(study: Study, root: str, bootstrap: int = 1000) -> dict:
    point_results = [read_point(root, p) for p in points(study)]
    samples = variant_samples(point_results)
    rng = np.random.default_rng(0)
    table: dict[str, dict[str, dict]] = {}
    baseline = study.variants[0][0]
    cells = list(MAIN_CELLS)
    for mode in ("self", "cross"):
        for views in ("1_views", "2_views", "4_views"):
            cells += [(mode, views, split) for split in VIEW_SPLITS if (mode, views, split) not in cells]
    for name, _ in study.variants:
        by_seed = samples.get(name, {})
        seeds = sorted(by_seed)
        for cell in (cells if name == baseline else MAIN_CELLS):
            for metric in MAIN_METRICS:
                values = stacked(by_seed, seeds, (*cell, metric))
                if values is None:
                    continue
                table.setdefault(name, {})["/".join((*cell, metric))] = _mean_entry(values, rng, bootstrap)
    claims = []
    for claim, a_text, b_text, sign, source in study.claims:
        (va, ca), (vb, cb) = parse_cell(a_text), parse_cell(b_text)
        seeds = sorted(set(samples.get(va, {})) & set(samples.get(vb, {})))
        a, b = stacked(samples.get(va, {}), seeds, ca), stacked(samples.get(vb, {}), seeds, cb)
        row = {"claim": claim, "a": a_text, "b": b_text, "expected": sign, "source": source, "seeds": seeds}
        if a is None or b is None:
            row.update(difference=None, matches="no data (variant unfinished, or the cell has no targets)")
        else:
            row["difference"] = paired_difference(a, b, bootstrap)
            row["matches"] = verdict(row["difference"], sign)
        claims.append(row)
    refinement = _refinement_rows(read_refinement(root, study), bootstrap, rng)
    for r in refinement:
        claims.append({"claim": f"refinement improves {r['set'].replace('_', ' ')}", "a": f"{r['variant']}:after",
                       "b": f"{r['variant']}:before", "expected": "+", "source": "FlexAvatar (refinement)",
                       "seeds": r["seeds"], "difference": r["difference"], "matches": r["matches"]})
    return {"points": point_results, "table": table, "claims": claims, "refinement": refinement}


def _forest_plot(claims: list[dict], path: str) -> str | None:
    rows = [c for c in claims if c["difference"] is not None]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.2))
    for k, c in enumerate(rows):
        d = c["difference"]
        color = {"yes": "C2", "no": "C3"}.get(c["matches"], "C7")
        # max(·, 0): a degenerate interval equals the mean up to rounding.
        ax.errorbar(d["mean"], k, xerr=[[max(d["mean"] - d["ci"][0], 0.0)], [max(d["ci"][1] - d["mean"], 0.0)]], fmt="o",
                    color=color, capsize=3)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(range(len(rows)), [f"{c['claim']} (expect {c['expected']})" for c in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("a − b with 95% paired bootstrap interval")
    # The key as the figure's title: as an axis label it ran past the figure's edge.
    fig.suptitle("green: the paper's sign · red: the opposite · grey: unresolved", fontsize=9)
    fig.tight_layout()
    with replacing(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return path


def write_ablation_report(study: Study, root: str, bootstrap: int = 1000, out_dir: str | None = None) -> str:
    out_dir = out_dir or os.path.join(root, "report")
    os.makedirs(out_dir, exist_ok=True)
    rep = build_ablation(study, root, bootstrap)
    plot = _forest_plot(rep["claims"], os.path.join(out_dir, "claims.png"))
    results = finite_or_none({"study": study.to_dict(), "variants": rep["table"], "claims": rep["claims"],
                              "refinement": rep["refinement"],
                              "points": [{k: v for k, v in p.items() if k != "cells"} for p in rep["points"]]})
    write_atomic(os.path.join(out_dir, "results.json"),
                 json.dumps(results, indent=1, allow_nan=False, default=lambda x: None))
    baseline = study.variants[0][0]
    md = [f"# Ablation study {study.name}", "", f"Base `{study.base_config}`, seeds {list(study.seeds)}, "
          f"baseline variant `{baseline}`. Mean [95% bootstrap interval over held-out identities and "
          "seeds].", "", "## Points", "", "| point | status | steps |", "|---|---|---|"]
    md += [f"| {p['name']} | {p['status']}{' (' + p['reason'] + ')' if p['reason'] else ''} | {p['last_step']}/{p['steps']} |"
           for p in rep["points"]]
    md += ["", "## Claims", "", "| claim | a | b | a − b [95%] | expected | matches paper? | source |",
           "|---|---|---|---|---|---|---|"]
    for c in rep["claims"]:
        diff = "–" if c["difference"] is None else _ci(c["difference"], 3)
        md.append(f"| {c['claim']} | `{c['a']}` | `{c['b']}` | {diff} | {c['expected']} | {c['matches']} | {c['source']} |")
    for cell in MAIN_CELLS:
        md += ["", f"## {cell[0]}-reenactment, {cell[1].replace('_', ' ')}, split `{cell[2]}`", "",
               "| variant | " + " | ".join(MAIN_METRICS) + " |", "|---|" + "---|" * len(MAIN_METRICS)]
        for name, _ in study.variants:
            entries = [rep["table"].get(name, {}).get("/".join((*cell, m))) for m in MAIN_METRICS]
            md.append(f"| {name} | " + " | ".join("–" if e is None else _ci(e, 4 if m in ("ssim", "iou") else 2)
                                                  for e, m in zip(entries, MAIN_METRICS)) + " |")
    md += ["", f"## Input views (`{baseline}`): PSNR by split", "",
           "| mode | views | " + " | ".join(VIEW_SPLITS) + " |", "|---|---|" + "---|" * len(VIEW_SPLITS)]
    for mode in ("self", "cross"):
        for views in ("1_views", "2_views", "4_views"):
            entries = [rep["table"].get(baseline, {}).get(f"{mode}/{views}/{split}/psnr") for split in VIEW_SPLITS]
            if any(e is not None for e in entries):
                md.append(f"| {mode} | {views.split('_')[0]} | " + " | ".join("–" if e is None else _ci(e, 2)
                                                                          for e in entries) + " |")
    if rep["refinement"]:
        md += ["", "## Refinement (held-out identities, PSNR dB, 4 input views)", "",
               "| variant | set | identities × seeds | before | after | after − before [95%] | improves? |",
               "|---|---|---|---|---|---|---|"]
        for r in rep["refinement"]:
            md.append(f"| {r['variant']} | {r['set'].replace('_', ' ')} | {r['identities']} × {len(r['seeds'])} | "
                      f"{_ci(r['before'], 2)} | {_ci(r['after'], 2)} | {_ci(r['difference'], 3)} | {r['matches']} |")
    if plot:
        md += ["", f"![claims]({os.path.basename(plot)})"]
    findings = os.path.join(root, "findings.md")
    if os.path.exists(findings):
        with open(findings) as f:
            md += ["", f.read().strip()]
    path = os.path.join(out_dir, "report.md")
    write_atomic(path, "\n".join(md) + "\n")
    return path


__all__ = ["MAIN_CELLS", "build_ablation", "paired_difference", "parse_cell", "read_refinement", "stacked",
           "variant_samples", "verdict", "write_ablation_report"]
