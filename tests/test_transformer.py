"""jaxkd.models.transformer: shapes, dtypes, causality, rotary positions, taps, export."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxkd import models
from jaxkd.models import transformer

VOCAB = 97


def _tokens(batch=2, length=12, seed=0):
  return jnp.asarray(np.random.default_rng(seed).integers(0, VOCAB, (batch, length)), jnp.int32)


def _tiny(**overrides):
  model = models.build('transformer', num_classes=VOCAB, width=32, depth=2, heads=4,
                       max_len=64, **overrides)
  variables = model.init({'params': jax.random.key(0)}, _tokens())
  return model, variables


def test_registered_sizes_match_a_hand_count():
  # Per block at width d: 2 LayerNorms 4d, qkv d*3d + 3d, out d*d + d, mlp d*4d + 4d + 4d*d + d;
  # plus the tied embedding V*d and the final LayerNorm 2d.
  def count(d, depth, vocab):
    return vocab * d + depth * (4 * d + 3 * d * d + 3 * d + d * d + d + 8 * d * d + 5 * d) + 2 * d
  for name, (d, depth) in {'lm_student': (128, 2), 'lm_teacher': (192, 4)}.items():
    model = models.build(name, num_classes=2048)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 8), jnp.int32))
    assert models.param_count(shapes) == count(d, depth, 2048)
    assert model.vocab_size == 2048
  assert count(128, 2, 2048) == 658_944 and count(192, 4, 2048) == 2_173_056


def test_shapes_dtypes_and_bfloat16_compute():
  model, variables = _tiny()
  tokens = _tokens()
  logits = model.apply(variables, tokens)
  assert logits.shape == (2, 12, VOCAB) and logits.dtype == jnp.float32
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))
  hidden, embedding = model.apply(variables, tokens, method='hidden')
  assert hidden.shape == (2, 12, 32) and embedding.shape == (VOCAB, 32)
  np.testing.assert_array_equal(transformer.unembed(hidden, embedding), logits)
  # Chunks of positions give the same logits (what a chunked vocabulary loss relies on).
  np.testing.assert_array_equal(transformer.unembed(hidden[:, 4:8], embedding), logits[:, 4:8])
  half = models.build('transformer', num_classes=VOCAB, width=32, depth=2, heads=4,
                      dtype=jnp.bfloat16)
  hidden16, _ = half.apply(variables, tokens, method='hidden')
  logits16 = half.apply(variables, tokens)
  assert hidden16.dtype == jnp.bfloat16 and logits16.dtype == jnp.float32
  np.testing.assert_allclose(logits16, logits, atol=0.05)
  assert np.abs(np.asarray(logits16) - np.asarray(logits)).max() > 0  # really bfloat16


def test_bad_inputs_are_named():
  model, variables = _tiny()
  with pytest.raises(TypeError, match='integer token ids'):
    model.apply(variables, jnp.zeros((2, 12)))
  with pytest.raises(ValueError, match='exceed max_len=64'):
    model.apply(variables, jnp.zeros((1, 65), jnp.int32))
  with pytest.raises(ValueError, match='multiple of heads'):
    models.build('transformer', num_classes=VOCAB, width=30, heads=4).init(
        jax.random.key(0), _tokens())


def test_changing_token_t_changes_no_logits_before_t():
  model, variables = _tiny()
  apply = jax.jit(model.apply)
  tokens = _tokens()
  base = np.asarray(apply(variables, tokens))
  for t in (0, 5, 11):
    changed = np.asarray(apply(variables, tokens.at[:, t].set((tokens[:, t] + 1) % VOCAB)))
    np.testing.assert_array_equal(changed[:, :t], base[:, :t])
    assert (np.abs(changed[:, t:] - base[:, t:]).max(axis=-1) > 1e-6).all()


def test_rotary_scores_depend_on_the_offset_only():
  rng = np.random.default_rng(0)
  q, k = (jnp.asarray(rng.normal(size=(1, 1, 16)), jnp.float32) for _ in range(2))

  def score(m, n):
    return float(jnp.sum(transformer.rope(q, jnp.array([m]))
                         * transformer.rope(k, jnp.array([n]))))
  for m, n in ((0, 0), (5, 2), (3, 9), (40, 1)):
    for shift in (1, 17, 300):
      assert score(m + shift, n + shift) == pytest.approx(score(m, n), rel=1e-4, abs=1e-4)
  assert abs(score(5, 2) - score(5, 3)) > 1e-3  # and the offset matters
  # A rotation: norms are kept, and position 0 is the identity.
  x = jnp.asarray(rng.normal(size=(7, 3, 16)), jnp.float32)
  rotated = transformer.rope(x, jnp.arange(7))
  np.testing.assert_allclose(jnp.linalg.norm(rotated, axis=-1), jnp.linalg.norm(x, axis=-1),
                             rtol=1e-5)
  np.testing.assert_allclose(rotated[0], x[0], rtol=1e-6)
  # Through the model: shifting every position by the same amount keeps the outputs.
  model, variables = _tiny()
  tokens = _tokens()
  np.testing.assert_allclose(model.apply(variables, tokens, positions=jnp.arange(12) + 25),
                             model.apply(variables, tokens), atol=2e-4)


def test_taps_read_hidden_states_and_attention_probabilities():
  model, variables = _tiny()
  tokens = _tokens()
  logits, feats = models.features(model, variables, tokens,
                                  [r'block\d', r'block\d/attention/probs', 'block1/attention',
                                   'block1/attention/qkv', 'block0/norm1'])
  np.testing.assert_array_equal(logits, model.apply(variables, tokens))
  assert set(feats) == {'block0', 'block1', 'block0/attention/probs', 'block1/attention/probs',
                        'block1/attention', 'block1/attention/qkv', 'block0/norm1'}
  assert feats['block1'].shape == (2, 12, 32)
  probs = np.asarray(feats['block1/attention/probs'])
  assert probs.shape == (2, 4, 12, 12) and probs.dtype == np.float32
  np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
  assert (probs[..., np.triu_indices(12, 1)[0], np.triu_indices(12, 1)[1]] == 0).all()
  # The tapped probabilities are those the fused attention used: probs @ values, projected.
  values = np.asarray(feats['block1/attention/qkv'])[:, :, 2]  # [B, L, N, H], not rotated
  mixed = np.einsum('bnlm,bmnh->blnh', probs, values)
  out = variables['params']['block1']['attention']['out']
  expected = np.einsum('blnh,nhd->bld', mixed, out['kernel']) + out['bias']
  np.testing.assert_allclose(feats['block1/attention'], expected, atol=1e-5)
  # A NumPy softmax of the rotated scores.
  q = transformer.rope(feats['block1/attention/qkv'][:, :, 0], jnp.arange(12))
  k = transformer.rope(feats['block1/attention/qkv'][:, :, 1], jnp.arange(12))
  scores = np.einsum('blnh,bmnh->bnlm', q, k) / np.sqrt(8)
  scores = np.where(np.tril(np.ones((12, 12), bool)), scores, -np.inf)
  reference = np.exp(scores - scores.max(-1, keepdims=True))
  np.testing.assert_allclose(probs, reference / reference.sum(-1, keepdims=True), atol=1e-6)
  paths = models.feature_paths(model, (2, 12), jnp.int32)
  assert paths[:3] == ['embed', 'block0', 'block0/norm1'] and paths[-1] == 'norm'
  with pytest.raises(ValueError, match='block0/attention/probs'):
    models.features(model, variables, tokens, 'block9')


def test_attention_probabilities_are_computed_only_when_tapped(monkeypatch):
  model, variables = _tiny()
  tokens = _tokens()
  calls = []
  original = transformer.attention_probs
  monkeypatch.setattr(transformer, 'attention_probs',
                      lambda q, k: calls.append(1) or original(q, k))
  model.apply(variables, tokens)
  model.apply(variables, tokens, method='hidden')
  assert not calls

  def exponentials(fn):  # softmax exponentials left in the optimized program
    return jax.jit(fn).lower(variables, tokens).compile().as_text().count('exponential(')

  def counts():
    return (exponentials(model.apply),
            exponentials(lambda v, t: models.features(model, v, t, 'block1')),
            exponentials(lambda v, t: models.features(model, v, t, 'block1/attention/probs')))
  from jaxkd import accel, ops
  with ops.use(ops.XLA):  # dot_product_attention: the tapped probabilities are extra work
    plain, hidden_tap, probs_tap = counts()
  assert hidden_tap == plain < probs_tap
  with ops.use(accel.CpuOps()):  # the CPU attention computes them anyway: the tap is free
    plain, hidden_tap, probs_tap = counts()
  assert hidden_tap == plain == probs_tap


def test_gradients_are_finite_and_dropout_needs_train():
  model, variables = _tiny(dropout_rate=0.1)
  tokens = _tokens()

  def loss(params, key):
    logits = model.apply({'params': params}, tokens[:, :-1], train=True, rngs={'dropout': key})
    labels = jax.nn.one_hot(tokens[:, 1:], VOCAB)
    return -jnp.mean(jnp.sum(labels * jax.nn.log_softmax(logits), -1))
  value, grads = jax.jit(jax.value_and_grad(loss))(variables['params'], jax.random.key(1))
  assert np.isfinite(value) and all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
  assert np.abs(grads['embed']['embedding']).max() > 0
  np.testing.assert_array_equal(model.apply(variables, tokens), model.apply(variables, tokens))
  assert value != loss(variables['params'], jax.random.key(2))


def test_export_with_a_symbolic_batch():
  model, variables = _tiny()
  batch, = jax.export.symbolic_shape('batch')
  exported = jax.export.export(jax.jit(lambda t: model.apply(variables, t)))(
      jax.ShapeDtypeStruct((batch, 12), jnp.int32))
  restored = jax.export.deserialize(exported.serialize())
  for size in (1, 3):
    tokens = _tokens(batch=size, seed=size)
    np.testing.assert_allclose(restored.call(tokens), model.apply(variables, tokens), atol=1e-5)
  assert str(restored.in_avals[0].shape[0]) == 'batch'


def test_cpu_attention_formulation_equals_dot_product_attention():
  """`jaxkd.accel`'s causal attention (probabilities, then one product) against the plain
  path's `jax.nn.dot_product_attention`: values and gradients."""
  from jaxkd import accel, ops
  rng = np.random.default_rng(0)
  q, k, v, g = (jnp.asarray(rng.standard_normal((2, 12, 2, 8)), jnp.float32) for _ in range(4))
  results = []
  for impl in (ops.XLA, accel.CpuOps()):
    loss = lambda q, k, v, impl=impl: jnp.sum(impl.causal_attention(q, k, v) * g)  # noqa: E731
    results.append((impl.causal_attention(q, k, v),
                    jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v)))
  (want, want_grads), (got, got_grads) = results
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  for a, b in zip(got_grads, want_grads):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  # causal: the first position attends to itself alone
  np.testing.assert_allclose(got[:, 0], v[:, 0], rtol=1e-6)
