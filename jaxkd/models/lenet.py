"""LeNet-5 and its half-width student (Nayak et al. 2019's Fashion-MNIST pair)."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxkd.models import layers


class LeNet5(nn.Module):
  """conv1 5x5 SAME -> ReLU -> pool1 -> conv2 5x5 VALID -> ReLU -> pool2 -> dense1, dense2, head.

  `filters` are the two conv widths, `dense` the two hidden dense widths; `pool` is `'max'`
  or `'avg'` (2x2, stride 2). No BatchNorm, no dropout.
  """

  num_classes: int
  filters: tuple[int, int] = (6, 16)
  dense: tuple[int, int] = (120, 84)
  pool: str = 'max'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images, *, train: bool = False):
    del train  # Same computation in both modes.
    if self.pool not in ('max', 'avg'):
      raise ValueError(f"Unknown pool {self.pool!r}; known: ['avg', 'max']")
    x = jnp.asarray(images, self.dtype)
    x = layers.conv(self.filters[0], 5, padding='SAME', use_bias=True, dtype=self.dtype,
                    name='conv1')(x)
    x = layers.Pool(self.pool, name='pool1')(nn.relu(x))
    x = layers.conv(self.filters[1], 5, padding='VALID', use_bias=True, dtype=self.dtype,
                    name='conv2')(x)
    x = layers.Pool(self.pool, name='pool2')(nn.relu(x))
    x = x.reshape((x.shape[0], -1))
    for i, width in enumerate(self.dense, start=1):
      x = nn.relu(layers.dense(width, dtype=self.dtype, name=f'dense{i}')(x))
    logits = layers.dense(self.num_classes, dtype=self.dtype, name='head')(x)
    return logits.astype(jnp.float32)
