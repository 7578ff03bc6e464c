"""A small VGG-style BatchNorm CNN: a Fashion-MNIST teacher with headroom over LeNet-5."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxkd.models import layers


class ConvNet(nn.Module):
  """Per width in `filters`: `block{i}` = conv 3x3 SAME -> BatchNorm -> ReLU -> 2x2 max pool;
  then flatten -> [dropout] -> `dense1` -> ReLU -> [dropout] -> `head`.

  Stage outputs are the module paths `block1`, `block2`, ...; `dense1` is the embedding.
  Dropout (rng stream `'dropout'`) is active only when `train=True`.
  """

  num_classes: int
  filters: tuple[int, ...] = (32, 64, 128)
  dense: int = 256
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images, *, train: bool = False):
    x = jnp.asarray(images, self.dtype)
    for i, width in enumerate(self.filters, start=1):
      x = _Block(width, dtype=self.dtype, name=f'block{i}')(x, train=train)
    x = x.reshape((x.shape[0], -1))
    if self.dropout_rate > 0:
      x = nn.Dropout(self.dropout_rate, name='dropout0')(x, deterministic=not train)
    x = nn.relu(layers.dense(self.dense, dtype=self.dtype, name='dense1')(x))
    if self.dropout_rate > 0:
      x = nn.Dropout(self.dropout_rate, name='dropout1')(x, deterministic=not train)
    logits = layers.dense(self.num_classes, dtype=self.dtype, name='head')(x)
    return logits.astype(jnp.float32)


class _Block(nn.Module):
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    x = layers.conv(self.features, 3, padding='SAME', dtype=self.dtype, name='conv')(x)
    x = nn.relu(layers.batch_norm(train=train, dtype=self.dtype, name='bn')(x))
    return layers.Pool('max', name='pool')(x)
