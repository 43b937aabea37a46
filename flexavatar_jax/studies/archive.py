"""`sweep archive` and `sweep restore`: a study's finished points without their checkpoints.

A long study outlives the machine it started on when that machine's disk does not last (a
preemptible cluster node, a session machine): `archive` copies, for every *complete* point (its
final evaluation written by the current evaluator, and its refinement if its variant refines),
the files that `sweep run` needs to skip it and `sweep report` needs to report it — `config.json`,
`eval.json` (gzipped: 1.4 MB of per-target scores at 128 held-out identities, 0.4 MB gzipped),
`eval_gain.json`, `metrics.jsonl` and `refine.json` — a few hundred kB per point where its
checkpoints are tens of MB. `restore` writes them back into a study root on another machine,
never over a point that is already there; `sweep run` then skips the restored points and trains
the rest, and `sweep report` reads them like any other.
"""

from __future__ import annotations

import gzip
import os
import shutil

from flexavatar_jax.files import write_atomic
from flexavatar_jax.studies.runner import awaits_refinement, point_status
from flexavatar_jax.studies.spec import Study, point_workdir, points

PLAIN_FILES = ("config.json", "eval_gain.json", "metrics.jsonl", "refine.json")
GZIPPED_FILES = ("eval.json",)


def _transfer(source: str, target: str, pack: bool) -> None:
    """The result files of one point from folder `source` to `target`: `PLAIN_FILES` (those
    present) as they are, `GZIPPED_FILES` gzipped (`pack`) or gunzipped."""
    for name in PLAIN_FILES:
        if os.path.exists(os.path.join(source, name)):
            shutil.copyfile(os.path.join(source, name), os.path.join(target, name))
    for name in GZIPPED_FILES:
        packed = name + ".gz"
        with open(os.path.join(source, name if pack else packed), "rb") as f:
            data = f.read()
        # mtime=0: the same point archives to the same bytes (no spurious diffs in git).
        write_atomic(os.path.join(target, packed if pack else name),
                     gzip.compress(data, mtime=0) if pack else gzip.decompress(data))


def archive(study: Study, root: str, out: str) -> dict[str, str]:
    """Copy every complete point's result files from `root` to `out/<point>/`. Returns
    `{point: "archived" | reason it was not}`; a point already archived is written again."""
    done = {}
    for point in points(study):
        status, reason = point_status(root, point)
        if status != "finished":
            done[point.name] = f"{status}: {reason}" if reason else status
            continue
        if awaits_refinement(study, root, point):
            done[point.name] = "finished but not refined yet (its variant refines)"
            continue
        target = os.path.join(out, point.name)
        os.makedirs(target, exist_ok=True)
        _transfer(point_workdir(root, point), target, pack=True)
        done[point.name] = "archived"
    return done


def restore(study: Study, archive_dir: str, root: str) -> dict[str, str]:
    """Write the archived points of `archive_dir` into `root`. Returns `{point: "restored" |
    reason it was not}` for the study's points; a point whose workdir already exists in `root`
    is left alone."""
    if not os.path.isdir(archive_dir):
        raise FileNotFoundError(f"no study archive at {archive_dir!r}")
    names = {p.name for p in points(study)}
    unknown = sorted(set(os.listdir(archive_dir)) - names)
    if unknown:
        raise ValueError(f"{archive_dir!r} holds points that study {study.name!r} does not have: {unknown}")
    done = {}
    for point in points(study):
        source = os.path.join(archive_dir, point.name)
        workdir = point_workdir(root, point)
        if not os.path.isdir(source):
            done[point.name] = "not in the archive"
            continue
        if os.path.exists(workdir):
            done[point.name] = f"left alone: {workdir} exists ({point_status(root, point)[0]})"
            continue
        missing = [n for n in ("eval_gain.json", "eval.json.gz") if not os.path.exists(os.path.join(source, n))]
        if missing:
            raise ValueError(f"archived point {source!r} lacks {missing}")
        staging = workdir + ".restoring"
        shutil.rmtree(staging, ignore_errors=True)
        os.makedirs(staging)
        _transfer(source, staging, pack=False)
        os.rename(staging, workdir)  # a point appears whole or not at all
        done[point.name] = "restored"
    return done


__all__ = ["GZIPPED_FILES", "PLAIN_FILES", "archive", "restore"]
