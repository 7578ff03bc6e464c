"""Tests of jaxkd.losses.methods.sdd against independent NumPy float64 references."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxkd.losses import multiscale_pooled_features, sdd_loss
from map_refs import _features, _sdd_inputs, ref_multiscale, ref_sdd, ref_sdd_authors_masks


@pytest.mark.parametrize('shape, scales', [
    ((2, 8, 8, 3), (1, 2, 4)),
    ((2, 7, 7, 3), (1, 2, 4)),  # ImageNet-sized: overlapping 4x4 windows
    ((2, 4, 8, 3), (1, 2)),
    ((2, 7, 7, 3), (1, 2)),  # still through the 4x4 grid, as the authors' --M [1,2]
], ids=['8x8', '7x7', '4x8-12', '7x7-12'])
def test_multiscale_pooled_features_matches_reference(shape, scales):
  features = _features(80, shape)
  got = jax.jit(lambda f: multiscale_pooled_features(f, scales=scales))(features)
  n_cells = sum(s * s for s in scales)
  assert got.shape == (2, n_cells, 3) and got.dtype == jnp.float32
  np.testing.assert_allclose(got, ref_multiscale(features, scales), rtol=1e-5, atol=1e-6)


def test_multiscale_cell_order_and_global_cell():
  features = _features(81, (2, 8, 8, 3))
  got = jax.jit(multiscale_pooled_features)(features)
  np.testing.assert_allclose(got[:, 0], features.mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)
  # Cell 1 + 2 * 1 + 1 = 4 is the 2x2 grid's bottom-right; cell 5 + 4 + 2 = 11 is (1, 2) of 4x4.
  np.testing.assert_allclose(got[:, 4], features[:, 4:, 4:].mean(axis=(1, 2)), rtol=1e-5)
  np.testing.assert_allclose(got[:, 11], features[:, 2:4, 4:6].mean(axis=(1, 2)), rtol=1e-5)
  with pytest.raises(ValueError, match='scales'):
    multiscale_pooled_features(features, scales=(1, 1))
  with pytest.raises(ValueError, match='features'):
    multiscale_pooled_features(features[:, 0])


def test_sdd_loss_matches_references():
  student, teacher, labels = _sdd_inputs(90)
  got = jax.jit(lambda s, t, y: sdd_loss(s, t, y, temperature=4.0, complementary_weight=2.0))(
      student, teacher, labels)
  assert got.shape == (16,) and got.dtype == jnp.float32
  np.testing.assert_allclose(got, ref_sdd(student, teacher, labels, 4.0, 2.0), rtol=1e-5)
  authors, counts = ref_sdd_authors_masks(student, teacher, labels, 4.0, 2.0)
  assert all(c > 0 for c in counts)  # all four consistent/complementary cases occur
  np.testing.assert_allclose(jnp.mean(got), authors, rtol=1e-5)


def test_sdd_loss_rejects_bad_inputs():
  student, teacher, labels = _sdd_inputs(92)
  kw = dict(temperature=4.0, complementary_weight=2.0)
  with pytest.raises(ValueError, match='student_local_logits.*teacher_local_logits'):
    sdd_loss(student, teacher[:, :3], labels, **kw)
  with pytest.raises(ValueError, match='labels shape'):
    sdd_loss(student, teacher, labels[:3], **kw)
  with pytest.raises(ValueError, match='integer'):
    sdd_loss(student, teacher, labels.astype(np.float32), **kw)
  with pytest.raises(ValueError, match='cells'):
    sdd_loss(student[:, 0], teacher[:, 0], labels, **kw)
  with pytest.raises(ValueError, match='complementary_weight'):
    sdd_loss(student, teacher, labels, temperature=4.0, complementary_weight=-1.0)
  with pytest.raises(ValueError, match='temperature'):
    sdd_loss(student, teacher, labels, temperature=0.0, complementary_weight=2.0)
