"""Step factories: one student update shared by supervised training, distillation and
fine-tuning, plus the eval step. Each factory returns one step, compiled once."""
from __future__ import annotations

from typing import Any, Callable, Protocol, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxkd import losses
from jaxkd.augment import Augment
from jaxkd.parallel import Parallel
from jaxkd.state import TrainState, model_variables, step_key

# teacher_fn(teacher_variables, images, batch) -> teacher logits (a list, one per teacher),
# or None when the objective needs no teacher.
TeacherFn = Callable[[Sequence[Any], jax.Array, dict], Sequence[jax.Array] | None]


class Objective(Protocol):
  """What a step minimises: `jaxkd.losses.Objective` (from `make_objective`) is one."""

  def __call__(self, student_logits: jax.Array, labels: jax.Array | None,
               teacher_logits: Sequence[jax.Array] | None, *,
               step: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """`(per-example total [B], {component name: [B]})` at training step `step`."""

  def hyperparams(self, step: jax.Array) -> dict[str, jax.Array]:
    """The current weights (and temperature), float32 scalars, logged every step."""


def _pmean(tree, axis_name):
  return tree if axis_name is None else jax.lax.pmean(tree, axis_name)


def build_update(
    *,
    model: nn.Module,
    tx: optax.GradientTransformation,
    objective: Objective,
    augment: Augment = Augment(),
    teacher_fn: TeacherFn | None = None,
    learning_rate_fn: Callable | None = None,
    complete_teacher: Callable | None = None,
    grad_filter: Callable | None = None,
) -> Callable:
  """The per-device student update `(state, batch, *teacher_variables, axis_name)`.

  Augments the batch once, runs the teachers (if any) on that same batch, differentiates
  the objective's batch mean w.r.t. the student's parameters only, and applies `tx`.
  `complete_teacher(student_logits, teacher_outputs) -> teacher logits`, when given, turns
  what `teacher_fn` returned into full teacher logits inside the loss (top-k caches).
  `grad_filter(grads, step) -> grads`, when given, runs before the cross-device mean and the
  optimizer (frozen parameters: zeros, so XLA drops their backward pass).
  Metrics are batch means (reduced over `axis_name` when given).
  """

  def update(state: TrainState, batch: dict, *teacher_variables, axis_name=None):
    augment_key, dropout_key = jax.random.split(step_key(state.rng, state.step))
    offset = 0
    if axis_name is not None:  # this shard's place in the global batch; its own dropout draw
      offset = jax.lax.axis_index(axis_name) * batch['label'].shape[0]
      dropout_key = jax.random.fold_in(dropout_key, jax.lax.axis_index(axis_name))
    images = augment(augment_key, batch['image'], index_offset=offset)
    labels = batch['label']
    teacher_logits = None
    if teacher_fn is not None:
      teacher_logits = jax.lax.stop_gradient(teacher_fn(teacher_variables, images, batch))

    def loss_fn(params):
      variables = model_variables(params, state.batch_stats)
      mutable = ['batch_stats'] if state.batch_stats else False
      out = model.apply(variables, images, train=True, rngs={'dropout': dropout_key},
                        mutable=mutable)
      logits, new_state = out if mutable else (out, {})
      teacher = teacher_logits
      if complete_teacher is not None:
        teacher = complete_teacher(logits, teacher_logits)
      per_example, components = objective(logits, labels, teacher, step=state.step)
      aux = (logits, teacher, components, new_state.get('batch_stats', {}))
      return jnp.mean(per_example), aux

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (loss, (logits, teacher_logits, components, batch_stats)), grads = grad_fn(state.params)
    if grad_filter is not None:
      grads = grad_filter(grads, state.step)
    grads = _pmean(grads, axis_name)
    batch_stats = _pmean(batch_stats, axis_name)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)

    predictions = jnp.argmax(logits, -1)
    metrics = {
        'loss': loss,
        **{f'{name}_loss': jnp.mean(value) for name, value in components.items()},
        'accuracy': jnp.mean(predictions == labels),
        'grad_norm': optax.tree.norm(grads),
    }
    if teacher_logits is not None:
      metrics.update(_teacher_metrics(teacher_logits, predictions, labels))
    metrics = _pmean(metrics, axis_name)
    if learning_rate_fn is not None:
      metrics['learning_rate'] = jnp.asarray(learning_rate_fn(state.step), jnp.float32)
    metrics.update({k: jnp.asarray(v, jnp.float32)
                    for k, v in objective.hyperparams(state.step).items()})
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                              opt_state=opt_state)
    return new_state, metrics

  return update


def _teacher_metrics(teacher_logits, predictions, labels) -> dict:
  """Teacher accuracy and student/teacher top-1 agreement (per teacher if several)."""
  metrics = {}
  for i, logits in enumerate(teacher_logits):
    suffix = '' if len(teacher_logits) == 1 else str(i)
    teacher_predictions = jnp.argmax(logits, -1)
    metrics[f'teacher{suffix}_accuracy'] = jnp.mean(teacher_predictions == labels)
    metrics[f'agreement{suffix}'] = jnp.mean(teacher_predictions == predictions)
  return metrics


def make_train_step(
    *,
    model: nn.Module,
    tx: optax.GradientTransformation,
    label_smoothing: float = 0.0,
    augment: Augment = Augment(),
    learning_rate_fn: Callable | None = None,
    parallel: Parallel = Parallel(),
) -> Callable:
  """Supervised step `(state, batch) -> (state, metrics)`, compiled once, donating state."""
  objective = losses.make_objective(hard_weight=1.0, soft_weight=0.0,
                                    label_smoothing=label_smoothing)
  update = build_update(model=model, tx=tx, objective=objective, augment=augment,
                        learning_rate_fn=learning_rate_fn)
  return parallel.compile(update)


def make_eval_step(*, model: nn.Module, num_classes: int,
                   parallel: Parallel = Parallel()) -> Callable:
  """Eval step `(variables, batch) -> sums`, compiled once, not donating.

  `batch` may carry a float `mask` [B] (0 for padding). Returns sums, so batches add up:
  `loss_sum`, `correct`, `count`, and per-class `class_correct`/`class_count` [C].
  """

  def evaluate(variables, batch, *, axis_name=None):
    logits = model.apply(variables, batch['image'], train=False)
    labels = batch['label']
    mask = batch.get('mask', jnp.ones(labels.shape, jnp.float32))
    correct = (jnp.argmax(logits, -1) == labels) * mask
    one_hot = jax.nn.one_hot(labels, num_classes) * mask[:, None]
    sums = {
        'loss_sum': jnp.sum(jnp.where(mask > 0, losses.cross_entropy(logits, labels), 0.0)),
        'correct': jnp.sum(correct),
        'count': jnp.sum(mask),
        'class_correct': jnp.sum(one_hot * correct[:, None], 0),
        'class_count': jnp.sum(one_hot, 0),
    }
    return sums if axis_name is None else jax.lax.psum(sums, axis_name)

  return parallel.compile(evaluate, donate=False)


def summarize_eval(sums: dict) -> dict:
  """Turns summed eval outputs (host values) into loss, accuracy and per-class accuracy."""
  count = max(float(sums['count']), 1.0)
  class_count = jnp.maximum(sums['class_count'], 1.0)
  return {
      'loss': float(sums['loss_sum']) / count,
      'accuracy': float(sums['correct']) / count,
      'count': int(sums['count']),
      'per_class_accuracy': [float(a) for a in sums['class_correct'] / class_count],
  }
