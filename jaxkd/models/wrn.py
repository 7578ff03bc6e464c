"""Wide ResNets WRN-depth-width (Zagoruyko & Komodakis 2016), pre-activation blocks.

Layout as in the CRD/DKD code bases: a 3x3 `stem` conv of 16 filters (no BN), three stages
of n = (depth-4)/6 blocks with 16k/32k/64k filters (strides 1, 2, 2), `final_bn` -> ReLU,
global average `pool` and a linear `head`. A block is BN-ReLU-conv3x3-BN-ReLU-[dropout]-
conv3x3; when its width or stride changes the shortcut is a 1x1 conv (no BN) applied to the
block's pre-activated input.

Paths: `stem`, `stage{1,2,3}/block{i}` (`bn1`, `conv1`, `bn2`, `dropout`, `conv2`,
`shortcut_conv`), `stage{1,2,3}/preact` (the stage's output, pre-ReLU), `final_bn`, `pool`
(the `[B, C]` embedding), `head`.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxkd.models import layers


class WideBlock(nn.Module):
  """Pre-activation basic block with optional dropout between its two convs."""

  features: int
  strides: int = 1
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    pre = nn.relu(layers.batch_norm(train=train, dtype=self.dtype, name='bn1')(x))
    if self.strides != 1 or x.shape[-1] != self.features:
      shortcut = layers.conv(self.features, 1, strides=self.strides, padding='VALID',
                             dtype=self.dtype, name='shortcut_conv')(pre)
    else:
      shortcut = x
    y = layers.conv(self.features, 3, strides=self.strides, padding=1, dtype=self.dtype,
                    name='conv1')(pre)
    y = nn.relu(layers.batch_norm(train=train, dtype=self.dtype, name='bn2')(y))
    if self.dropout_rate > 0:
      y = nn.Dropout(self.dropout_rate, name='dropout')(y, deterministic=not train)
    y = layers.conv(self.features, 3, padding=1, dtype=self.dtype, name='conv2')(y)
    return y + shortcut


class WideStage(nn.Module):
  """`num_blocks` wide blocks `block0`, `block1`, ...; the first one carries the stride.
  Pre-activation blocks end in a sum, so the stage's output is already pre-ReLU; `preact`
  taps it under the name every zoo CNN uses."""

  features: int
  num_blocks: int
  strides: int
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    for i in range(self.num_blocks):
      x = WideBlock(self.features, strides=self.strides if i == 0 else 1,
                    dropout_rate=self.dropout_rate, dtype=self.dtype,
                    name=f'block{i}')(x, train=train)
    return layers.Tap(name='preact')(x)


class WideResNet(nn.Module):
  """WRN-`depth`-`width`; `depth` = 6n + 4. `dropout_rate` applies inside every block."""

  num_classes: int
  depth: int = 16
  width: int = 1
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images, *, train: bool = False):
    if (self.depth - 4) % 6 or self.depth < 10:
      raise ValueError(f'WRN depth must be 6n + 4 with n >= 1, got {self.depth}')
    if self.width < 1:
      raise ValueError(f'WRN width must be >= 1, got {self.width}')
    num_blocks = (self.depth - 4) // 6
    x = jnp.asarray(images, self.dtype)
    x = layers.conv(16, 3, padding=1, dtype=self.dtype, name='stem')(x)
    for i, (base, strides) in enumerate(zip((16, 32, 64), (1, 2, 2)), start=1):
      x = WideStage(base * self.width, num_blocks, strides, dropout_rate=self.dropout_rate,
                    dtype=self.dtype, name=f'stage{i}')(x, train=train)
    x = nn.relu(layers.batch_norm(train=train, dtype=self.dtype, name='final_bn')(x))
    x = layers.GlobalAvgPool(name='pool')(x)
    logits = layers.dense(self.num_classes, dtype=self.dtype, name='head')(x)
    return logits.astype(jnp.float32)
