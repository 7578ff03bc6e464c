"""The distillation step: one or more frozen teachers (live or cached) teach a student."""
from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxkd import cache, losses
from jaxkd.augment import Augment
from jaxkd.parallel import Parallel
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
) -> Callable:
  """Builds the distillation step `(state, batch, teacher_variables) -> (state, metrics)`.

  The batch is augmented once and that same batch goes to every teacher and the student.
  Teachers run in inference mode under `stop_gradient`; gradients are w.r.t. the student's
  parameters only. `teacher_variables` is a separate argument (a tuple with one tree per
  teacher when there are several): never donated, never seen by the optimizer.

  With `cached=True` there is no live teacher: the batch carries the rows of a
  `jaxkd.cache.TeacherCache` (`teacher_logits` [B, C], or the top-k fields), `teachers`
  must be None and `teacher_variables` is passed as an empty tuple `()`.

  Args:
    student: the student Linen module (apply with `train=`, `rngs=`, `mutable=`).
    teachers: one teacher or a sequence (multi-teacher); Linen modules or apply functions.
    tx: the student's optimizer.
    objective: from `jaxkd.losses.make_objective`; called with a list of teacher logits.
    augment: random augmentation applied once inside the step.
    learning_rate_fn: schedule, logged as `learning_rate`.
    parallel: the data-parallel mode (jit over a mesh, pmap, shard_map).
    cached: train from cached teacher logits carried in the batch.

  Returns:
    The compiled step. Metrics: loss, each component's mean, accuracy, teacher accuracy,
    agreement (student/teacher top-1), grad_norm, learning_rate and the objective's weights.
  """
  complete_teacher = None
  if cached:
    if teachers is not None:
      raise ValueError('cached=True trains from batch["teacher_logits"]; pass teachers=None.')

    def teacher_fn(teacher_variables, images, batch):
      del teacher_variables, images
      if 'teacher_topk_logits' in batch:
        return cache.TopKRows.from_batch(batch)
      return [batch['teacher_logits'].astype(jnp.float32)]

    def complete_teacher(student_logits, outputs):
      if not isinstance(outputs, cache.TopKRows):
        return outputs  # full cached logits: already one list entry per teacher
      if callable(objective.temperature):
        raise ValueError('A top-k teacher cache needs a constant temperature.')
      return [outputs.logits_for(student_logits, temperature=objective.temperature)]
  else:
    if teachers is None:
      raise ValueError('No teachers given; pass teachers=... or cached=True.')
    multi = isinstance(teachers, (list, tuple))
    applies = [inference_apply(t) for t in (teachers if multi else [teachers])]
    if not applies:
      raise ValueError('teachers is an empty sequence; pass at least one teacher.')

    def teacher_fn(teacher_variables, images, batch):
      del batch
      variables = teacher_variables[0]
      if not multi:
        variables = [variables]
      if len(variables) != len(applies):
        raise ValueError(f'{len(applies)} teachers but {len(variables)} variable trees; pass '
                         f'teacher_variables as a tuple with one tree per teacher.')
      return [apply(v, images).astype(jnp.float32) for apply, v in zip(applies, variables)]

  update = build_update(model=student, tx=tx, objective=objective, augment=augment,
                        teacher_fn=teacher_fn, learning_rate_fn=learning_rate_fn,
                        complete_teacher=complete_teacher)
  return parallel.compile(update, num_step_args=1)
