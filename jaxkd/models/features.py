"""Intermediate features by module path, read with Flax's `capture_intermediates`.

Models stay unchanged: any submodule's `__call__` output can be read by its path, e.g.
`'stem'`, `'stage2'`, `'stage3/block2'`, `'pool'` (the embedding) or `'head'`. Paths are
matched in full as regular expressions, so `'stage\\d'` reads all three stages.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

PyTree = Any


def _by_path(intermediates, prefix: tuple[str, ...] = ()) -> dict[str, tuple]:
  """Flattens an `intermediates` collection to `{'a/b': outputs}`, parents before children."""
  out = {}
  if '__call__' in intermediates and prefix:
    out['/'.join(prefix)] = tuple(intermediates['__call__'])
  for key, value in intermediates.items():
    if key != '__call__':
      out.update(_by_path(value, prefix + (key,)))
  return out


def feature_paths(model: nn.Module, images_shape: Sequence[int],
                  dtype: Any = jnp.float32) -> list[str]:
  """Every module path whose output `features` can return, parents before children.

  Args:
    model: a model from `jaxkd.models.build`.
    images_shape: `[B, H, W, C]`; only shapes are traced, nothing is computed.
    dtype: of the input (`jnp.int32` for a language model's tokens `[B, L]`).
  """
  finished = {}  # Path -> index, in the order the modules' calls returned.

  def record(module: nn.Module, method_name: str) -> bool:
    if method_name == '__call__' and module.path:
      finished.setdefault('/'.join(module.path), len(finished))
    return False

  def init(images):
    key = jax.random.key(0)
    return model.init({'params': key, 'dropout': key}, images, train=False,
                      capture_intermediates=record)

  jax.eval_shape(init, jax.ShapeDtypeStruct(tuple(images_shape), dtype))

  # A parent returns after its children; it goes just before its first-finished descendant.
  def preorder_key(path: str):
    first = min(i for p, i in finished.items() if p == path or p.startswith(path + '/'))
    return first, path.count('/')

  return sorted(finished, key=preorder_key)


def features(
    model: nn.Module,
    variables: PyTree,
    images: jax.Array,
    paths: str | Sequence[str],
    *,
    train: bool = False,
    rngs: Any = None,
    mutable: bool | str | Sequence[str] = False,
):
  """Runs `model` once and returns its logits and the outputs of the modules at `paths`.

  Args:
    model: a model from `jaxkd.models.build`.
    variables: `{'params': ..., ['batch_stats': ...]}`.
    images: `[B, H, W, C]` float images.
    paths: module paths (or full-match regexes) such as `'stage2'`, `'stage3/block2'`.
    train: as in `model.apply`; in train mode `batch_stats` are updated, and the updates
      are dropped unless `mutable` asks for them.
    rngs: as in `model.apply` (`{'dropout': key}` for dropout in train mode).
    mutable: as in `model.apply`; when set, returns `((logits, feats), updates)`.

  Returns:
    `(logits_BxC, {path: output})`, outputs in the model's compute dtype, in call order.
    A module called more than once maps to a tuple of its outputs.

  Raises:
    ValueError: a path matches no module; the message lists the available paths.
  """
  if isinstance(paths, str):
    paths = [paths]
  patterns = [re.compile(p) for p in paths]

  def wanted(module: nn.Module, method_name: str) -> bool:
    path = '/'.join(module.path)
    return method_name == '__call__' and bool(path) and any(p.fullmatch(path) for p in patterns)

  if mutable is True:
    requested, apply_mutable = None, True
  else:
    requested = [mutable] if isinstance(mutable, str) else list(mutable or [])
    apply_mutable = list(requested)
    # Train-mode BatchNorm writes its running statistics, so the collection must be mutable.
    if train and 'batch_stats' in variables and 'batch_stats' not in apply_mutable:
      apply_mutable.append('batch_stats')

  logits, state = model.apply(variables, images, train=train, rngs=rngs,
                              mutable=apply_mutable, capture_intermediates=wanted)
  state = dict(state)
  captured = _by_path(state.pop('intermediates', {}))
  missing = [p.pattern for p in patterns if not any(p.fullmatch(k) for k in captured)]
  if missing:
    available = feature_paths(model, images.shape, images.dtype)
    raise ValueError(f'No module at path(s) {missing}; available paths: {available}')
  feats = {path: outs[0] if len(outs) == 1 else outs for path, outs in captured.items()}
  if not mutable:
    return logits, feats
  updates = {k: v for k, v in state.items() if requested is None or k in requested}
  return (logits, feats), updates
