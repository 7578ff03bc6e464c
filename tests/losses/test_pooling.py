"""Tests of jaxkd.losses.pooling."""
import jax
import numpy as np
import pytest

from jaxkd.losses import adaptive_avg_pool
from map_refs import _features, ref_adaptive_pool


def test_adaptive_avg_pool_matches_reference_and_torch_windows():
  x = _features(30, (2, 7, 6, 3))
  for out in [(4, 3), (1, 1), (7, 6), (3, 4), (8, 12)]:  # overlapping, global, identity, up
    got = jax.jit(adaptive_avg_pool, static_argnums=(1, 2))(x, *out)
    np.testing.assert_allclose(got, ref_adaptive_pool(x, *out), rtol=1e-5, atol=1e-6)
  # 7 -> 4: PyTorch's windows [0, 2), [1, 4), [3, 6), [5, 7).
  ramp = np.arange(7.0, dtype=np.float32).reshape(1, 7, 1, 1)
  pool = jax.jit(adaptive_avg_pool, static_argnums=(1, 2))
  np.testing.assert_allclose(pool(ramp, 4, 1).ravel(), [0.5, 2.0, 4.0, 5.5])
  with pytest.raises(ValueError, match='height'):
    adaptive_avg_pool(x, 0, 2)
