"""The logit family as objective terms: each wraps a pure loss of `jaxkd.losses.logit` with
its hyper-parameters, its schedule (DKD's warm-up, CTKD's curriculum) and what it owns.

Every logit term takes `standardize=True` (logit standardisation, Sun et al. 2024: z-score
both logits before softening; `temperature` is then the base temperature) and, with several
teachers, adds the per-teacher losses with `teacher_weights` (normalised; equal when None).
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from jaxkd.losses.kd import kd_loss
from jaxkd.losses.logit import (dist_loss, dkd_loss, gradient_reversal, jsd_loss, nkd_loss,
                                reverse_kl_loss, ttm_loss, wttm_loss)
from jaxkd.losses.terms import Hyperparam, LogitTerm, validated


def _positive_int(name: str, value) -> None:
  if isinstance(value, bool) or not isinstance(value, int) or value < 0:
    raise ValueError(f'{name} must be a whole number of steps >= 0, got {value!r}.')


@dataclasses.dataclass(frozen=True)
class ReverseKL(LogitTerm):
  """``T^2 KL(p_s || p_t)``: mode-seeking distillation (`reverse_kl_loss`)."""

  temperature: Hyperparam = 1.0
  teacher_weights: tuple[float, ...] | None = None
  standardize: bool = False

  name = 'reverse_kl'

  def per_teacher(self, student_logits, teacher_logits, labels, temperature):
    return reverse_kl_loss(student_logits, teacher_logits, temperature=temperature)


@dataclasses.dataclass(frozen=True)
class JSD(LogitTerm):
  """Generalised Jensen-Shannon divergence (Agarwal et al. 2024, `jsd_loss`): the teacher
  has weight `mixing_weight` in the mixture; near 0 it is `kd` times that weight, near 1
  `reverse_kl` times one minus it."""

  temperature: Hyperparam = 1.0
  mixing_weight: float = 0.5
  teacher_weights: tuple[float, ...] | None = None
  standardize: bool = False

  name = 'jsd'

  def __post_init__(self):
    super().__post_init__()
    if not 0.0 < self.mixing_weight < 1.0:
      raise ValueError(f'mixing_weight must be in (0, 1), got {self.mixing_weight!r}.')

  def per_teacher(self, student_logits, teacher_logits, labels, temperature):
    return jsd_loss(student_logits, teacher_logits, temperature=temperature,
                    mixing_weight=self.mixing_weight)


@dataclasses.dataclass(frozen=True)
class DKD(LogitTerm):
  """Decoupled KD (Zhao et al. 2022, `dkd_loss`): target and non-target parts with their own
  weights, the whole term ramped in linearly over `warmup_steps` (the paper: 20 epochs)."""

  temperature: Hyperparam = 4.0
  target_weight: float = 1.0
  non_target_weight: float = 8.0
  warmup_steps: int = 0
  teacher_weights: tuple[float, ...] | None = None
  standardize: bool = False

  name = 'dkd'
  needs_labels = True

  def __post_init__(self):
    super().__post_init__()
    _positive_int('warmup_steps', self.warmup_steps)

  def warmup(self, step) -> jax.Array:
    """`min((step + 1) / warmup_steps, 1)`: the paper's epoch ramp, counted in steps."""
    if not self.warmup_steps:
      return jnp.ones((), jnp.float32)
    return jnp.minimum((jnp.asarray(step, jnp.float32) + 1.0) / self.warmup_steps, 1.0)

  def hyperparams(self, step, params=None):
    return {**super().hyperparams(step, params), 'warmup': self.warmup(step)}

  def per_teacher(self, student_logits, teacher_logits, labels, temperature):
    return dkd_loss(student_logits, teacher_logits, labels, temperature=temperature,
                    target_weight=self.target_weight, non_target_weight=self.non_target_weight)

  def __call__(self, student, teachers, batch, *, step, key, params, state, axis_name):
    value, parts, state = super().__call__(student, teachers, batch, step=step, key=key,
                                           params=params, state=state, axis_name=axis_name)
    ramp = self.warmup(step)
    return ramp * value, {k: ramp * v for k, v in parts.items()}, state


@dataclasses.dataclass(frozen=True)
class NKD(LogitTerm):
  """Normalized KD (Yang et al. 2023, `nkd_loss`): the teacher's target probability weighs the
  student's target log-probability; the non-target parts are matched after normalisation."""

  temperature: Hyperparam = 1.0
  non_target_weight: float = 1.5
  teacher_weights: tuple[float, ...] | None = None
  standardize: bool = False

  name = 'nkd'
  needs_labels = True

  def per_teacher(self, student_logits, teacher_logits, labels, temperature):
    return nkd_loss(student_logits, teacher_logits, labels, temperature=temperature,
                    non_target_weight=self.non_target_weight)


@dataclasses.dataclass(frozen=True)
class TTM(LogitTerm):
  """Transformed teacher matching (Zheng & Yang 2024, `ttm_loss`): only the teacher is
  softened (power transform ``gamma = 1 / temperature``); no ``T^2`` factor."""

  temperature: Hyperparam = 10.0
  teacher_weights: tuple[float, ...] | None = None
  standardize: bool = False

  name = 'ttm'

  def per_teacher(self, student_logits, teacher_logits, labels, temperature):
    return ttm_loss(student_logits, teacher_logits, temperature=temperature)


@dataclasses.dataclass(frozen=True)
class WTTM(TTM):
  """Weighted TTM (Zheng & Yang 2024, `wttm_loss`): each example's TTM weighted by the power
  sum of the teacher's probabilities (larger for less confident teachers)."""

  temperature: Hyperparam = 5.0

  name = 'wttm'

  def per_teacher(self, student_logits, teacher_logits, labels, temperature):
    return wttm_loss(student_logits, teacher_logits, temperature=temperature)


@dataclasses.dataclass(frozen=True)
class DIST(LogitTerm):
  """DIST (Huang et al. 2022, `dist_loss`): Pearson correlation of the softened predictions
  within each example (inter-class) and of each class across the batch (intra-class). The
  intra-class part relates the examples of a batch: one value per batch, computed on the
  global batch under every parallel mode."""

  temperature: Hyperparam = 1.0
  inter_weight: float = 1.0
  intra_weight: float = 1.0
  teacher_weights: tuple[float, ...] | None = None
  standardize: bool = False

  name = 'dist'
  per_example = False

  def per_teacher(self, student_logits, teacher_logits, labels, temperature):
    return dist_loss(student_logits, teacher_logits, temperature=temperature,
                     inter_weight=self.inter_weight, intra_weight=self.intra_weight)


@dataclasses.dataclass(frozen=True)
class CTKD(LogitTerm):
  """Curriculum temperature KD (Li et al. 2023): KD at a learnable global temperature
  ``T = min_temperature + temperature_range * sigmoid(theta)`` that plays against the student
  through a gradient reversal whose strength rises from 0 to `max_reversal` along a cosine
  over `curriculum_steps` (the paper: 10 epochs). `theta` is the term's trainable parameter
  (it starts at `initial_logit`; the paper's 1.0 gives T = 15.6)."""

  min_temperature: float = 1.0
  temperature_range: float = 20.0
  curriculum_steps: int = 0
  max_reversal: float = 1.0
  initial_logit: float = 1.0
  teacher_weights: tuple[float, ...] | None = None
  standardize: bool = False

  name = 'ctkd'
  owns_params = True

  def __post_init__(self):
    super().__post_init__()
    validated('min_temperature', self.min_temperature, positive=True)
    validated('temperature_range', self.temperature_range, positive=False)
    validated('max_reversal', self.max_reversal, positive=False)
    _positive_int('curriculum_steps', self.curriculum_steps)

  def init(self, key, student, teachers):
    del key, student, teachers
    return {'temperature_logit': jnp.asarray(self.initial_logit, jnp.float32)}, {}

  def reversal(self, step) -> jax.Array:
    """The curriculum: ``max_reversal * (1 - cos(pi * min(step / curriculum_steps, 1))) / 2``."""
    if not self.curriculum_steps:
      return jnp.asarray(self.max_reversal, jnp.float32)
    progress = jnp.minimum(jnp.asarray(step, jnp.float32) / self.curriculum_steps, 1.0)
    return self.max_reversal * (1.0 - jnp.cos(math.pi * progress)) / 2.0

  def temperature_of(self, theta: jax.Array, step) -> jax.Array:
    theta = gradient_reversal(theta, self.reversal(step))
    return self.min_temperature + self.temperature_range * jax.nn.sigmoid(theta)

  def hyperparams(self, step, params=None):
    values = {'reversal': self.reversal(step)}
    if params:
      values['temperature'] = self.temperature_of(params['temperature_logit'], step)
    return values

  def temperature_value(self, step, params):
    return self.temperature_of(params['temperature_logit'], step)

  def per_teacher(self, student_logits, teacher_logits, labels, temperature):
    return kd_loss(student_logits, teacher_logits, temperature=temperature)
