"""The distillation step: one or more frozen teachers (live or cached) teach a student."""
from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxkd import cache, losses
from jaxkd.augment import Augment
from jaxkd.losses import chunked
from jaxkd.models.features import features
from jaxkd.parallel import Parallel
from jaxkd.state import (DistillState, TrainState, create_train_state, fresh_variables,
                         input_dtype, seed_keys)
from jaxkd.steps import build_update

# apply(variables, images) -> logits, in inference mode (no dropout, running BN statistics).
ApplyFn = Callable[[Any, jax.Array], jax.Array]


def inference_apply(model: nn.Module | ApplyFn) -> ApplyFn:
  """A teacher's pure inference function: Linen modules run with `train=False`.

  Anything else must already be a pure `apply(variables, images) -> logits` (an NNX model
  adapts with `flax.nnx.split` + `nnx.merge`, or `nnx.bridge.to_linen`).
  """
  if isinstance(model, nn.Module):
    return lambda variables, images: model.apply(variables, images, train=False)
  if callable(model):
    return model
  raise TypeError(f'A teacher must be a flax.linen.Module or an apply function, got {model!r}.')


def make_distill_step(
    *,
    student: nn.Module,
    teachers: nn.Module | ApplyFn | Sequence[nn.Module | ApplyFn] | None,
    tx: optax.GradientTransformation,
    objective: losses.Objective,
    augment: Augment = Augment(),
    learning_rate_fn: Callable | None = None,
    parallel: Parallel = Parallel(),
    cached: bool = False,
    vocab_chunk: int | None = None,
    wrap_update: Callable | None = None,
) -> Callable:
  """Builds the distillation step `(state, batch, teacher_variables) -> (state, metrics)`.

  The batch is augmented once and that same batch goes to every teacher and the student.
  Teachers run in inference mode under `stop_gradient`; gradients are w.r.t. the student's
  parameters only. `teacher_variables` is a separate argument (a tuple with one tree per
  teacher when there are several): never donated, never seen by the optimizer.

  With `cached=True` there is no live teacher: the batch carries the rows of a
  `jaxkd.cache.TeacherCache` (`teacher_logits` [B, C], or the top-k fields), `teachers`
  must be None and `teacher_variables` is passed as an empty tuple `()`. Terms that read
  teacher features are refused; from a top-k cache only `kd` at a constant temperature runs,
  and the teacher's accuracy and agreement come from its stored top-1.

  Args:
    student: the student Linen module (apply with `train=`, `rngs=`, `mutable=`).
    teachers: one teacher or a sequence (multi-teacher); Linen modules or apply functions.
    tx: the student's optimizer.
    objective: a `jaxkd.losses.Objective` (`make_objective`, `build_objective`): its terms
      read the student's and the teachers' logits and tapped features. A state from
      `create_distill_state` carries the parameters and state its terms own.
    augment: random augmentation applied once inside the step.
    learning_rate_fn: schedule, logged as `learning_rate`.
    parallel: the data-parallel mode (jit over a mesh, pmap, shard_map).
    cached: train from cached teacher logits carried in the batch.
    vocab_chunk: language models: compute the logit terms from both models' last hidden
      states this many positions at a time (`jaxkd.losses.chunked`), never holding their
      `[B, L, V]` logits; live teachers only, terms without taps.
    wrap_update: `wrap_update(update) -> update` around the per-device update before it is
      compiled (`jaxkd.on_policy.wrap_update`: the student's own samples as the batch).

  Returns:
    The compiled step. Metrics: loss, each component's mean, accuracy, teacher accuracy,
    agreement (student/teacher top-1), grad_norm, learning_rate and the objective's weights.
  """
  if cached and vocab_chunk:
    raise ValueError('vocab_chunk forms teacher logits from its hidden states; a cache holds '
                     'logits: distil from a live teacher, or leave vocab_chunk unset.')
  if cached:
    if teachers is not None:
      raise ValueError('cached=True trains from batch["teacher_logits"]; pass teachers=None.')
    check_cacheable(objective)

    def teacher_fn(teacher_variables, images, batch):
      del teacher_variables, images
      if 'teacher_topk_logits' in batch:
        return cache.TopKRows.from_batch(batch)
      return [losses.Outputs(batch['teacher_logits'].astype(jnp.float32))]

    def complete_teacher(student_logits, outputs):
      if not isinstance(outputs, cache.TopKRows):
        return outputs  # full cached logits: already one entry per teacher
      temperature = topk_temperature(objective)
      return [losses.Outputs(outputs.logits_for(student_logits, temperature=temperature),
                             top1=outputs.top1())]
  else:
    complete_teacher = None
    teacher_fn = live_teacher_fn(teachers, objective.teacher_taps, hidden=bool(vocab_chunk))

  update = build_update(model=student, tx=tx, objective=objective, augment=augment,
                        teacher_fn=teacher_fn, learning_rate_fn=learning_rate_fn,
                        complete_teacher=complete_teacher, vocab_chunk=vocab_chunk)
  if wrap_update is not None:
    update = wrap_update(update)
  return parallel.compile(update, num_step_args=1)


def check_cacheable(objective: losses.Objective) -> None:
  """Raises ValueError when `objective` reads teacher features: a cache holds logits only."""
  if objective.teacher_taps:
    raise ValueError(f'cached=True carries teacher logits only, but the objective reads '
                     f'teacher features at {list(objective.teacher_taps)}; distil from a '
                     'live teacher (no cache) for feature terms.')


def live_teacher_fn(teachers: nn.Module | ApplyFn | Sequence[nn.Module | ApplyFn] | None,
                    taps: Sequence[str], *, hidden: bool = False) -> Callable:
  """`teacher_fn(teacher_variables, images, batch) -> [Outputs]` running live teachers in
  inference mode; `teacher_variables[0]` is one tree, or a tuple of one per teacher when
  `teachers` is a sequence. `hidden`: language models' `chunked.Hidden` instead."""
  if teachers is None:
    raise ValueError('No teachers given; pass teachers=... or cached=True.')
  multi = isinstance(teachers, (list, tuple))
  forward = hidden_teacher_forward if hidden else lambda t: teacher_forward(t, taps)
  forwards = [forward(t) for t in (teachers if multi else [teachers])]
  if not forwards:
    raise ValueError('teachers is an empty sequence; pass at least one teacher.')

  def teacher_fn(teacher_variables, images, batch):
    del batch
    variables = teacher_variables[0]
    if not multi:
      variables = [variables]
    if len(variables) != len(forwards):
      raise ValueError(f'{len(forwards)} teachers but {len(variables)} variable trees; pass '
                       f'teacher_variables as a tuple with one tree per teacher.')
    return [forward(v, images) for forward, v in zip(forwards, variables)]

  return teacher_fn


def teacher_forward(model: nn.Module | ApplyFn, taps: Sequence[str]) -> Callable:
  """`forward(variables, images) -> Outputs` of a teacher in inference mode, with the
  features at `taps` (a Linen module's; an apply function has none to give)."""
  if not taps:
    apply = inference_apply(model)
    return lambda variables, images: losses.Outputs(apply(variables, images).astype(jnp.float32))
  if not isinstance(model, nn.Module):
    raise ValueError(f'The objective reads teacher features at {list(taps)}, which needs a '
                     f'flax.linen.Module teacher, got {model!r}.')

  def forward(variables, images):
    logits, feats = features(model, variables, images, taps, train=False)
    return losses.Outputs(logits.astype(jnp.float32), feats, variables=variables)

  return forward


def hidden_teacher_forward(model: nn.Module) -> Callable:
  """`forward(variables, tokens) -> chunked.Hidden` of a language model in inference mode."""
  if not isinstance(model, nn.Module):
    raise ValueError(f'vocab_chunk reads a teacher\'s hidden states: it must be a '
                     f'flax.linen.Module language model, got {model!r}.')
  return lambda variables, tokens: chunked.Hidden(*model.apply(variables, tokens, train=False,
                                                               method='hidden'))


def topk_temperature(objective: losses.Objective) -> float:
  """The constant temperature a top-k cache is completed at: the `kd` terms' (only KD runs
  from a top-k cache, whose rest-of-mass bucket is computed at one temperature)."""
  temperatures = set()
  for name, weight, term in objective.terms:
    if not term.needs_teacher or losses.is_constant_zero(weight):
      continue
    if not isinstance(term, losses.KD) or callable(term.temperature) or term.standardize:
      raise ValueError(f'Term {name!r} ({term.name}) cannot learn from a top-k teacher cache: '
                       'only kd at a constant temperature can; use a full-logit cache '
                       '(cache_topk=0) or a live teacher.')
    temperatures.add(float(term.temperature))
  if len(temperatures) != 1:
    raise ValueError(f'A top-k teacher cache holds one temperature; the kd terms use '
                     f'{sorted(temperatures)}.')
  return temperatures.pop()


def create_distill_state(
    student: nn.Module,
    tx: optax.GradientTransformation,
    objective: losses.Objective,
    *,
    teachers: Sequence[nn.Module | ApplyFn] | None,
    teacher_variables: Sequence[Any] | None,
    seed: int,
    input_shape,
    variables: dict | None = None,
) -> TrainState:
  """The student's train state for `objective`: a plain `TrainState` when no term owns
  anything, else a `DistillState` whose `loss_params` (in the optimizer beside the student's
  parameters) and `loss_state` the terms create from shapes (`jax.eval_shape`, no data).
  Loss parameters are initialised from `fold_in(init_key, 1)` of the run's `seed`."""
  if not objective.owns_variables:
    return create_train_state(student, tx, seed=seed, input_shape=input_shape,
                              variables=variables)
  if variables is None:
    variables = fresh_variables(student, seed=seed, input_shape=input_shape)
  images = jax.ShapeDtypeStruct(tuple(input_shape), input_dtype(student))
  student_shapes = jax.eval_shape(
      lambda v, x: losses.Outputs(*features(student, v, x, objective.student_taps))
      if objective.student_taps else losses.Outputs(student.apply(v, x, train=False)),
      variables, images)
  teacher_shapes = []
  for model, teacher_vars in zip(teachers or [], teacher_variables or []):
    forward = teacher_forward(model, objective.teacher_taps)
    teacher_shapes.append(jax.eval_shape(forward, teacher_vars, images))
  key = jax.random.fold_in(seed_keys(seed)[0], 1)
  loss_params, loss_state = jax.jit(objective.init)(key, student_shapes, teacher_shapes)
  base = create_train_state(student, tx, seed=seed, input_shape=input_shape, variables=variables)
  return DistillState(step=base.step, params=base.params, batch_stats=base.batch_stats,
                      opt_state=tx.init({'model': base.params, 'loss': loss_params}),
                      rng=base.rng, loss_params=loss_params, loss_state=loss_state)
