"""Logit terms from hidden states in chunks of positions equal the direct form, in values
and gradients, and hold less memory (XLA's compiled memory analysis)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxkd.losses import Context, Outputs, build_objective
from jaxkd.losses.chunked import Hidden, apply_in_chunks
from sequence_refs import LENGTHS

B, L, D, DT, V = 4, 10, 6, 8, 37
SPEC = {'ce': {'weight': 0.5}, 'kd': {'weight': 0.5, 'temperature': 2.0},
        'skew_kl': {'weight': 0.3}}


def _case(seed=0):
  rng = np.random.default_rng(seed)
  student = Hidden(jnp.asarray(rng.normal(size=(B, L, D)), jnp.float32),
                   jnp.asarray(rng.normal(size=(V, D)), jnp.float32))
  teacher = Hidden(jnp.asarray(rng.normal(size=(B, L, DT)), jnp.float32),
                   jnp.asarray(rng.normal(size=(V, DT)), jnp.float32))
  labels = jnp.asarray(rng.integers(0, V, (B, L)), jnp.int32)
  mask = (np.arange(L)[None] < np.resize(LENGTHS, B)[:, None] + 3).astype(np.float32)
  return student, teacher, labels, jnp.asarray(mask)


def _direct(objective, student, teacher, labels):
  total, components, _ = objective.apply(Context(
      Outputs(student.logits()), [Outputs(jax.lax.stop_gradient(teacher.logits()))],
      {'label': labels}))
  return total, components


def _masked_mean(values, mask):
  return jnp.sum(values * mask) / jnp.sum(mask)


@pytest.mark.parametrize('chunk', [1, 4, 5, 10, 16])
def test_chunked_values_and_gradients_equal_the_direct_form(chunk):
  student, teacher, labels, mask = _case()
  objective = build_objective(SPEC)
  total, components = _direct(objective, student, teacher, labels)
  got_total, got_components, stats = apply_in_chunks(
      objective, student, [teacher], {'label': labels}, chunk=chunk)
  np.testing.assert_allclose(got_total, total, rtol=1e-5, atol=1e-6)
  for name in SPEC:
    np.testing.assert_allclose(got_components[name], components[name], rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(stats['prediction'], jnp.argmax(student.logits(), -1))
  np.testing.assert_array_equal(stats['teacher0_top1'], jnp.argmax(teacher.logits(), -1))

  direct = jax.grad(lambda s: _masked_mean(_direct(objective, s, teacher, labels)[0], mask))
  chunked = jax.jit(jax.grad(lambda s: _masked_mean(apply_in_chunks(
      objective, s, [teacher], {'label': labels}, chunk=chunk)[0], mask)))
  want, got = direct(student), chunked(student)
  np.testing.assert_allclose(got.states, want.states, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(got.embedding, want.embedding, rtol=1e-4, atol=1e-6)


def _temp_bytes(fn, *args):
  return jax.jit(fn).lower(*args).compile().memory_analysis().temp_size_in_bytes


def test_chunked_holds_a_fraction_of_the_direct_memory():
  b, length, d, vocab = 2, 256, 32, 4096
  student = Hidden(jnp.zeros((b, length, d)), jnp.zeros((vocab, d)))
  teacher = Hidden(jnp.zeros((b, length, 2 * d)), jnp.zeros((vocab, 2 * d)))
  labels = jnp.zeros((b, length), jnp.int32)
  objective = build_objective({'ce': {'weight': 0.5}, 'kd': {'weight': 0.5, 'temperature': 1.0}})

  def loss(direct):
    def fn(s, t, y):
      if direct:
        return jnp.mean(_direct(objective, s, t, y)[0])
      return jnp.mean(apply_in_chunks(objective, s, [t], {'label': y}, chunk=32)[0])
    return jax.value_and_grad(fn)

  logits_bytes = b * length * vocab * 4
  direct = _temp_bytes(loss(True), student, teacher, labels)
  chunked = _temp_bytes(loss(False), student, teacher, labels)
  assert direct >= 2 * logits_bytes  # both models' logits, at least
  assert chunked <= direct / 4, (chunked, direct)


def test_refuses_terms_that_tap_features():
  student, teacher, labels, _ = _case()
  objective = build_objective({'hidden_mse': {'weight': 1.0}})
  with pytest.raises(ValueError, match='hidden states only'):
    apply_in_chunks(objective, student, [teacher], {'label': labels}, chunk=4)


@pytest.mark.parametrize('chunk', [3, 10])
def test_fused_weighted_sum_equals_the_direct_masked_mean_and_its_gradient(chunk):
  from jaxkd.losses.chunked import weighted_sum_in_chunks
  student, teacher, labels, mask = _case(1)
  spec = {**SPEC, 'ctkd': {'weight': 0.2}}  # a learned temperature: gradients into params
  objective = build_objective(spec)
  params, _ = objective.init(jax.random.key(0), Outputs(student.logits()),
                             [Outputs(teacher.logits())])
  weights = mask / jnp.sum(mask)

  def direct(s, p):
    total, components, _ = objective.apply(Context(
        Outputs(s.logits()), [Outputs(teacher.logits())], {'label': labels}, params=p))
    return jnp.sum(total * weights), components

  def fused(s, p):
    loss, (components, _) = weighted_sum_in_chunks(
        objective, s, [teacher], {'label': labels}, weights, chunk=chunk, params=p)
    return loss, components

  (want, want_components), want_grads = jax.value_and_grad(direct, (0, 1), has_aux=True)(
      student, params)
  (got, got_components), got_grads = jax.jit(jax.value_and_grad(fused, (0, 1), has_aux=True))(
      student, params)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  for name in spec:
    np.testing.assert_allclose(got_components[name], want_components[name], rtol=1e-5,
                               atol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               got_grads, want_grads)
