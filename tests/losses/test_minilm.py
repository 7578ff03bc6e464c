"""MiniLM's attention and value-relation transfer (jaxkd.losses.methods.minilm) against
NumPy float64 references, on a transformer's own taps."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from scipy import special

from jaxkd import models
from jaxkd.losses import Context, Outputs, build_objective
from jaxkd.losses.methods.minilm import minilm_attention_loss, minilm_value_loss
from jaxkd.models.features import features
from jaxkd.state import init_variables
from sequence_refs import LENGTHS, token_mean64

B, L, N = 4, 7, 2


def _causal_probs(seed, dims=4):
  rng = np.random.default_rng(seed)
  scores = rng.normal(size=(B, N, L, L)) * 2
  scores = np.where(np.tril(np.ones((L, L), bool)), scores, -np.inf)
  return special.softmax(scores, -1)


def _kl_rows(p, q):
  """Mean over heads of KL(p || q) over keys: [B, N, L, L] -> [B, L] (0 log 0 = 0)."""
  return special.rel_entr(p, q).sum(-1).mean(1)


def ref_value_relation(values):
  values = np.asarray(values, np.float64)
  scores = np.einsum('blnd,bmnd->bnlm', values, values) / np.sqrt(values.shape[-1])
  scores = np.where(np.tril(np.ones((L, L), bool)), scores, -np.inf)
  return special.softmax(scores, -1)


def test_attention_loss_matches_the_float64_reference():
  student, teacher = _causal_probs(0), _causal_probs(1)
  got = jax.jit(minilm_attention_loss)(student.astype(np.float32), teacher.astype(np.float32))
  assert got.shape == (B, L) and got.dtype == jnp.float32
  np.testing.assert_allclose(got, _kl_rows(teacher, student), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(minilm_attention_loss(teacher, teacher), 0.0, atol=1e-6)


def test_value_loss_matches_the_float64_reference_and_ignores_padding():
  rng = np.random.default_rng(2)
  student = rng.normal(size=(B, L, N, 3)).astype(np.float32)
  teacher = rng.normal(size=(B, L, N, 5)).astype(np.float32)
  mask = (np.arange(L)[None] < np.array(LENGTHS)[:, None]).astype(np.float32)
  got = jax.jit(minilm_value_loss)(student, teacher)
  want = _kl_rows(ref_value_relation(teacher), ref_value_relation(student))
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
  # Causal relations: what padding (after a row's end) holds never reaches valid positions.
  pad = mask[..., None, None] == 0
  noisy = minilm_value_loss(np.where(pad, 50.0, student), np.where(pad, -50.0, teacher))
  np.testing.assert_allclose(token_mean64(noisy, mask), token_mean64(want, mask), rtol=1e-4)
  with jax.enable_x64(True):
    check_grads(lambda s: minilm_value_loss(s, teacher[:2].astype(np.float64)),
                (student[:2].astype(np.float64),), order=1, modes=('rev',))


def test_term_reads_the_transformer_taps():
  student = models.build('transformer', num_classes=16, width=8, depth=2, heads=N, max_len=L)
  teacher = models.build('transformer', num_classes=16, width=16, depth=2, heads=N, max_len=L)
  tokens = np.random.default_rng(3).integers(0, 16, (B, L)).astype(np.int32)
  objective = build_objective({'minilm': {'weight': 1.0, 'teacher_block': 'block1'}})
  assert objective.student_taps == ('block1/attention/probs', 'block1/attention/qkv')
  outputs = []
  for i, model in enumerate((student, teacher)):
    variables = init_variables(model, key=jax.random.key(i), input_shape=(1, L))
    logits, feats = features(model, variables, tokens, objective.student_taps)  # same paths
    outputs.append(jax.tree.map(np.asarray, (logits, feats)))
  ctx = Context(Outputs(*outputs[0]), [Outputs(*outputs[1])])
  total, components, _ = objective.apply(ctx)
  (_, s), (_, t) = outputs
  attention = _kl_rows(np.asarray(t['block1/attention/probs'], np.float64),
                       np.asarray(s['block1/attention/probs'], np.float64))
  value = _kl_rows(ref_value_relation(t['block1/attention/qkv'][:, :, 2]),
                   ref_value_relation(s['block1/attention/qkv'][:, :, 2]))
  np.testing.assert_allclose(components['attention_minilm'], attention, rtol=1e-4, atol=1e-7)
  np.testing.assert_allclose(components['value_minilm'], value, rtol=1e-4, atol=1e-7)
  np.testing.assert_allclose(total, attention + value, rtol=1e-4, atol=1e-7)
  with pytest.raises(ValueError, match='attention_weight'):
    build_objective({'minilm': {'weight': 1.0, 'attention_weight': -1.0}})
