"""Self-distillation from an EMA teacher (mean teacher, Tarvainen & Valpola, NeurIPS 2017):
the teacher's variables are an exponential moving average of the student's.

After every student update ``theta_t``, the teacher becomes

    theta'_t = d_t * theta'_{t-1} + (1 - d_t) * theta_t,   d_t = min(decay, 1 - 1/(t + 1))

(the ramp-up of the authors' code, so an early teacher is not dominated by the random
initialisation; `ramp_up=False` keeps ``d_t = decay``). The average covers the parameters
and the BatchNorm statistics. The teacher starts as a copy of the student and lives in the
state beside it (`EmaState`), so a resumed run continues it exactly; the student's
parameters, export and fingerprint remain its own.
"""
from __future__ import annotations

from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxkd import losses
from jaxkd.augment import Augment
from jaxkd.distill import create_distill_state, live_teacher_fn
from jaxkd.parallel import Parallel
from jaxkd.state import DistillState, fresh_variables, model_variables
from jaxkd.steps import build_update

PyTree = Any


@flax.struct.dataclass
class EmaState(DistillState):
  """A distillation state whose teacher is the EMA of the student: `teacher_params` and
  `teacher_batch_stats` beside the student's, never trained by the optimizer."""

  teacher_params: PyTree
  teacher_batch_stats: PyTree

  @property
  def teacher_variables(self) -> dict:
    return model_variables(self.teacher_params, self.teacher_batch_stats)


def ema_decay(step: jax.typing.ArrayLike, *, decay: float, ramp_up: bool = True) -> jax.Array:
  """The decay applied after update `step` (0-based): ``min(decay, 1 - 1/(step + 1))`` with
  the mean teacher's ramp-up, else `decay`."""
  decay = jnp.asarray(decay, jnp.float32)
  if not ramp_up:
    return decay
  return jnp.minimum(decay, 1.0 - 1.0 / (jnp.asarray(step, jnp.float32) + 1.0))


def check_decay(decay: float) -> None:
  if not 0.0 <= decay < 1.0:
    raise ValueError(f'ema decay must be in [0, 1), got {decay!r}; the mean teacher uses '
                     '0.99-0.999.')


def create_ema_state(student: nn.Module, tx: optax.GradientTransformation,
                     objective: losses.Objective, *, seed: int, input_shape,
                     variables: dict | None = None) -> EmaState:
  """The student's state for `objective` with an EMA teacher that starts as the student."""
  if variables is None:
    variables = fresh_variables(student, seed=seed, input_shape=input_shape)
  base = create_distill_state(student, tx, objective, teachers=[student],
                              teacher_variables=[variables], seed=seed,
                              input_shape=input_shape, variables=variables)
  if not isinstance(base, DistillState):  # no term owns anything: empty loss variables
    base = DistillState(step=base.step, params=base.params, batch_stats=base.batch_stats,
                        opt_state=tx.init({'model': base.params, 'loss': {}}), rng=base.rng,
                        loss_params={}, loss_state={})
  copy = lambda tree: jax.tree.map(jnp.array, tree)  # noqa: E731  (the step donates the state)
  return EmaState(**{f: getattr(base, f) for f in base.__dataclass_fields__},
                  teacher_params=copy(base.params), teacher_batch_stats=copy(base.batch_stats))


def make_ema_distill_step(*, student: nn.Module, tx: optax.GradientTransformation,
                          objective: losses.Objective, decay: float, ramp_up: bool = True,
                          augment: Augment = Augment(),
                          learning_rate_fn: Callable | None = None,
                          parallel: Parallel = Parallel()) -> Callable:
  """The compiled step `(state: EmaState, batch) -> (state, metrics)`.

  The teacher (the state's EMA, in inference mode, under `stop_gradient`) teaches the
  student through `objective` (any terms of `jaxkd.losses.LOSSES` for one teacher; its
  taps are the student's own); then the EMA moves towards the updated student. Metrics are
  those of `make_distill_step` plus `ema_decay`.
  """
  check_decay(decay)
  inner = build_update(model=student, tx=tx, objective=objective, augment=augment,
                       teacher_fn=live_teacher_fn(student, objective.teacher_taps),
                       learning_rate_fn=learning_rate_fn)

  def update(state: EmaState, batch: dict, *, axis_name=None):
    new_state, metrics = inner(state, batch, state.teacher_variables, axis_name=axis_name)
    d = ema_decay(state.step, decay=decay, ramp_up=ramp_up)
    # d * teacher + (1 - d) * student: optax's `step_size * new + (1 - step_size) * old`
    # with the teacher first, the operand order (and so the rounding) the EMA always had.
    teacher = optax.incremental_update(
        state.teacher_variables, model_variables(new_state.params, new_state.batch_stats),
        step_size=d)
    return new_state.replace(teacher_params=teacher['params'],
                             teacher_batch_stats=teacher.get('batch_stats', {})), {
                                 **metrics, 'ema_decay': d}

  return parallel.compile(update)
