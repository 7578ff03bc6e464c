"""Tests of jaxkd.losses.methods.crd against independent NumPy float64 references."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from contrastive_refs import (_normal, _setup, _unit, ref_crd, ref_embed, ref_nce, ref_scores,
                              ref_update)
from jaxkd.losses import (build_class_index_table, check_memory_bank_fits, contrast_scores,
                          crd_embed, CRD_EMBED_DIM, crd_loss, crd_loss_with_normalisers,
                          CRD_MOMENTUM, CRD_NUM_NEGATIVES, CRD_TEMPERATURE, estimate_normaliser,
                          init_memory_bank, memory_bank_bytes, nce_loss, normalise_scores,
                          sample_contrast_indices, sample_other_class_contrast_indices,
                          UNSET_NORMALISER, update_memory_bank)


def test_authors_defaults():
  assert (CRD_EMBED_DIM, CRD_NUM_NEGATIVES, CRD_TEMPERATURE, CRD_MOMENTUM) == (128, 16384,
                                                                              0.07, 0.5)
  assert UNSET_NORMALISER < 0


def test_crd_embed_matches_reference():
  features, kernel, bias = _normal(0, (4, 2, 3, 2)), _normal(1, (12, 5)), _normal(2, (5,))
  got = jax.jit(crd_embed)(features, kernel, bias)
  assert got.shape == (4, 5) and got.dtype == jnp.float32
  np.testing.assert_allclose(got, ref_embed(features, kernel, bias), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(jnp.linalg.norm(got, axis=-1), 1.0, rtol=1e-6)
  bf16 = crd_embed(jnp.asarray(features, jnp.bfloat16), kernel, bias)
  assert bf16.dtype == jnp.float32


def test_crd_embed_zero_vector_has_zero_gradient():
  features = np.zeros((2, 3), np.float32)
  features[1] = [1.0, 2.0, -1.0]
  kernel, bias = _normal(3, (3, 4)), np.zeros(4, np.float32)
  out = crd_embed(features, kernel, bias)
  np.testing.assert_array_equal(out[0], 0.0)
  weights = jnp.arange(4.0)
  grad_f, grad_k, grad_b = jax.jit(jax.grad(
      lambda f, k, b: jnp.sum(crd_embed(f, k, b) * weights), argnums=(0, 1, 2)))(features, kernel,
                                                                                bias)
  for g in (grad_f, grad_k, grad_b):
    assert np.all(np.isfinite(g))
  np.testing.assert_array_equal(grad_f[0], 0.0)
  assert np.any(grad_f[1] != 0)


def test_crd_embed_rejects_bad_shapes():
  with pytest.raises(ValueError, match='kernel'):
    crd_embed(_normal(0, (4, 6)), _normal(1, (5, 3)), _normal(2, (3,)))
  with pytest.raises(ValueError, match='bias'):
    crd_embed(_normal(0, (4, 6)), _normal(1, (6, 3)), _normal(2, (4,)))


def test_init_memory_bank_authors_uniform():
  bank = init_memory_bank(jax.random.key(0), 4000, 48)
  stdv = 1 / np.sqrt(48 / 3)
  assert bank.shape == (4000, 48) and bank.dtype == jnp.float32
  assert float(bank.min()) >= -stdv and float(bank.max()) <= stdv
  assert float(bank.min()) < -0.99 * stdv and float(bank.max()) > 0.99 * stdv
  # Entry variance 1/d: rows have mean squared norm 1.
  np.testing.assert_allclose(np.mean(np.sum(np.asarray(bank, np.float64)**2, axis=1)), 1.0,
                             rtol=0.01)
  np.testing.assert_array_equal(bank, init_memory_bank(jax.random.key(0), 4000, 48))
  assert not np.array_equal(bank, init_memory_bank(jax.random.key(1), 4000, 48))
  with pytest.raises(ValueError, match='embed_dim'):
    init_memory_bank(jax.random.key(0), 10, 0)
  with pytest.raises(ValueError, match='num_data'):
    init_memory_bank(jax.random.key(0), 10.0, 4)


def test_update_memory_bank_exact():
  bank = _normal(5, (10, 4))
  indices = np.array([7, 2, 9], np.int32)
  embeddings = _unit(6, (3, 4))
  got = jax.jit(lambda b, i, e: update_memory_bank(b, i, e, momentum=0.5))(bank, indices,
                                                                          embeddings)
  assert got.shape == bank.shape and got.dtype == jnp.float32
  want = ref_update(bank, indices, embeddings, 0.5)
  np.testing.assert_allclose(got[indices], want[indices], rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(jnp.linalg.norm(got[indices], axis=-1), 1.0, rtol=1e-6)
  untouched = np.setdiff1d(np.arange(10), indices)
  np.testing.assert_array_equal(got[untouched], bank[untouched])  # bit-identical
  # A traced momentum works too: 0 writes the embeddings themselves; 1 renormalises the
  # old rows.
  traced = jax.jit(lambda m: update_memory_bank(bank, indices, embeddings, momentum=m)[indices])
  np.testing.assert_allclose(traced(0.0), embeddings, rtol=1e-6)
  np.testing.assert_allclose(
      traced(1.0), bank[indices] / np.linalg.norm(bank[indices], axis=-1, keepdims=True),
      rtol=1e-6)
  # No gradient reaches the embeddings.
  grad = jax.jit(jax.grad(
      lambda e: jnp.sum(update_memory_bank(bank, indices, e, momentum=0.3))))(embeddings)
  np.testing.assert_array_equal(grad, 0.0)
  with pytest.raises(ValueError, match='momentum'):
    update_memory_bank(bank, indices, embeddings, momentum=1.5)


def test_sample_contrast_indices_exact():
  indices = np.array([3, 0, 9, 4], np.int32)
  sample = jax.jit(lambda k, i: sample_contrast_indices(k, i, num_data=10, num_negatives=6))
  got = sample(jax.random.key(0), indices)
  assert got.shape == (4, 7) and got.dtype == jnp.int32
  np.testing.assert_array_equal(got[:, 0], indices)
  assert got.min() >= 0 and got.max() < 10
  np.testing.assert_array_equal(got, sample(jax.random.key(0), indices))
  assert not np.array_equal(got, sample(jax.random.key(1), indices))
  np.testing.assert_array_equal(got[:, 0], sample(jax.random.key(1), indices)[:, 0])


def test_sample_contrast_indices_uniform_with_replacement():
  draw = sample_contrast_indices(jax.random.key(2), jnp.zeros(50, jnp.int32), num_data=10,
                                 num_negatives=2000)
  counts = np.bincount(np.asarray(draw[:, 1:]).ravel(), minlength=10)
  assert counts.sum() == 100_000
  # Each of the 10 values ~ Binomial(100000, 0.1): sd ~ 95; allow ~5 sd.
  assert np.all(np.abs(counts - 10_000) < 500), counts
  # With replacement: a negative may equal the positive (index 0 here).
  assert np.any(np.asarray(draw[:, 1:]) == 0)


def test_sample_contrast_indices_rejects_bad_settings():
  with pytest.raises(ValueError, match='num_negatives'):
    sample_contrast_indices(jax.random.key(0), jnp.zeros(3, jnp.int32), num_data=5,
                            num_negatives=0)
  with pytest.raises(ValueError, match='num_data'):
    sample_contrast_indices(jax.random.key(0), jnp.zeros(3, jnp.int32), num_data=0,
                            num_negatives=2)
  with pytest.raises(ValueError, match='indices'):
    sample_contrast_indices(jax.random.key(0), jnp.zeros((3, 1), jnp.int32), num_data=5,
                            num_negatives=2)


def test_sample_other_class_contrast_indices():
  dataset_labels = np.array([2, 0, 1, 2, 0, 2, 1, 1, 2, 0, 2, 2], np.int32)  # 12 examples
  table = build_class_index_table(dataset_labels)
  indices = np.array([0, 1, 2, 4], np.int32)
  labels = dataset_labels[indices]
  sample = jax.jit(lambda k: sample_other_class_contrast_indices(k, indices, labels, table,
                                                                  num_negatives=20_000))
  got = np.asarray(sample(jax.random.key(3)))
  assert got.shape == (4, 20_001) and got.dtype == np.int32
  np.testing.assert_array_equal(got[:, 0], indices)
  np.testing.assert_array_equal(got, sample(jax.random.key(3)))
  for row, label in zip(got, labels):
    others = np.flatnonzero(dataset_labels != label)
    assert np.all(dataset_labels[row[1:]] != label)
    counts = np.bincount(row[1:], minlength=12)[others]
    expected = 20_000 / len(others)
    assert np.all(np.abs(counts - expected) < 0.1 * expected), counts
  with pytest.raises(ValueError, match='single class'):
    build_class_index_table(np.zeros(5, np.int32))


def test_contrast_scores_matches_reference():
  s, _, _, teacher_bank, idx = _setup(0)
  got = jax.jit(lambda b, i, e: contrast_scores(b, i, e, temperature=0.07))(teacher_bank, idx, s)
  assert got.shape == idx.shape and got.dtype == jnp.float32
  np.testing.assert_allclose(got, ref_scores(teacher_bank, idx, s, 0.07), rtol=1e-5)
  # The bank gets no gradient; the embeddings do.
  g_bank, g_emb = jax.jit(jax.grad(
      lambda b, e: jnp.sum(contrast_scores(b, idx, e, temperature=0.5)), argnums=(0, 1)))(
          teacher_bank, s)
  np.testing.assert_array_equal(g_bank, 0.0)
  assert np.all(np.abs(g_emb) > 0)
  # A bank larger than the gathered rows (N > (K + 1) d) takes the gather path: same scores.
  s, _, _, teacher_bank, idx = _setup(1, num_data=100, dim=4, num_negatives=3)
  got = jax.jit(lambda b, i, e: contrast_scores(b, i, e, temperature=0.07))(teacher_bank, idx, s)
  np.testing.assert_allclose(got, ref_scores(teacher_bank, idx, s, 0.07), rtol=1e-5)
  with pytest.raises(ValueError, match='temperature'):
    contrast_scores(teacher_bank, idx, s, temperature=0.0)
  with pytest.raises(ValueError, match='bank'):
    contrast_scores(teacher_bank[:, :3], idx, s, temperature=0.07)


def test_normaliser_and_normalised_scores():
  scores = np.exp(_normal(7, (4, 9)))
  z = jax.jit(lambda x: estimate_normaliser(x, 1000))(scores)
  assert z.shape == ()
  np.testing.assert_allclose(z, np.mean(scores.astype(np.float64)) * 1000, rtol=1e-5)
  np.testing.assert_allclose(jax.jit(normalise_scores)(scores, z),
                             scores.astype(np.float64) / (np.mean(scores.astype(np.float64)) *
                                                          1000), rtol=1e-5)
  # A constant to the gradient, as the authors' .item().
  np.testing.assert_array_equal(jax.grad(lambda x: estimate_normaliser(x, 10))(scores), 0.0)


def test_nce_loss_matches_reference_and_authors_batch_mean():
  probabilities = np.exp(_normal(8, (6, 11))) / 300.0
  got = jax.jit(lambda p: nce_loss(p, num_data=500))(probabilities)
  assert got.shape == (6,) and got.dtype == jnp.float32
  want = ref_nce(probabilities, 500)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  # The authors' ContrastLoss, vectorised: -(sum log D1 + sum log D0) / bsz.
  p = probabilities.astype(np.float64)
  m, pn = 10, 1 / 500
  log_d1 = np.log(p[:, 0] / (p[:, 0] + m * pn + 1e-7))
  log_d0 = np.log(m * pn / (p[:, 1:] + m * pn + 1e-7))
  np.testing.assert_allclose(jnp.mean(got), -(log_d1.sum() + log_d0.sum()) / 6, rtol=1e-5)
  with pytest.raises(ValueError, match='negative'):
    nce_loss(probabilities[:, :1], num_data=500)


def test_crd_loss_matches_reference_with_stored_normalisers():
  s, t, student_bank, teacher_bank, idx = _setup(10)
  fn = jax.jit(lambda *a: crd_loss(*a, temperature=0.07))
  got = fn(s, t, student_bank, teacher_bank, idx, 3.5, 40.0)
  assert got.shape == (5,) and got.dtype == jnp.float32
  want, _, _ = ref_crd(s, t, student_bank, teacher_bank, idx, 0.07, z_s=3.5, z_t=40.0)
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_crd_loss_estimates_unset_normalisers_on_each_side():
  s, t, student_bank, teacher_bank, idx = _setup(20)
  fn = jax.jit(lambda *a: crd_loss_with_normalisers(*a, temperature=0.1))
  loss, z_s, z_t = fn(s, t, student_bank, teacher_bank, idx, UNSET_NORMALISER, UNSET_NORMALISER)
  want, want_z_s, want_z_t = ref_crd(s, t, student_bank, teacher_bank, idx, 0.1)
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  np.testing.assert_allclose(z_s, want_z_s, rtol=1e-5)
  np.testing.assert_allclose(z_t, want_z_t, rtol=1e-5)
  # Direction: Z^s comes from the student's embeddings against the *teacher's* bank.
  z_of = jax.jit(lambda b, e: estimate_normaliser(contrast_scores(b, idx, e, temperature=0.1),
                                                  12))
  np.testing.assert_allclose(z_s, z_of(teacher_bank, s), rtol=1e-6)
  np.testing.assert_allclose(z_t, z_of(student_bank, t), rtol=1e-6)
  # Swapping the banks gives a different value (the loss is not bank-symmetric).
  swapped, _, _ = fn(s, t, teacher_bank, student_bank, idx, 2.0, 3.0)
  unswapped, _, _ = fn(s, t, student_bank, teacher_bank, idx, 2.0, 3.0)
  assert not np.allclose(swapped, unswapped, rtol=1e-3)
  # One set normaliser stays; the other is estimated.
  _, z_s2, z_t2 = fn(s, t, student_bank, teacher_bank, idx, 7.0, -1.0)
  np.testing.assert_allclose(z_s2, 7.0)
  np.testing.assert_allclose(z_t2, want_z_t, rtol=1e-5)


def test_crd_loss_positive_aligned_with_teacher_bank_is_lower():
  # Teacher bank rows at the positives hold the student's embeddings: the student half
  # drops, the teacher half does not change.
  s, t, student_bank, teacher_bank, idx = _setup(30)
  # Negatives away from the positives' rows, so aligning those rows moves only column 0.
  others = np.setdiff1d(np.arange(12), idx[:, 0])
  idx[:, 1:] = np.random.default_rng(31).choice(others, idx[:, 1:].shape)
  aligned = teacher_bank.copy()
  aligned[idx[:, 0]] = s
  fn = jax.jit(lambda tb: crd_loss(s, t, student_bank, tb, idx, 5.0, 5.0, temperature=0.07))
  before, after = fn(teacher_bank), fn(aligned)
  assert np.all(after < before)
  teacher_half = lambda sb: ref_nce(ref_scores(sb, idx, t, 0.07) / 5.0, 12)
  student_half = lambda tb: ref_nce(ref_scores(tb, idx, s, 0.07) / 5.0, 12)
  np.testing.assert_allclose(after, student_half(aligned) + teacher_half(student_bank),
                             rtol=1e-5)


def test_check_grads_crd_loss_float64():
  with jax.enable_x64(True):
    s, t, student_bank, teacher_bank, idx = _setup(40, batch=3, num_data=8, dim=4,
                                                   num_negatives=5)
    s, t = jnp.asarray(s, jnp.float64), jnp.asarray(t, jnp.float64)
    banks = jnp.asarray(student_bank, jnp.float64), jnp.asarray(teacher_bank, jnp.float64)
    fn = jax.jit(lambda a, b: crd_loss(a, b, *banks, idx, 0.8, 1.3, temperature=0.5))
    assert fn(s, t).dtype == jnp.float64
    check_grads(fn, (s, t), order=1, modes=('rev',), atol=1e-5, rtol=1e-5)
    # Also through an embedding head.
    features = jnp.asarray(_normal(41, (3, 2, 3)), jnp.float64)
    kernel = jnp.asarray(_normal(42, (6, 4)), jnp.float64)
    bias = jnp.asarray(_normal(43, (4,)), jnp.float64)
    head = jax.jit(lambda k, c: crd_loss(crd_embed(features, k, c), t, *banks, idx, 0.8, 1.3,
                                         temperature=0.5))
    check_grads(head, (kernel, bias), order=1, modes=('rev',), atol=1e-5, rtol=1e-5)
    # An estimated normaliser is a constant to the gradient (the authors' .item()): the
    # gradient equals the one with that value passed in as a stored normaliser.
    estimated = lambda a: crd_loss_with_normalisers(a, t, *banks, idx, -1.0, -1.0,
                                                    temperature=0.5)
    _, z_s, z_t = jax.jit(estimated)(s)
    stored = lambda a: jnp.sum(crd_loss(a, t, *banks, idx, z_s, z_t, temperature=0.5))
    np.testing.assert_allclose(jax.jit(jax.grad(lambda a: jnp.sum(estimated(a)[0])))(s),
                               jax.jit(jax.grad(stored))(s), rtol=1e-12)


def test_jitted_training_step_carries_banks_in_state():
  num_data, dim, batch, k = 32, 8, 4, 6
  key_s, key_t = jax.random.split(jax.random.key(0))
  state = dict(student_bank=init_memory_bank(key_s, num_data, dim),
               teacher_bank=init_memory_bank(key_t, num_data, dim),
               z_s=jnp.float32(UNSET_NORMALISER), z_t=jnp.float32(UNSET_NORMALISER))
  kernel_s, kernel_t = _normal(50, (5, dim)), _normal(51, (7, dim))

  @jax.jit
  def step(state, key, indices, f_s, f_t):
    idx = sample_contrast_indices(key, indices, num_data=num_data, num_negatives=k)

    def loss_fn(heads):
      s = crd_embed(f_s, heads[0], jnp.zeros(dim))
      t = crd_embed(f_t, heads[1], jnp.zeros(dim))
      loss, z_s, z_t = crd_loss_with_normalisers(s, t, state['student_bank'],
                                                 state['teacher_bank'], idx, state['z_s'],
                                                 state['z_t'], temperature=CRD_TEMPERATURE)
      return jnp.mean(loss), (s, t, z_s, z_t)

    (loss, (s, t, z_s, z_t)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        (kernel_s, kernel_t))
    new_state = dict(
        student_bank=update_memory_bank(state['student_bank'], indices, s, momentum=CRD_MOMENTUM),
        teacher_bank=update_memory_bank(state['teacher_bank'], indices, t, momentum=CRD_MOMENTUM),
        z_s=z_s, z_t=z_t)
    return new_state, loss, grads

  first, loss1, grads = step(state, jax.random.key(1), jnp.arange(4, dtype=jnp.int32),
                             _normal(52, (batch, 5)), _normal(53, (batch, 7)))
  assert float(first['z_s']) > 0 and float(first['z_t']) > 0
  assert np.isfinite(float(loss1)) and all(np.all(np.isfinite(g)) for g in grads)
  second, loss2, _ = step(first, jax.random.key(2), jnp.arange(4, 8, dtype=jnp.int32),
                          _normal(54, (batch, 5)), _normal(55, (batch, 7)))
  assert float(second['z_s']) == float(first['z_s'])  # fixed after the first batch
  assert np.isfinite(float(loss2))
  np.testing.assert_array_equal(second['student_bank'][:4], first['student_bank'][:4])
  np.testing.assert_allclose(jnp.linalg.norm(second['student_bank'][:8], axis=-1), 1.0,
                             rtol=1e-6)


def test_memory_bank_bytes_and_fit_check():
  assert memory_bank_bytes(50_000, 128) == 2 * 50_000 * 128 * 4 == 51_200_000
  check_memory_bank_fits(1000, 16)  # tiny: fits anywhere
  with pytest.raises(ValueError, match=r'num_data=1000000000000.*embed_dim=128') as info:
    check_memory_bank_fits(10**12, 128)
  assert str(memory_bank_bytes(10**12, 128)) in str(info.value)
  with pytest.raises(ValueError, match='num_data'):
    memory_bank_bytes(0, 128)


def test_fit_check_uses_device_memory_stats():

  class FakeDevice:

    def memory_stats(self):
      return {'bytes_limit': 10_000, 'bytes_in_use': 4_000}

    def __str__(self):
      return 'fake:0'

  check_memory_bank_fits(10, 64, device=FakeDevice())  # 5120 <= 6000
  with pytest.raises(ValueError, match=r'6000 bytes available.*fake:0'):
    check_memory_bank_fits(20, 64, device=FakeDevice())  # 10240 > 6000


def _crd_term(**settings):
  from jaxkd.losses import Outputs, make_term
  term = make_term('crd', embed_dim=4, num_negatives=6, num_data=12, **settings)
  outputs = Outputs(jnp.zeros((2, 3)), {'dense2': jax.ShapeDtypeStruct((2, 5), jnp.float32)})
  _, state = term.init(jax.random.key(0), outputs, [outputs])
  return term, state


def test_crd_term_draws_negatives_from_other_classes_by_default():
  """The authors' rule (RepDistiller `CIFAR100InstanceSample`, `is_sample=True`,
  `mode='exact'`): the positive is the example's own row and no negative shares its label;
  uniform sampling, the option, does draw same-class rows."""
  dataset_labels = np.array([2, 0, 1, 2, 0, 2, 1, 1, 2, 0, 2, 2])
  term, state = _crd_term(train_labels=dataset_labels)
  assert term.sampling == 'other_class' and term.describe()['sampling'] == 'other_class'
  assert term.describe()['train_labels']['count'] == 12
  indices = jnp.arange(12, dtype=jnp.int32)
  same_class = 0
  for step in range(3):
    contrast = np.asarray(jax.jit(term.contrast_indices)(state, indices, step))
    np.testing.assert_array_equal(contrast[:, 0], indices)
    assert np.all(dataset_labels[contrast[:, 1:]] != dataset_labels[:, None])
    uniform, uniform_state = _crd_term(sampling='uniform')
    drawn = np.asarray(uniform.contrast_indices(uniform_state, indices, step))
    np.testing.assert_array_equal(drawn[:, 0], indices)
    same_class += np.sum(dataset_labels[drawn[:, 1:]] == dataset_labels[:, None])
  assert same_class > 0


def test_crd_term_refuses_more_negatives_than_rows_and_missing_labels():
  from jaxkd.losses import make_term
  with pytest.raises(ValueError, match=r'num_negatives=16384 negatives per example from a '
                                       r'bank of num_data=64 rows'):
    make_term('crd', num_data=64, sampling='uniform')
  labels = np.arange(64) % 4  # 16 a class: 48 rows of other classes
  with pytest.raises(ValueError, match=r'num_negatives=49 .* as few as 48 rows of other '
                                       r'classes \(class 0 has 16 of the 64'):
    make_term('crd', num_data=64, num_negatives=49, train_labels=labels)
  make_term('crd', num_data=64, num_negatives=48, train_labels=labels)
  with pytest.raises(ValueError, match='4 labels for num_data=64'):
    make_term('crd', num_data=64, num_negatives=8, train_labels=labels[:4])
  with pytest.raises(ValueError, match="needs train_labels"):
    _crd_term()
  with pytest.raises(ValueError, match="Unknown crd sampling 'random'"):
    make_term('crd', sampling='random')
