"""Tests of jaxkd.losses.methods.sampled_kd: NumPy float64 references, and its gradient's
unbiasedness by Monte Carlo beside the top-k forms' bias (Anshumann et al. 2025)."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from classic_refs import _logits, np_log_softmax, np_softmax
from sequence_refs import sequence_case, token_mean64
from jaxkd import cache
from jaxkd.losses import build_objective, kd_loss, sampled_kd_loss

V = 12


def np_sampled_kd(student, ids, t):
  log_q = np_log_softmax(np.asarray(student, np.float64) / t)
  return -t * t * np.take_along_axis(log_q, ids, -1).mean(-1)


@pytest.mark.parametrize('temperature', [1.0, 2.0])
@pytest.mark.parametrize('shape', [(5, V), (2, 3, V)], ids=['BV', 'BLV'])
def test_sampled_kd_loss_matches_numpy(temperature, shape):
  student = _logits(0, shape)
  ids = np.random.default_rng(1).integers(0, V, shape[:-1] + (4,))
  got = jax.jit(functools.partial(sampled_kd_loss, temperature=temperature))(student, ids)
  assert got.shape == shape[:-1] and got.dtype == jnp.float32
  np.testing.assert_allclose(got, np_sampled_kd(student, ids, temperature), rtol=1e-5)
  bf16 = sampled_kd_loss(jnp.asarray(student, jnp.bfloat16), ids, temperature=temperature)
  assert bf16.dtype == jnp.float32



def test_sequences_per_position_padding_included():
  """`[B, L, V]` with uneven valid lengths and +-1e3 logits at the padding: finite at every
  position, the float64 reference at the valid ones, and the same token mean."""
  student, _, _, mask = sequence_case(5)
  ids = np.random.default_rng(2).integers(0, student.shape[-1], mask.shape + (8,))
  got = np.asarray(sampled_kd_loss(student, ids, temperature=2.0))
  want = np_sampled_kd(student, ids, 2.0)
  assert got.shape == mask.shape and np.isfinite(got).all()
  valid = mask > 0
  np.testing.assert_allclose(got[valid], want[valid], rtol=1e-5)
  np.testing.assert_allclose(token_mean64(got, mask), token_mean64(want, mask), rtol=2e-5)

def test_sampled_kd_gradients():
  student = _logits(0, (2, 3, V))
  ids = np.random.default_rng(1).integers(0, V, (2, 3, 4))
  with jax.enable_x64(True):
    check_grads(jax.jit(lambda s: sampled_kd_loss(s, ids, temperature=2.0)),
                (np.asarray(student, np.float64),), order=1, modes=['rev'])


def test_bad_ids_and_shapes():
  student = _logits(0, (3, V))
  value = np.asarray(sampled_kd_loss(student, np.array([[0, 1], [V, 2], [-1, 3]])))
  assert np.isfinite(value[0]) and np.isnan(value[1]) and np.isnan(value[2])
  with pytest.raises(ValueError, match='leading axes'):
    sampled_kd_loss(student, np.zeros((4, 2), np.int32))
  with pytest.raises(ValueError, match='integer token ids'):
    sampled_kd_loss(student, np.zeros((3, 2), np.float32))


def test_term_reads_the_cached_draws_and_refuses_without_them():
  objective = build_objective({'sampled_kd': {'weight': 1.0, 'temperature': 2.0}})
  assert not objective.needs_teacher  # the teacher is the cache
  from jaxkd.losses import Context, Outputs
  student = _logits(0, (2, 3, V))
  ids = np.random.default_rng(0).integers(0, V, (2, 3, 5))
  total, _, _ = objective.apply(Context(Outputs(jnp.asarray(student)),
                                        batch={'teacher_sample_ids': ids}))
  np.testing.assert_allclose(total, np_sampled_kd(student, ids, 2.0), rtol=1e-5)
  with pytest.raises(ValueError, match=r"reads batch\['teacher_sample_ids'\]"):
    objective.apply(Context(Outputs(jnp.asarray(student)), batch={}))


# --- the gradient in expectation: sampled (unbiased) vs top-k (biased) ---------------------------

T, K, DRAWS, TOP = 2.0, 8, 4000, 3


def _np_exact_kd_gradient(student, teacher, t):
  """d/dz_s of T^2 KL(softmax(z_t/T) || softmax(z_s/T)) = T (q - p), in float64."""
  return t * (np_softmax(student / t) - np_softmax(teacher / t))


@functools.lru_cache(maxsize=None)
def _monte_carlo():
  """The sampled loss's gradient for DRAWS independent sets of K draws: mean, standard
  error, and the exact gradient; 4 positions of V = 12."""
  student, teacher = _logits(3, (4, V)), _logits(4, (4, V))
  grad = jax.jit(jax.vmap(lambda key: jax.grad(lambda s: jnp.sum(sampled_kd_loss(
      s, cache.sample_teacher_tokens(teacher, key, num_samples=K, temperature=T),
      temperature=T)))(jnp.asarray(student))))
  grads = np.asarray(grad(jax.random.split(jax.random.key(0), DRAWS)), np.float64)
  mean = grads.mean(0)
  standard_error = grads.std(0, ddof=1) / np.sqrt(DRAWS)
  return student, teacher, mean, standard_error, _np_exact_kd_gradient(student, teacher, T)


def test_sampled_gradient_is_the_kd_gradient_in_expectation():
  student, teacher, mean, standard_error, exact = _monte_carlo()
  z = np.abs(mean - exact) / standard_error
  # 48 components: each within 4 standard errors (a chance of ~0.3 % that any is past 4).
  assert z.max() < 4.0, z.max()
  assert np.abs(mean - exact).max() < 0.02  # and the errors are small in absolute terms
  # The value: KD's cross-entropy form, kd_loss + T^2 H(p), in expectation.
  losses_ = np.asarray(jax.jit(jax.vmap(lambda key: sampled_kd_loss(
      student, cache.sample_teacher_tokens(teacher, key, num_samples=K, temperature=T),
      temperature=T)))(jax.random.split(jax.random.key(1), DRAWS)))
  p = np_softmax(teacher / T)
  want = np.asarray(kd_loss(student, teacher, temperature=T)) - T * T * (
      p * np.log(p)).sum(-1)
  assert np.all(np.abs(losses_.mean(0) - want) < 4 * losses_.std(0) / np.sqrt(DRAWS))


def _np_renormalized_topk_gradient(student, teacher, t, k):
  """MaxText's / EasyDeL's target: p over the teacher's top k, renormalised, 0 elsewhere."""
  p = np_softmax(teacher / t)
  top = np.argsort(-teacher, -1)[:, :k]
  target = np.zeros_like(p)
  np.put_along_axis(target, top, np.take_along_axis(p, top, -1), -1)
  return t * (np_softmax(student / t) - target / target.sum(-1, keepdims=True))


def _np_bucket_topk_gradient(student, teacher, t, k):
  """jaxkd's top-k + rest-of-mass target: p on the top k, the rest's mass r spread over the
  other tokens in proportion to the student's q (the (k+1)-bucket KL's gradient)."""
  p, q = np_softmax(teacher / t), np_softmax(student / t)
  top = np.argsort(-teacher, -1)[:, :k]
  in_top = np.zeros(p.shape, bool)
  np.put_along_axis(in_top, top, True, -1)
  rest = np.where(in_top, 0.0, p).sum(-1, keepdims=True)
  q_rest = np.where(in_top, 0.0, q).sum(-1, keepdims=True)
  target = np.where(in_top, p, rest * q / q_rest)
  return t * (q - target)


def test_topk_gradients_are_biased_and_jaxkd_uses_the_rest_bucket():
  student, teacher, _, standard_error, exact = _monte_carlo()
  renormalized = _np_renormalized_topk_gradient(student, teacher, T, TOP)
  bucket = _np_bucket_topk_gradient(student, teacher, T, TOP)
  # Deterministic targets, off the exact gradient by many of the sampled estimate's
  # standard errors: no number of steps averages the bias away.
  assert (np.abs(renormalized - exact) / standard_error).max() > 20
  assert (np.abs(bucket - exact) / standard_error).max() > 20
  # The bucket keeps the rest's total mass: its error is smaller than renormalising's.
  assert np.abs(bucket - exact).sum() < np.abs(renormalized - exact).sum()
  # jaxkd's top-k cache (cache.topk_teacher_targets -> cache.topk_logits -> kd_loss) has
  # the bucket form's gradient, not the renormalised one.
  @jax.jit
  def jaxkd_topk_gradient(s, teacher):
    values, ids, rest = cache.topk_teacher_targets(teacher, k=TOP, temperature=T)
    full = lambda s: cache.topk_logits(s, values, ids, rest, temperature=T)  # noqa: E731
    return jax.grad(lambda s: jnp.sum(kd_loss(s, full(s), temperature=T)))(s)

  got = np.asarray(jaxkd_topk_gradient(jnp.asarray(student, jnp.float32), teacher))
  np.testing.assert_allclose(got, bucket, rtol=1e-4, atol=1e-5)
  assert np.abs(got - renormalized).max() > 0.05


def test_chunked_vocabulary_carries_the_draws():
  """From hidden states a chunk of positions at a time: the direct form's value and
  gradient (the draws travel with their positions)."""
  from jaxkd.losses import chunked
  rng = np.random.default_rng(5)
  states = jnp.asarray(rng.normal(size=(2, 5, 4)), jnp.float32)
  embedding = jnp.asarray(rng.normal(size=(V, 4)), jnp.float32)
  batch = {'teacher_sample_ids': rng.integers(0, V, (2, 5, 3)).astype(np.int32)}
  objective = build_objective({'sampled_kd': {'weight': 1.0, 'temperature': 2.0}})
  weights = jnp.full((2, 5), 0.1, jnp.float32)

  def direct(states):
    logits = chunked.Hidden(states, embedding).logits()
    return jnp.sum(sampled_kd_loss(logits, batch['teacher_sample_ids'], temperature=2.0)
                   * weights)

  def in_chunks(states):
    return chunked.weighted_sum_in_chunks(objective, chunked.Hidden(states, embedding), [],
                                          batch, weights, chunk=2)[0]

  total, _, _ = chunked.apply_in_chunks(objective, chunked.Hidden(states, embedding), [],
                                        batch, chunk=2)
  np.testing.assert_allclose(jnp.sum(total * weights), direct(states), rtol=1e-5)
  np.testing.assert_allclose(jax.grad(in_chunks)(states), jax.grad(direct)(states),
                             rtol=1e-4, atol=1e-6)
