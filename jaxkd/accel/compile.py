"""The CPU compile function: `jax.jit` with XLA:CPU running convolutions on its own kernels.

XLA:CPU hands single dot products, float32 convolutions and reductions to the YNNPACK
library by default. `COMPILER_OPTIONS` keep the dot products and reductions there and run
the convolutions on XLA's own (Eigen) kernels, which are faster for the library's models
(docs/performance.md). Values may differ from a plain `jax.jit` by float round-off.

This file imports JAX alone: `jaxkd.serving` loads it beside itself, so a deployment that
copies `serving.py` copies this file too (`accel/compile.py`).
"""
from __future__ import annotations

import functools

import jax
import numpy as np

COMPILER_OPTIONS = {'xla_cpu_experimental_ynn_fusion_type':
                    'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE'}


@functools.cache
def options_supported() -> bool:
  """Whether this jaxlib's CPU compiler accepts `COMPILER_OPTIONS` (a newer one may not);
  probed once per process."""
  try:
    jax.jit(lambda x: x + 1).lower(np.float32(0)).compile(compiler_options=COMPILER_OPTIONS)
  except Exception:  # noqa: BLE001 - any refusal means: compile without them
    return False
  return True


def own_kernels() -> bool:
  """Whether `jit` compiles with `COMPILER_OPTIONS` here: on the CPU backend, where this
  jaxlib accepts them."""
  return jax.default_backend() == 'cpu' and options_supported()


def jit(fn, **jit_kwargs):
  """`jax.jit(fn, **jit_kwargs)`, with `COMPILER_OPTIONS` where `own_kernels()`."""
  if own_kernels():
    return jax.jit(fn, compiler_options=COMPILER_OPTIONS, **jit_kwargs)
  return jax.jit(fn, **jit_kwargs)


__all__ = ['COMPILER_OPTIONS', 'jit', 'options_supported', 'own_kernels']
