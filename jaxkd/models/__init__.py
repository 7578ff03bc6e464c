"""The model zoo: Flax Linen classifiers picked by name, all with one call convention.

    model = jaxkd.models.build('resnet20', num_classes=10)
    variables = model.init({'params': key}, images, train=False)
    logits = model.apply(variables, images, train=False)
    logits, updates = model.apply(variables, images, train=True,
                                  rngs={'dropout': key}, mutable=['batch_stats'])

Images are float NHWC `[B, H, W, C]`; logits are float32 `[B, num_classes]`. `train=True`
turns on dropout (rng stream `'dropout'`) and BatchNorm batch statistics (collection
`batch_stats`, present only in models with BatchNorm). The `dtype` override sets the
compute dtype (e.g. `jnp.bfloat16`); parameters are always float32. Every model's
classifier is the submodule `head`.
"""
from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxkd.models.convnet import ConvNet
from jaxkd.models.features import feature_paths
from jaxkd.models.features import features
from jaxkd.models.lenet import LeNet5
from jaxkd.models.mlp import MLP
from jaxkd.models.resnet import CifarResNet
from jaxkd.models.transformer import Transformer
from jaxkd.models.wrn import WideResNet

# The compute dtypes a model runs in (its `dtype` override); parameters stay float32.
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}

_p = functools.partial

MODELS: dict[str, Callable[..., nn.Module]] = {
    # Fully connected (Hinton et al. 2015): teacher with dropout, unregularized student.
    'mlp': MLP,
    'mlp_1200': _p(MLP, hidden=(1200, 1200), dropout_rate=0.5, input_dropout_rate=0.2),
    'mlp_800': _p(MLP, hidden=(800, 800)),
    # LeNet-5 and its half-width student (Nayak et al. 2019).
    'lenet5': _p(LeNet5, filters=(6, 16)),
    'lenet5_half': _p(LeNet5, filters=(3, 8)),
    'lenet5_mid': _p(LeNet5, filters=(4, 12)),  # an assistant between the two (Mirzadeh et al.)
    # A BatchNorm CNN with headroom over LeNet-5 on Fashion-MNIST (the headroom table's teacher).
    'convnet': ConvNet,
    'convnet_bn': _p(ConvNet, filters=(32, 64, 128), dense=256, dropout_rate=0.3),
    # CIFAR ResNets (He et al. 2016) as in the CRD / DKD repos.
    'resnet': CifarResNet,
    'resnet8': _p(CifarResNet, depth=8),
    'resnet14': _p(CifarResNet, depth=14),
    'resnet20': _p(CifarResNet, depth=20),
    'resnet32': _p(CifarResNet, depth=32),
    'resnet44': _p(CifarResNet, depth=44),
    'resnet56': _p(CifarResNet, depth=56),
    'resnet110': _p(CifarResNet, depth=110),
    'resnet8x4': _p(CifarResNet, depth=8, widths=(32, 64, 128, 256)),
    'resnet32x4': _p(CifarResNet, depth=32, widths=(32, 64, 128, 256)),
    # Wide ResNets (Zagoruyko & Komodakis 2016).
    'wrn': WideResNet,
    'wrn_16_1': _p(WideResNet, depth=16, width=1),
    'wrn_16_2': _p(WideResNet, depth=16, width=2),
    'wrn_40_1': _p(WideResNet, depth=40, width=1),
    'wrn_40_2': _p(WideResNet, depth=40, width=2),
    'wrn_28_10': _p(WideResNet, depth=28, width=10),
    # Decoder-only language models (docs/language-models.md); num_classes is the vocabulary.
    'transformer': Transformer,
    'lm_teacher': _p(Transformer, depth=4, width=192, heads=4),
    'lm_student': _p(Transformer, depth=2, width=128, heads=4),
}
LANGUAGE_MODELS = ('lm_student', 'lm_teacher', 'transformer')  # read int tokens [B, L]


def names() -> list[str]:
  """The registered model names, sorted."""
  return sorted(MODELS)


def _overridable(factory: Callable[..., nn.Module]) -> list[str]:
  """Keyword arguments a factory accepts besides `num_classes` (Flax's own fields excluded)."""
  params = inspect.signature(factory).parameters
  return sorted(set(params) - {'num_classes', 'parent', 'name'})


def build(name: str, *, num_classes: int, **overrides: Any) -> nn.Module:
  """The model registered as `name`, with `num_classes` outputs and field `overrides`.

  Args:
    name: a key of `MODELS`, e.g. `'resnet20'`, `'wrn_40_2'`, `'mlp_1200'`.
    num_classes: width of the `head` layer.
    **overrides: model fields, e.g. `dtype=jnp.bfloat16`, `depth=28, width=4` for `'wrn'`,
      `hidden=(512,)` for `'mlp'`, `pool='avg'` for `'lenet5'`.

  Raises:
    ValueError: unknown `name` or override; the message lists the valid ones.
  """
  if name not in MODELS:
    raise ValueError(f'Unknown model {name!r}; known models: {names()}')
  factory = MODELS[name]
  valid = _overridable(factory)
  unknown = sorted(set(overrides) - set(valid))
  if unknown:
    raise ValueError(f'Unknown override(s) {unknown} for model {name!r}; valid: {valid}')
  return factory(num_classes=num_classes, **overrides)


def param_count(params: Any) -> int:
  """Total number of scalars in a tree of arrays (or of `jax.ShapeDtypeStruct`s)."""
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(params))


__all__ = [
    'DTYPES',
    'LANGUAGE_MODELS',
    'MODELS',
    'CifarResNet',
    'ConvNet',
    'LeNet5',
    'MLP',
    'Transformer',
    'WideResNet',
    'build',
    'feature_paths',
    'features',
    'names',
    'param_count',
]
