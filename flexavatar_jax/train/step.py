"""Train state, the losses of a batch, and the one pure `train_step(state, batch, key) -> (state, metrics)`.

The forward pass is `models.batch.forward`, the same path evaluation and refinement render through.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array

from flexavatar_jax.config import Config
from flexavatar_jax.models.avatar import FlexAvatar
from flexavatar_jax.models.batch import Batch, forward, target_params
from flexavatar_jax.models.uv_decoder import ATTRIBUTE_SLICES
from flexavatar_jax.train import losses as L


@flax.struct.dataclass
class TrainState:
    step: Array
    params: Any
    opt_state: Any
    ema_params: Any  # None when EMA is off
    nonfinite_skips: Array  # updates skipped because the loss or a gradient was NaN/Inf


def make_optimizer(cfg: Config, trainable: Callable[[Any], Any] | None = None
                   ) -> optax.GradientTransformation:
    """AdamW with linear warm-up + cosine decay, global-norm clipping, weight decay on matrices
    only; `trainable` (params -> bool tree) freezes the False leaves (refinement)."""
    t = cfg.train
    schedule = optax.warmup_cosine_decay_schedule(0.0, t.lr, max(t.warmup_steps, 1), max(t.steps, t.warmup_steps + 1),
                                                  end_value=t.lr * 0.01)
    decay_mask = lambda params: jax.tree.map(lambda x: x.ndim > 1, params)  # noqa: E731
    tx = optax.chain(optax.clip_by_global_norm(t.grad_clip),
                     optax.adamw(schedule, weight_decay=t.weight_decay, mask=decay_mask))
    if trainable is not None:
        tx = optax.multi_transform({True: tx, False: optax.set_to_zero()},
                                   lambda params: trainable(params))
    return tx


def create_state(system: FlexAvatar, tx: optax.GradientTransformation, key: Array, ema: bool) -> TrainState:
    """A fresh state with *boxed* params (logical names kept, for sharding plans); unbox it with
    `nn.meta.unbox` to train."""
    params = system.init(key)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      ema_params=params if ema else None, nonfinite_skips=jnp.zeros((), jnp.int32))


# ------------------------------------------------------------------------------------------- losses


def compute_losses(system: FlexAvatar, cfg: Config, params: Any, batch: Batch, step: Array,
                   perceptual: Callable | None = None, *, train: bool = True, detach_mouth: bool = False):
    """Weighted sum of the configured terms -> (loss, metrics dict of scalars)."""
    lc = cfg.loss
    w = {name: L.scheduled_weight(term, step) for name, term in lc.terms().items()}
    use_tv = lc.tv3d.weight > 0
    out = forward(system, params, batch, train=train, with_positions=use_tv)
    rgb, alpha = out["rgb"], out["alpha"]
    target, target_alpha = batch["target_images"], batch["target_alphas"]
    terms = dict(l1=L.l1(rgb, target), dssim=L.dssim(rgb, target), alpha=L.alpha_loss(alpha, target_alpha))
    if perceptual is not None and lc.perceptual.weight > 0:
        terms["perceptual"] = jnp.mean(perceptual(rgb.reshape(-1, *rgb.shape[2:]), target.reshape(-1, *target.shape[2:])))
    if lc.mouth.weight > 0:
        mask = L.mouth_boxes(system.head, target_params(batch), batch["target_viewmats"], batch["target_Ks"],
                              system.image_size)
        # Refinement detaches the mouth: its gradients would teach the reconstruction network
        # the input frames' mouth, which the frozen UNet is responsible for.
        mouth_pred = jax.lax.stop_gradient(rgb) if detach_mouth else rgb
        terms["mouth"] = L.mouth_loss(mouth_pred, target, mask, perceptual if lc.perceptual.weight > 0 else None)
    if use_tv:
        terms["tv3d"] = L.tv3d_loss(out["positions"], alpha)
    maps = out["maps"]
    static = out["avatar"].raw_maps
    act = system.activation
    valid = jnp.asarray(system.uv_valid[..., None], maps.dtype)
    terms["offset"] = L.offset_regularizer(act(static)["offsets"] * valid)
    deltas = (maps - static[:, None])[..., ATTRIBUTE_SLICES["offset"]] * act.offset_scale
    terms["position_deviation"] = L.offset_regularizer(deltas * valid)
    log_scale = maps[..., ATTRIBUTE_SLICES["scale"]]
    terms["scale_deviation"] = L.deviation_regularizer(log_scale * valid,
                                                       jnp.broadcast_to(jnp.log(act.init_scale) * valid, log_scale.shape))
    if out["predicted_shape"] is not None and lc.shape.weight > 0:
        terms["shape"] = jnp.mean((out["predicted_shape"] - batch["target_shape"][:, 0]) ** 2)
    if out["view_directions"] is not None and lc.view_pose.weight > 0:
        if "input_view_directions" not in batch:
            raise ValueError("loss.view_pose needs the batch's 'input_view_directions' (the input cameras' "
                             "directions, which the data pipeline adds); set loss.view_pose.weight=0 without them")
        terms["view_pose"] = L.view_pose_loss(out["view_directions"], batch["input_view_directions"],
                                              batch["input_mask"])
    if lc.lowres.weight > 0:
        low = forward(system, params, batch, train=train, image_size=system.image_size // 2, scale_K=0.5)
        terms["lowres"] = L.l1(low["rgb"], L.downsample(target, 2))
    loss = sum(w[k] * v for k, v in terms.items())
    metrics = {f"loss/{k}": v for k, v in terms.items()}
    metrics["loss/total"] = loss
    metrics["psnr"] = -10.0 * jnp.log10(jnp.maximum(jnp.mean((rgb - target) ** 2), 1e-10))
    return loss, metrics


# ------------------------------------------------------------------------------------------- step


def _tree_where(pred: Array, a: Any, b: Any) -> Any:
    return jax.tree.map(lambda x, y: jnp.where(pred, x, y), a, b)


def _split_microbatches(batch: Batch, n: int) -> Batch:
    def split(x):
        if x.shape[0] % n:
            raise ValueError(f"batch of {x.shape[0]} cannot be split into {n} gradient-accumulation steps")
        return x.reshape(n, x.shape[0] // n, *x.shape[1:])

    return jax.tree.map(split, batch)


def make_train_step(system: FlexAvatar, cfg: Config, tx: optax.GradientTransformation,
                    perceptual: Callable | None = None, *, detach_mouth: bool = False):
    """The pure step. `key` is folded with the step for any stochastic term (none today: the
    model is deterministic), so resumed runs replay exactly."""
    accum = int(cfg.train.grad_accum)
    ema_decay = float(cfg.train.ema_decay)

    def loss_fn(params, batch, step):
        return compute_losses(system, cfg, params, batch, step, perceptual, train=True, detach_mouth=detach_mouth)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def train_step(state: TrainState, batch: Batch, key: Array) -> tuple[TrainState, dict[str, Array]]:
        del key  # deterministic model; kept in the signature for stochastic extensions
        if accum == 1:
            (loss, metrics), grads = grad_fn(state.params, batch, state.step)
        else:
            def body(carry, micro):
                (l, m), g = grad_fn(state.params, micro, state.step)
                return jax.tree.map(jnp.add, carry, (l, m, g)), None

            zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(lambda: grad_fn(state.params, jax.tree.map(
                lambda x: x[0], _split_microbatches(batch, accum)), state.step)))
            zeros = (zeros[0][0], zeros[0][1], zeros[1])
            (loss, metrics, grads), _ = jax.lax.scan(body, zeros, _split_microbatches(batch, accum))
            loss, metrics, grads = jax.tree.map(lambda x: x / accum, (loss, metrics, grads))
        finite = jnp.isfinite(loss) & jnp.all(jnp.stack([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
        # A non-finite loss or gradient skips the update entirely (params, moments, EMA).
        safe_grads = jax.tree.map(lambda g: jnp.where(finite, g, 0.0), grads)
        updates, new_opt = tx.update(safe_grads, state.opt_state, state.params)
        new_params = optax.apply_updates(state.params, updates)
        params = _tree_where(finite, new_params, state.params)
        opt_state = _tree_where(finite, new_opt, state.opt_state)
        ema = state.ema_params
        if ema is not None:
            ema = _tree_where(finite, jax.tree.map(lambda e, p: ema_decay * e + (1 - ema_decay) * p, ema, params), ema)
        metrics = dict(metrics, grad_norm=optax.tree.norm(grads), finite=finite.astype(jnp.float32))
        new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema,
                               nonfinite_skips=state.nonfinite_skips + (~finite).astype(jnp.int32))
        return new_state, metrics

    return train_step
