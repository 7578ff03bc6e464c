"""Fully connected ReLU networks (Hinton et al. 2015's MNIST teacher and student)."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxkd.models import layers


class MLP(nn.Module):
  """Flatten -> [dropout] -> (dense -> ReLU -> [dropout]) per hidden width -> `head`.

  Layers are `dense1`, `dense2`, ..., `head`; dropout modules are `input_dropout`,
  `dropout1`, ... Dropout is active only when `train=True` (rng stream `'dropout'`).
  """

  num_classes: int
  hidden: tuple[int, ...] = (800, 800)
  dropout_rate: float = 0.0
  input_dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images, *, train: bool = False):
    x = jnp.asarray(images, self.dtype).reshape((images.shape[0], -1))
    if self.input_dropout_rate > 0:
      x = nn.Dropout(self.input_dropout_rate, name='input_dropout')(x, deterministic=not train)
    for i, width in enumerate(self.hidden, start=1):
      x = nn.relu(layers.dense(width, dtype=self.dtype, name=f'dense{i}')(x))
      if self.dropout_rate > 0:
        x = nn.Dropout(self.dropout_rate, name=f'dropout{i}')(x, deterministic=not train)
    logits = layers.dense(self.num_classes, dtype=self.dtype, name='head')(x)
    return logits.astype(jnp.float32)
