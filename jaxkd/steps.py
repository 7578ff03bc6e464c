"""Step factories: one student update shared by supervised training, distillation and
fine-tuning, plus the eval step. Each factory returns one step, compiled once."""
from __future__ import annotations

import math
import re
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxkd import losses
from jaxkd.augment import Augment
from jaxkd.losses import chunked
from jaxkd.parallel import Parallel
from jaxkd.models.features import features
from jaxkd.state import DistillState, TrainState, model_variables, step_key

# teacher_fn(teacher_variables, images, batch) -> the teachers' outputs (a list of
# `losses.Outputs`, one per teacher, or what `complete_teacher` completes: top-k cache rows).
TeacherFn = Callable[[Sequence[Any], jax.Array, dict], Any]


def pmean(tree, axis_name: str | None):
  """`lax.pmean` over `axis_name` (identity under jit, where XLA reduces)."""
  return tree if axis_name is None else jax.lax.pmean(tree, axis_name)


def augmented_batch(state: TrainState, batch: dict, augment: Augment,
                    axis_name: str | None) -> tuple[dict, jax.Array]:
  """The step's batch, augmented once (each shard by its place in the global batch), and
  the step's dropout key (each shard its own draw)."""
  augment_key, dropout_key = jax.random.split(step_key(state.rng, state.step))
  offset = 0
  if axis_name is not None:
    offset = jax.lax.axis_index(axis_name) * batch['label'].shape[0]
    dropout_key = jax.random.fold_in(dropout_key, jax.lax.axis_index(axis_name))
  if 'image' not in batch:  # token batches: nothing to augment
    return batch, dropout_key
  return {**batch, 'image': augment(augment_key, batch['image'], index_offset=offset)}, dropout_key


def model_inputs(batch: dict) -> jax.Array:
  """What the model reads: `batch['image']`, or a language model's `batch['tokens']`."""
  return batch['image'] if 'image' in batch else batch['tokens']


def token_count(mask: jax.Array, axis_name: str | None) -> jax.Array:
  """`sum(mask)` over the global batch (summed over `axis_name`), float32, no gradient."""
  count = jax.lax.stop_gradient(jnp.sum(jnp.asarray(mask, jnp.float32)))
  return count if axis_name is None else jax.lax.psum(count, axis_name)


def batch_weights(shape, mask: jax.Array | None, axis_name: str | None) -> jax.Array:
  """The weights `batch_mean` gives each example (position): `sum(values * weights)` is
  this device's share of the global batch's mean."""
  if mask is None:
    return jnp.full(shape, 1.0 / math.prod(shape), jnp.float32)
  devices = 1 if axis_name is None else jax.lax.axis_size(axis_name)
  return jnp.asarray(mask, jnp.float32) * (devices / jnp.maximum(token_count(mask, axis_name),
                                                                 1.0))


# The metric a sequence batch's update adds: its global count of valid target tokens.
TOKENS = 'tokens'
_TOKEN_MEAN = re.compile(r'loss|.+_loss|accuracy|teacher\d*_accuracy|agreement\d*')


def is_token_mean(name: str) -> bool:
  """Whether the update's metric `name` is a per-token mean of a sequence batch
  (`batch_mean`): the loss, its components, the accuracies and the teacher agreement.
  Gradient norm, learning rate and hyper-parameters are per step."""
  return _TOKEN_MEAN.fullmatch(name) is not None


def batch_mean(values: jax.Array, mask: jax.Array | None, axis_name: str | None) -> jax.Array:
  """This device's share of the global batch's mean of `values`; its `pmean` over
  `axis_name` (and that of its gradient) is the global mean.

  Without a mask, the plain mean. With `mask` (a sequence batch's `[B, L]` weights: 0 at
  padding), the token-weighted mean `sum(values * mask) / sum(mask)` over the global batch:
  the count is summed over the devices (never a mean of per-device means, which would weigh
  a device's tokens by how few it holds), in float32."""
  if mask is None:
    return jnp.mean(values)
  return jnp.sum(values.astype(jnp.float32) * batch_weights(values.shape, mask, axis_name))


def hidden_forward(model: nn.Module) -> Callable:
  """`forward(variables, tokens, dropout_key) -> (chunked.Hidden, {})`: a language model's
  last hidden states and output embedding in train mode (no logits formed)."""

  def forward(variables, tokens, dropout_key):
    states, embedding = model.apply(variables, tokens, train=True,
                                    rngs={'dropout': dropout_key}, method='hidden')
    return chunked.Hidden(states, embedding), {}

  return forward


def student_forward(model: nn.Module, taps: Sequence[str]) -> Callable:
  """`forward(variables, images, dropout_key) -> (Outputs, new batch_stats)` in train mode,
  capturing the features at `taps` (none: a plain `apply`, nothing captured)."""

  def forward(variables, images, dropout_key):
    mutable = ['batch_stats'] if 'batch_stats' in variables else False
    rngs = {'dropout': dropout_key}
    if taps:
      out = features(model, variables, images, taps, train=True, rngs=rngs, mutable=mutable)
      (logits, feats), updates = out if mutable else (out, {})
    else:
      out = model.apply(variables, images, train=True, rngs=rngs, mutable=mutable)
      (logits, updates), feats = (out if mutable else (out, {})), {}
    # Terms that tap features may also read the student's variables (SDD's classifier).
    return (losses.Outputs(logits, feats, variables=variables if taps else None),
            updates.get('batch_stats', {}))

  return forward


def build_update(
    *,
    model: nn.Module,
    tx: optax.GradientTransformation,
    objective: losses.Objective,
    augment: Augment = Augment(),
    teacher_fn: TeacherFn | None = None,
    learning_rate_fn: Callable | None = None,
    complete_teacher: Callable | None = None,
    grad_filter: Callable | None = None,
    vocab_chunk: int | None = None,
) -> Callable:
  """The per-device student update `(state, batch, *teacher_variables, axis_name)`.

  Augments the batch once, runs the teachers (if any) on that same batch, differentiates
  the objective's batch mean w.r.t. the student's parameters (and the objective's own, in a
  `DistillState`: the optimizer sees `{'model': params, 'loss': loss_params}`), applies `tx`.
  `complete_teacher(student_logits, teacher_outputs) -> [Outputs]`, when given, turns what
  `teacher_fn` returned into full teacher outputs inside the loss (top-k caches).
  `grad_filter(grads, step) -> grads`, when given, runs before the cross-device mean and the
  optimizer (frozen parameters: zeros, so XLA drops their backward pass).
  Metrics are batch means (reduced over `axis_name` when given). A batch with a `mask`
  (language models: `tokens`, `label` and `mask`, each `[B, L]`) is reduced per token,
  `sum(value * mask) / sum(mask)` over the global batch (`batch_mean`), the loss as the
  metrics, which then hold the step's token count `tokens` (`is_token_mean` names the
  metrics the loop weighs by it). `vocab_chunk` (language models): the logit terms run from
  the last hidden states `vocab_chunk` positions at a time (`jaxkd.losses.chunked`);
  `teacher_fn` then gives `chunked.Hidden`s.
  """
  if vocab_chunk:
    chunked.check_objective(objective, vocab_chunk)
  forward = (hidden_forward(model) if vocab_chunk
             else student_forward(model, objective.student_taps))

  def update(state: TrainState, batch: dict, *teacher_variables, axis_name=None):
    check_images(model_inputs(batch))
    batch, dropout_key = augmented_batch(state, batch, augment, axis_name)
    images, mask = model_inputs(batch), batch.get('mask')
    mean = lambda values: batch_mean(values, mask, axis_name)  # noqa: E731
    teacher_outputs = None
    if teacher_fn is not None:
      teacher_outputs = jax.lax.stop_gradient(teacher_fn(teacher_variables, images, batch))
    distilling = isinstance(state, DistillState)
    trainable = {'model': state.params, 'loss': state.loss_params} if distilling else state.params

    def loss_fn(trainable):
      params, loss_params = ((trainable['model'], trainable['loss']) if distilling
                             else (trainable, None))
      student, batch_stats = forward(model_variables(params, state.batch_stats), images,
                                     dropout_key)
      teachers = teacher_outputs
      if complete_teacher is not None:
        teachers = complete_teacher(student.logits, teacher_outputs)
      ctx = losses.Context(student, teachers or (), batch, step=state.step, key=dropout_key,
                           params=loss_params or {},
                           state=state.loss_state if distilling else {}, axis_name=axis_name)
      if vocab_chunk:  # logits a chunk of positions at a time, never [B, L, V]
        weights = batch_weights(batch['label'].shape, mask, axis_name)
        loss, (components, stats) = chunked.weighted_sum_in_chunks(
            objective, student, ctx.teachers, batch, weights, chunk=vocab_chunk,
            step=ctx.step, key=ctx.key, params=ctx.params)
        loss_state, num_classes = ctx.state, student.embedding.shape[0]
      else:
        per_example, components, loss_state = objective.apply(ctx)
        loss, stats = mean(per_example), chunked.logit_stats(student.logits, ctx.teachers)
        num_classes = student.logits.shape[-1]
      labels = batch['label']
      stats['bad_label'] = (labels < 0) | (labels >= num_classes)
      return loss, (stats, components, batch_stats, loss_state)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (loss, (stats, components, batch_stats, loss_state)), grads = grad_fn(trainable)
    if grad_filter is not None:
      grads = grad_filter(grads, state.step)
    grads = pmean(grads, axis_name)
    batch_stats = pmean(batch_stats, axis_name)
    updates, opt_state = tx.update(grads, state.opt_state, trainable)
    trainable = optax.apply_updates(trainable, updates)

    metrics = {
        'loss': loss,
        **{f'{name}_loss': mean(value) for name, value in components.items()},
        'accuracy': mean(stats['prediction'] == batch['label']),
        'grad_norm': optax.tree.norm(grads),
    }
    metrics.update(numerics_checks(stats, teachers=teacher_fn is not None, inputs=images))
    if teacher_fn is not None:
      metrics.update(_teacher_metrics(stats, batch['label'], mean))
    if mask is not None:  # the loop weighs the per-token metrics of several steps by it
      metrics[TOKENS] = token_count(mask, axis_name)
    metrics = pmean(metrics, axis_name)
    if learning_rate_fn is not None:
      metrics['learning_rate'] = jnp.asarray(learning_rate_fn(state.step), jnp.float32)
    metrics.update({k: jnp.asarray(v, jnp.float32) for k, v in objective.hyperparams(
        state.step, trainable['loss'] if distilling else None).items()})
    new_state = state.replace(step=state.step + 1, batch_stats=batch_stats, opt_state=opt_state)
    if distilling:
      new_state = new_state.replace(params=trainable['model'], loss_params=trainable['loss'],
                                    loss_state=loss_state)
    else:
      new_state = new_state.replace(params=trainable)
    return new_state, metrics

  return update


def check_images(images: jax.Array) -> None:
  """Raises ValueError for integer images `[B, H, W, C]` (raw pixels): the steps take them
  normalized, as floats (`(x / 255 - mean) / std`; `jaxkd.data.InMemoryDataset` does it)."""
  if images.ndim == 4 and jnp.issubdtype(images.dtype, jnp.integer):
    raise ValueError(f'The step takes normalized float images; got {images.dtype} pixels '
                     f'{tuple(images.shape)}. Normalize them first, e.g. (x / 255 - mean) / std '
                     '(jaxkd.data.InMemoryDataset does it).')


CHECKS = {  # metric -> what it means when > 0, in the order a diagnosis names them
    'check_inputs': 'non-finite inputs (the batch holds NaN or infinite values: clean the data)',
    'check_labels': 'labels outside 0..num_classes-1 (the data or the class subset is wrong)',
    'check_teacher': 'non-finite teacher logits (the teacher is damaged or diverged)',
    'check_generation': "a failed generation of the student's own samples (a non-finite logit "
                        'while sampling, or no token generated: jaxkd.on_policy)',
}


def numerics_checks(stats: dict, *, teachers: bool,
                    inputs: jax.Array | None = None) -> dict[str, jax.Array]:
  """Fractions of the batch with a non-finite input, an out-of-range label, and (with
  `teachers`) a non-finite teacher logit, from `stats` (`bad_label` and `teacher<i>_finite`
  per example) and the model's `inputs`: zero in a sound run; the loop refuses to go on
  (`jaxkd.loop.check_numerics`) when not, naming the first (a NaN pixel makes the teacher's
  logits NaN too: the inputs are named, not the teacher). Each would otherwise pass
  silently: one-hot of a bad label is all zeros, and a NaN teacher can give a zero loss."""
  checks = {}
  if inputs is not None and jnp.issubdtype(inputs.dtype, jnp.floating):
    finite = jnp.isfinite(inputs).reshape(inputs.shape[0], -1)
    checks['check_inputs'] = jnp.mean(~jnp.all(finite, axis=-1))
  checks['check_labels'] = jnp.mean(stats['bad_label'])
  if teachers:
    bad = jnp.zeros(stats['bad_label'].shape, bool)
    for i in range(_num_teachers(stats)):
      bad |= ~stats[f'teacher{i}_finite']
    checks['check_teacher'] = jnp.mean(bad)
  return checks


def _num_teachers(stats: dict) -> int:
  return sum(key.endswith('_top1') for key in stats)


def _teacher_metrics(stats: dict, labels, mean=jnp.mean) -> dict:
  """Teacher accuracy and student/teacher top-1 agreement (per teacher if several), as
  `mean` reduces them."""
  metrics = {}
  count = _num_teachers(stats)
  for i in range(count):
    suffix = '' if count == 1 else str(i)
    teacher_predictions = stats[f'teacher{i}_top1']
    metrics[f'teacher{suffix}_accuracy'] = mean(teacher_predictions == labels)
    metrics[f'agreement{suffix}'] = mean(teacher_predictions == stats['prediction'])
  return metrics


def make_train_step(
    *,
    model: nn.Module,
    tx: optax.GradientTransformation,
    label_smoothing: float = 0.0,
    augment: Augment = Augment(),
    learning_rate_fn: Callable | None = None,
    parallel: Parallel = Parallel(),
    vocab_chunk: int | None = None,
) -> Callable:
  """Supervised step `(state, batch) -> (state, metrics)`, compiled once, donating state.
  `vocab_chunk`: a language model's cross-entropy from its hidden states, that many
  positions at a time (`jaxkd.losses.chunked`)."""
  objective = losses.make_objective(hard_weight=1.0, soft_weight=0.0,
                                    label_smoothing=label_smoothing)
  update = build_update(model=model, tx=tx, objective=objective, augment=augment,
                        learning_rate_fn=learning_rate_fn, vocab_chunk=vocab_chunk)
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
