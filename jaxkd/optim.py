"""Optimizers and learning-rate schedules by name."""
from __future__ import annotations

import warnings
from typing import Callable

import optax

SCHEDULES = ('constant', 'cosine', 'piecewise')
OPTIMIZERS = ('sgd', 'adam', 'adamw')


class SettingWarning(UserWarning):
  """A legal setting that is almost surely a mistake (shown once per place, as Python does)."""


def make_schedule(*, name: str, learning_rate: float, total_steps: int, warmup_steps: int = 0,
                  boundaries: tuple[float, ...] = (), decay_factor: float = 0.1) -> Callable:
  """A learning-rate schedule of the step.

  `piecewise` multiplies the rate by `decay_factor` at each boundary, given as a fraction of
  `total_steps` (e.g. the CIFAR recipe's 150/180/210 of 240 epochs is (0.625, 0.75, 0.875)).
  """
  if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
    raise ValueError(f'warmup_steps={warmup_steps!r}: give a whole number of steps >= 0.')
  if warmup_steps and warmup_steps >= total_steps:
    warnings.warn(
        f'warmup_steps={warmup_steps} is not shorter than the run ({total_steps} steps): the '
        f'learning rate only ever reaches {min(total_steps / warmup_steps, 1.0):.0%} of '
        f'learning_rate={learning_rate}. Shorten the warm-up or lengthen the run.',
        SettingWarning, stacklevel=2)
  if name == 'constant':
    schedule = optax.constant_schedule(learning_rate)
  elif name == 'cosine':
    schedule = optax.cosine_decay_schedule(learning_rate, max(total_steps - warmup_steps, 1))
  elif name == 'piecewise':
    schedule = optax.piecewise_constant_schedule(
        learning_rate, {int(b * total_steps): decay_factor for b in boundaries})
  else:
    raise ValueError(f'Unknown schedule {name!r}; choose one of {SCHEDULES}.')
  if warmup_steps:
    warmup = optax.linear_schedule(0.0, learning_rate, warmup_steps)
    schedule = optax.join_schedules([warmup, schedule], [warmup_steps])
  return schedule


def make_optimizer(*, name: str, learning_rate: Callable | float, momentum: float = 0.9,
                   nesterov: bool = False, weight_decay: float = 0.0, clip_norm: float = 0.0,
                   ) -> optax.GradientTransformation:
  """SGD (momentum, coupled L2 weight decay as in the CIFAR KD recipe), Adam or AdamW.

  `clip_norm` > 0 first rescales the gradient to that global norm at most (e.g. KD at T = 20,
  whose T^2-weighted soft loss can spike early on).
  """
  if name not in OPTIMIZERS:
    raise ValueError(f'Unknown optimizer {name!r}; choose one of {OPTIMIZERS}.')
  parts = [optax.clip_by_global_norm(clip_norm)] if clip_norm else []
  if name == 'adamw':
    return optax.chain(*parts, optax.adamw(learning_rate, weight_decay=weight_decay))
  if weight_decay:
    parts.append(optax.add_decayed_weights(weight_decay))
  if name == 'sgd':
    parts.append(optax.sgd(learning_rate, momentum=momentum or None, nesterov=nesterov))
  else:
    parts.append(optax.adam(learning_rate))
  return optax.chain(*parts)
