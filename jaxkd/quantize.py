"""Post-training int8 weights: per-output-channel symmetric quantization of kernels.

A kernel `w` (dense `[in, out]`, convolution `[kh, kw, cin, cout]`) becomes int8 values `q`
and one float32 scale per output channel (the last axis):

    scale_c = max |w[..., c]| / 127,    q = clip(round(w / scale), -127, 127),
    w ~ q * scale,                      |q * scale - w| <= scale / 2.

Activations, biases and BatchNorm parameters and statistics stay float. Leaves are named by
their '/'-joined variables path (`params/head/kernel`, see `jaxkd.paths`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxkd.paths import check_patterns, flatten, matches, path_str

PyTree = Any
LEVELS = 127  # symmetric: -127..127, so that -w quantizes to -q


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Int8Kernel:
  """A quantized kernel: int8 `values` of the kernel's shape, float32 `scale` `[out]`."""

  values: Any
  scale: Any

  def dequantize(self, dtype=jnp.float32):
    """`values * scale` in float32, then cast to `dtype`."""
    return (self.values.astype(jnp.float32) * self.scale.astype(jnp.float32)).astype(dtype)


def quantize_kernel(kernel: np.ndarray, *, path: str = 'kernel') -> Int8Kernel:
  """Per-output-channel symmetric int8 quantization of a float kernel (last axis = outputs).

  A channel of zeros gets scale 1 (its values are 0 either way).

  Raises:
    ValueError: `kernel` has fewer than 2 dimensions, is not floating point, or holds
      non-finite values.
  """
  kernel = np.asarray(kernel)
  if kernel.ndim < 2 or not np.issubdtype(kernel.dtype, np.floating):
    raise ValueError(
        f'Cannot quantize {path} ({kernel.dtype}{list(kernel.shape)}): int8 weights are '
        'per-output-channel kernels, float with ndim >= 2 (dense [in, out], conv '
        '[kh, kw, cin, cout]); biases and BatchNorm stay float.')
  kernel = kernel.astype(np.float32)
  if not np.all(np.isfinite(kernel)):
    raise ValueError(f'Cannot quantize {path}: it holds non-finite values.')
  max_abs = np.max(np.abs(kernel), axis=tuple(range(kernel.ndim - 1)))
  scale = np.where(max_abs > 0, max_abs / LEVELS, 1.0).astype(np.float32)
  values = np.clip(np.round(kernel / scale), -LEVELS, LEVELS).astype(np.int8)
  return Int8Kernel(values=values, scale=scale)


def kernel_paths(variables: PyTree) -> list[str]:
  """Paths of every quantizable leaf: a float `params/.../kernel` with ndim >= 2."""
  return sorted(path for path, leaf in flatten(variables).items()
                if path.startswith('params/') and path.endswith('/kernel')
                and np.ndim(leaf) >= 2 and np.issubdtype(np.asarray(leaf).dtype, np.floating))


def select(variables: PyTree, layers: bool | Sequence[str]) -> list[str]:
  """The paths `quantize` would turn into int8: all kernels (`True`), none (`False`), or
  those matching the `layers` regexes (`re.fullmatch` on the full path).

  Raises:
    ValueError: a pattern matches nothing, or matches a leaf that is not a kernel.
  """
  if layers is True:
    return kernel_paths(variables)
  if not layers:
    return []
  patterns = check_patterns(layers)
  flat = flatten(variables)
  unused = [p for p in patterns if not any(matches(path, (p,)) for path in flat)]
  if unused:
    raise ValueError(f'int8 layer pattern(s) {unused} match no variable; paths look like '
                     f'{kernel_paths(variables)[:3]}.')
  chosen = sorted(path for path in flat if matches(path, patterns))
  kernels = set(kernel_paths(variables))
  refused = [path for path in chosen if path not in kernels]
  if refused:
    raise ValueError(
        f'Cannot quantize {refused}: int8 weights are per-output-channel kernels '
        '(params/.../kernel, float, ndim >= 2); biases, BatchNorm scales and statistics '
        f'stay float. Quantizable here: {sorted(kernels)}.')
  return chosen


def quantize(variables: PyTree, layers: bool | Sequence[str] = True) -> tuple[PyTree, list[str]]:
  """`(variables with the selected kernels as Int8Kernel leaves, their paths)`.

  `layers`: see `select`. Other leaves are returned as they are.
  """
  chosen = set(select(variables, layers))

  def convert(key_path, leaf):
    path = path_str(key_path)
    return quantize_kernel(leaf, path=path) if path in chosen else leaf

  return jax.tree_util.tree_map_with_path(convert, variables), sorted(chosen)


def dequantize(variables: PyTree, dtype=jnp.float32) -> PyTree:
  """Every Int8Kernel leaf back to a `dtype` array; other leaves unchanged."""
  return jax.tree.map(lambda leaf: leaf.dequantize(dtype) if isinstance(leaf, Int8Kernel)
                      else leaf, variables, is_leaf=lambda leaf: isinstance(leaf, Int8Kernel))


__all__ = ['Int8Kernel', 'LEVELS', 'dequantize', 'kernel_paths', 'quantize', 'quantize_kernel',
           'select']
