"""CIFAR-style ResNets (He et al. 2016, Sec. 4.2) as used by the CRD and DKD code bases.

`resnet{8,14,20,32,44,56,110}`: a 3x3 stem of 16 filters, three stages of n = (depth-2)/6
basic blocks with 16/32/64 filters, global average pooling and a linear `head`.
`resnet8x4` / `resnet32x4` use 32 stem filters and 64/128/256 in the stages. A block's
shortcut is a 1x1 conv + BN when its shape changes (option B), the identity otherwise.

Paths: `stem` (`stem/conv`, `stem/bn`), `stage{1,2,3}/block{i}` (`conv1`, `bn1`, `conv2`,
`bn2`, `shortcut_conv`, `shortcut_bn`), `stage{1,2,3}/preact` (the last block's sum before
its ReLU; a parameter-free tap), `pool` (the `[B, C]` embedding), `head`.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxkd.models import layers


class BasicBlock(nn.Module):
  """conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut, then ReLU."""

  features: int
  strides: int = 1
  dtype: Any = jnp.float32
  preact_tap: nn.Module | None = None  # the stage's `preact` Tap, given to its last block

  @nn.compact
  def __call__(self, x, *, train: bool):
    # Explicit padding 1 (not 'SAME') so strided convs align with PyTorch's, as in ported weights.
    y = layers.conv(self.features, 3, strides=self.strides, padding=1, dtype=self.dtype,
                    name='conv1')(x)
    y = nn.relu(layers.batch_norm(train=train, dtype=self.dtype, name='bn1')(y))
    y = layers.conv(self.features, 3, padding=1, dtype=self.dtype, name='conv2')(y)
    y = layers.batch_norm(train=train, dtype=self.dtype, name='bn2')(y)
    shortcut = x
    if self.strides != 1 or x.shape[-1] != self.features:
      shortcut = layers.conv(self.features, 1, strides=self.strides, padding='VALID',
                             dtype=self.dtype, name='shortcut_conv')(x)
      shortcut = layers.batch_norm(train=train, dtype=self.dtype, name='shortcut_bn')(shortcut)
    y = y + shortcut
    return nn.relu(y if self.preact_tap is None else self.preact_tap(y))


class ResNetStage(nn.Module):
  """`num_blocks` basic blocks `block0`, `block1`, ...; the first one carries the stride.
  `preact` taps the last block's sum before its final ReLU (what OFD distils)."""

  features: int
  num_blocks: int
  strides: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    tap = layers.Tap(name='preact')
    for i in range(self.num_blocks):
      last = i == self.num_blocks - 1
      x = BasicBlock(self.features, strides=self.strides if i == 0 else 1, dtype=self.dtype,
                     preact_tap=tap if last else None, name=f'block{i}')(x, train=train)
    return x


class ResNetStem(nn.Module):
  """3x3 conv - BN - ReLU."""

  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    x = layers.conv(self.features, 3, padding=1, dtype=self.dtype, name='conv')(x)
    return nn.relu(layers.batch_norm(train=train, dtype=self.dtype, name='bn')(x))


class CifarResNet(nn.Module):
  """A CIFAR ResNet of `depth` = 6n + 2 layers; `widths` = (stem, stage1, stage2, stage3)."""

  num_classes: int
  depth: int = 20
  widths: tuple[int, int, int, int] = (16, 16, 32, 64)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images, *, train: bool = False):
    if (self.depth - 2) % 6 or self.depth < 8:
      raise ValueError(f'CIFAR ResNet depth must be 6n + 2 with n >= 1, got {self.depth}')
    if len(self.widths) != 4:
      raise ValueError(f'widths must be (stem, stage1, stage2, stage3), got {self.widths}')
    num_blocks = (self.depth - 2) // 6
    x = jnp.asarray(images, self.dtype)
    x = ResNetStem(self.widths[0], dtype=self.dtype, name='stem')(x, train=train)
    for i, (width, strides) in enumerate(zip(self.widths[1:], (1, 2, 2)), start=1):
      x = ResNetStage(width, num_blocks, strides, dtype=self.dtype, name=f'stage{i}')(
          x, train=train)
    x = layers.GlobalAvgPool(name='pool')(x)
    logits = layers.dense(self.num_classes, dtype=self.dtype, name='head')(x)
    return logits.astype(jnp.float32)
