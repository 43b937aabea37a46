"""FlexAvatar's data-distribution adjustment: oversample frames close to expressive anchors.

Real (and our synthetic) video is dominated by neutral and talking frames, so a model trained on
uniformly sampled frames under-fits rare, extreme expressions. FlexAvatar fixes a set of expressive
*anchor* expressions, retrieves for every identity the frames whose expression codes are most
cosine-similar to each anchor, and oversamples them. Here an expression code is the expression
coefficients concatenated with the jaw and eye poses (scaled to comparable magnitude), so
jaw-driven anchors (jaw drop, yawn) are retrievable too.

Anchors: the named `motion.ANCHOR_EXPRESSIONS` for the procedural head (24), or, for data without
named components (e.g. FLAME sequences), `anchors_from_data`: farthest-point samples among the most
expressive frames.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from jaxtyping import Float

from flexavatar_jax.data import motion

# Radians of jaw/eye rotation that count as much as one unit of expression coefficient.
POSE_CODE_SCALE = 5.0


@dataclasses.dataclass(frozen=True)
class BalanceConfig:
    """`top_k` frames per anchor and identity are boosted to weight `1 + strength` (a frame picked
    by several anchors gets each boost); frames below `min_similarity` to an anchor are never
    picked for it. `enabled=False` gives uniform sampling (the ablation)."""

    enabled: bool = True
    top_k: int = 4
    strength: float = 8.0
    min_similarity: float = 0.3

    def __post_init__(self):
        if self.top_k < 1 or self.strength < 0:
            raise ValueError(f"BalanceConfig needs top_k >= 1 and strength >= 0, got {self.top_k}, {self.strength}")


def expression_codes(expression: Float[np.ndarray, "F E"], jaw_pose: Float[np.ndarray, "F 3"],
                     eyes_pose: Float[np.ndarray, "F 6"]) -> np.ndarray:
    """[F, E+9] codes compared by cosine similarity."""
    return np.concatenate([expression, POSE_CODE_SCALE * jaw_pose, POSE_CODE_SCALE * eyes_pose], -1).astype(np.float64)


def named_anchor_codes(expression_names: list[str]) -> np.ndarray:
    """[A, E+9] codes of the `motion.ANCHOR_EXPRESSIONS` for a head with these components."""
    rows = []
    for name in motion.ANCHOR_EXPRESSIONS:
        e, jaw, eyes = motion.anchor_vector(name, expression_names)
        rows.append(expression_codes(e[None], jaw[None], eyes[None])[0])
    return np.stack(rows)


def anchors_from_data(codes: Float[np.ndarray, "F D"], num_anchors: int = 24, quantile: float = 0.9) -> np.ndarray:
    """Data-driven anchors: farthest-point sampling (in cosine distance) among the frames whose
    code norm is above the `quantile`. Deterministic."""
    if len(codes) == 0:
        raise ValueError("anchors_from_data: no frames")
    norms = np.linalg.norm(codes, axis=1)
    pool = codes[norms >= np.quantile(norms, quantile)]
    unit = pool / np.maximum(np.linalg.norm(pool, axis=1, keepdims=True), 1e-12)
    chosen = [int(np.argmax(np.linalg.norm(pool, axis=1)))]
    dist = 1.0 - unit @ unit[chosen[0]]
    while len(chosen) < min(num_anchors, len(pool)):
        nxt = int(np.argmax(dist))
        chosen.append(nxt)
        dist = np.minimum(dist, 1.0 - unit @ unit[nxt])
    return pool[chosen]


def frame_weights(codes: Float[np.ndarray, "F D"], anchors: Float[np.ndarray, "A D"], config: BalanceConfig) -> np.ndarray:
    """Sampling weights [F] (unnormalised, >= 1) of one identity's frames."""
    codes = np.asarray(codes, np.float64)
    weights = np.ones(len(codes))
    if not config.enabled or len(codes) == 0:
        return weights
    if codes.shape[1] != anchors.shape[1]:
        raise ValueError(f"expression codes have {codes.shape[1]} dims but anchors {anchors.shape[1]}")
    unit = codes / np.maximum(np.linalg.norm(codes, axis=1, keepdims=True), 1e-12)
    anchor_unit = anchors / np.maximum(np.linalg.norm(anchors, axis=1, keepdims=True), 1e-12)
    sim = unit @ anchor_unit.T  # [F, A]
    k = min(config.top_k, len(codes))
    top = np.argsort(-sim, axis=0, kind="stable")[:k]  # [k, A]
    picked = np.take_along_axis(sim, top, axis=0) >= config.min_similarity
    np.add.at(weights, top[picked], config.strength)
    return weights


def sampling_probabilities(codes, anchors, config: BalanceConfig) -> np.ndarray:
    w = frame_weights(codes, anchors, config)
    return w / w.sum()
