"""Tests of jaxkd.losses.methods.ce against independent NumPy float64 references."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from classic_refs import _logits, np_cross_entropy
from jaxkd.losses import cross_entropy


@pytest.mark.parametrize('label_smoothing', [0.0, 0.1, 0.4])
@pytest.mark.parametrize('shape', [(8, 10), (3, 4, 10)], ids=['BC', 'ABC'])
def test_cross_entropy_matches_numpy(label_smoothing, shape):
  logits = _logits(16, shape)
  labels = np.random.default_rng(17).integers(0, shape[-1], shape[:-1])
  got = jax.jit(functools.partial(cross_entropy, label_smoothing=label_smoothing))(
      logits, labels)
  assert got.shape == shape[:-1] and got.dtype == jnp.float32
  np.testing.assert_allclose(got, np_cross_entropy(logits, labels, label_smoothing),
                             rtol=1e-5)


def test_cross_entropy_smoothing_matches_optax_convention():
  logits = _logits(18, (5, 6))
  labels = np.array([0, 1, 2, 3, 5])
  targets = optax.smooth_labels(jax.nn.one_hot(labels, 6), 0.3)
  np.testing.assert_allclose(cross_entropy(logits, labels, label_smoothing=0.3),
                             optax.losses.softmax_cross_entropy(logits, targets), rtol=1e-5)


def test_cross_entropy_out_of_range_labels_are_nan():
  logits = _logits(19, (4, 3))
  got = np.asarray(jax.jit(cross_entropy)(logits, np.array([0, 3, -1, 2])))
  assert np.isnan(got[1]) and np.isnan(got[2])
  np.testing.assert_allclose(got[[0, 3]], np_cross_entropy(logits[[0, 3]], [0, 2]), rtol=1e-5)
  # Masking with `where` keeps the batch finite.
  assert np.isfinite(jnp.sum(got, where=np.array([True, False, False, True])))


def test_cross_entropy_rejects_bad_inputs():
  logits = _logits(20, (2, 3))
  with pytest.raises(TypeError, match='labels'):
    cross_entropy(logits, np.array([0.0, 1.0]))
  with pytest.raises(ValueError, match='labels'):
    cross_entropy(logits, np.array([0, 1, 2]))
  with pytest.raises(ValueError, match='label_smoothing'):
    cross_entropy(logits, np.array([0, 1]), label_smoothing=1.5)
