"""jaxkd.generate: the cached decode equals a full recompute; greedy, sampling (temperature,
top-k, top-p) and beam search checked against NumPy computations on the full pass."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxkd import generate, models
from jaxkd.models import transformer

VOCAB, NEW = 50, 6


@pytest.fixture(scope='module')
def lm():
  """A tiny transformer with a wide embedding, so its next-token distributions are peaked
  (a fresh init's are near uniform) and argmax/top-k/nucleus are far from ties."""
  model = models.build('transformer', num_classes=VOCAB, width=32, depth=2, heads=4, max_len=32)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))
  embedding = 0.5 * jax.random.normal(jax.random.key(1), (VOCAB, 32))
  variables = {'params': {**variables['params'], 'embed': {'embedding': embedding}}}
  return model, variables, jax.jit(model.apply)


def _prompts(batch=4, length=7, seed=0):
  rng = np.random.default_rng(seed)
  prompts = rng.integers(0, VOCAB, (batch, length)).astype(np.int32)
  lengths = np.array([7, 3, 5, 1, 7, 2, 4, 6][:batch], np.int32)
  return prompts, lengths


def _log_softmax(x):
  x = np.asarray(x, np.float64)
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _full_logits(apply, variables, row):
  """The full pass over `row`; padded to one length, so it compiles once (causal: the
  padding changes no logits before it)."""
  padded = np.zeros((1, 7 + NEW), np.int32)
  padded[0, :len(row)] = row
  return np.asarray(apply(variables, jnp.asarray(padded)))[0, :len(row)]


def test_cached_decode_equals_a_full_recompute_at_every_position(lm):
  model, variables, apply = lm
  prompts, lengths = _prompts()
  rng = np.random.default_rng(1)
  continuation = rng.integers(0, VOCAB, (4, NEW)).astype(np.int32)
  cache = transformer.init_cache(model, batch_size=4, length=7 + NEW)
  decode = jax.jit(lambda v, t, c, s: model.apply(v, t, c, s, method='decode'))
  logits, cache = decode(variables, prompts, cache, jnp.zeros(4, jnp.int32))
  for b, length in enumerate(lengths):
    row = np.concatenate([prompts[b, :length], continuation[b]])
    full = _full_logits(apply, variables, row)
    np.testing.assert_allclose(logits[b, :length], full[:length], atol=1e-5)
  for step in range(NEW):
    logits, cache = decode(variables, continuation[:, step:step + 1], cache, lengths + step)
    for b, length in enumerate(lengths):
      row = np.concatenate([prompts[b, :length], continuation[b]])
      full = _full_logits(apply, variables, row)
      np.testing.assert_allclose(logits[b, 0], full[length + step], atol=1e-5)
  with pytest.raises(ValueError, match='exceeds max_len=32'):
    model.apply(variables, prompts, transformer.init_cache(model, batch_size=4, length=33),
                jnp.zeros(4, jnp.int32), method='decode')


def test_greedy_is_the_argmax_of_the_full_recompute_step_by_step(lm):
  model, variables, apply = lm
  prompts, lengths = _prompts()
  out = generate.greedy(model, variables, prompts, lengths, max_new_tokens=NEW)
  tokens, mask = np.asarray(out.tokens), np.asarray(out.mask)
  assert tokens.shape == mask.shape == (4, 7 + NEW) and tokens.dtype == np.int32
  for b, length in enumerate(lengths):
    np.testing.assert_array_equal(tokens[b, :length], prompts[b, :length])
    np.testing.assert_array_equal(mask[b], (np.arange(7 + NEW) >= length)
                                  & (np.arange(7 + NEW) < length + NEW))
    assert (tokens[b, length + NEW:] == 0).all()  # pad_token after the end
    full = _log_softmax(_full_logits(apply, variables, tokens[b, :length + NEW]))
    generated = tokens[b, length:length + NEW]
    np.testing.assert_array_equal(generated, full[length - 1:length + NEW - 1].argmax(-1))
    expected = full[np.arange(length - 1, length + NEW - 1), generated].sum()
    assert out.log_prob[b] == pytest.approx(expected, abs=1e-4)
  rows = generate.as_rows(out)  # pack's convention: position j weighted when j + 1 is new
  np.testing.assert_array_equal(rows['tokens'], tokens)
  np.testing.assert_array_equal(rows['mask'][:, :-1], mask[:, 1:])
  assert rows['mask'].dtype == np.float32 and not np.asarray(rows['mask'][:, -1]).any()
  # A row alone decodes as it does beside others; a mask gives the lengths too.
  alone = generate.greedy(model, variables, prompts[1:2, :3], max_new_tokens=NEW)
  np.testing.assert_array_equal(alone.tokens[0, :3 + NEW], tokens[1, :3 + NEW])
  as_mask = generate.greedy(model, variables, prompts, np.arange(7) < lengths[:, None],
                            max_new_tokens=NEW)
  np.testing.assert_array_equal(as_mask.tokens, tokens)
  # And at temperature 0, sample is greedy whatever the key.
  np.testing.assert_array_equal(generate.sample(model, variables, prompts, lengths,
                                                key=jax.random.key(5), temperature=0.0,
                                                max_new_tokens=NEW).tokens, tokens)


def test_the_same_key_gives_the_same_samples_and_another_key_others(lm):
  model, variables, _ = lm
  prompts, lengths = _prompts(batch=8)
  draw = lambda seed, **kw: np.asarray(generate.sample(  # noqa: E731
      model, variables, prompts, lengths, key=jax.random.key(seed), max_new_tokens=NEW,
      temperature=2.0, **kw).tokens)
  np.testing.assert_array_equal(draw(0), draw(0))
  assert (draw(0) != draw(1)).any()


def _reference_allowed(logits, *, temperature, top_k=0, top_p=1.0):
  """NumPy: the token ids sampling may emit, from the logits' sort order."""
  scaled = np.asarray(logits, np.float64) / temperature
  order = np.argsort(-scaled)
  if top_k:
    order = order[:top_k]
  probs = np.exp(scaled[order] - scaled[order].max())
  probs /= probs.sum()
  keep = int(np.searchsorted(np.cumsum(probs), top_p) + 1) if top_p < 1 else len(order)
  return set(order[:keep].tolist())


@pytest.mark.parametrize('top_k,top_p', [(3, 1.0), (0, 0.6), (10, 0.8)])
def test_samples_stay_in_the_top_k_and_the_nucleus(lm, top_k, top_p):
  model, variables, apply = lm
  prompts, lengths = _prompts(batch=8)
  prompts, lengths = np.tile(prompts, (4, 1)), np.tile(lengths, 4)  # 32 rows, 4 draws each
  out = generate.sample(model, variables, prompts, lengths, key=jax.random.key(3),
                        max_new_tokens=NEW, temperature=1.5, top_k=top_k, top_p=top_p)
  tokens = np.asarray(out.tokens)
  seen_outside_argmax = 0
  for b, length in enumerate(lengths):
    full = _full_logits(apply, variables, tokens[b, :length + NEW])
    for step in range(NEW):
      allowed = _reference_allowed(full[length - 1 + step], temperature=1.5, top_k=top_k,
                                   top_p=top_p)
      token = tokens[b, length + step]
      assert token in allowed, (b, step, token, allowed)
      seen_outside_argmax += token != full[length - 1 + step].argmax()
  assert seen_outside_argmax > 0  # it samples, not argmaxes


def test_filter_logits_matches_numpy():
  logits = np.random.default_rng(0).normal(size=(64, VOCAB)).astype(np.float32) * 3
  for top_k, top_p, temperature in ((5, 1.0, 1.0), (0, 0.5, 0.7), (7, 0.9, 2.0), (0, 1.0, 1)):
    filtered = np.asarray(generate.filter_logits(logits, temperature=temperature, top_k=top_k,
                                                 top_p=top_p))
    for row, out in zip(logits, filtered):
      allowed = _reference_allowed(row, temperature=temperature, top_k=top_k, top_p=top_p)
      assert set(np.flatnonzero(np.isfinite(out)).tolist()) == allowed
      kept = sorted(allowed)
      np.testing.assert_allclose(out[kept], row[kept] / temperature, rtol=1e-6)


def test_beam_search_of_one_beam_is_greedy_and_more_beams_score_no_lower(lm):
  model, variables, apply = lm
  prompts, lengths = _prompts()
  greedy = generate.greedy(model, variables, prompts, lengths, max_new_tokens=NEW)
  one = generate.beam_search(model, variables, prompts, lengths, num_beams=1,
                             max_new_tokens=NEW)
  np.testing.assert_array_equal(one.tokens, greedy.tokens)
  np.testing.assert_array_equal(one.mask, greedy.mask)
  np.testing.assert_allclose(one.log_prob, greedy.log_prob, atol=1e-5)
  beam = generate.beam_search(model, variables, prompts, lengths, num_beams=4,
                              max_new_tokens=NEW)
  assert (np.asarray(beam.log_prob) >= np.asarray(greedy.log_prob) - 1e-5).all()
  assert (np.asarray(beam.log_prob) > np.asarray(greedy.log_prob) + 1e-3).any()
  tokens = np.asarray(beam.tokens)
  for b, length in enumerate(lengths):  # its score is its sequence's log-probability
    full = _log_softmax(_full_logits(apply, variables, tokens[b, :length + NEW]))
    generated = tokens[b, length:length + NEW]
    expected = full[np.arange(length - 1, length + NEW - 1), generated].sum()
    assert beam.log_prob[b] == pytest.approx(expected, abs=1e-4)


def test_the_stop_token_ends_a_row(lm):
  model, variables, _ = lm
  prompts, lengths = _prompts(batch=8)
  free = np.asarray(generate.greedy(model, variables, prompts, lengths,
                                    max_new_tokens=NEW).tokens)
  stop = int(free[0, lengths[0] + 2])  # row 0 emits it by its third new token
  for decode in (
      lambda: generate.greedy(model, variables, prompts, lengths, max_new_tokens=NEW,
                              stop_token=stop, pad_token=VOCAB - 1),
      lambda: generate.beam_search(model, variables, prompts, lengths, num_beams=1,
                                   max_new_tokens=NEW, stop_token=stop, pad_token=VOCAB - 1)):
    out = decode()
    tokens, mask = np.asarray(out.tokens), np.asarray(out.mask)
    for b, length in enumerate(lengths):
      generated = free[b, length:length + NEW]
      hits = np.flatnonzero(generated == stop)
      count = hits[0] + 1 if len(hits) else NEW
      assert mask[b].sum() == count and mask[b, length:length + count].all()
      np.testing.assert_array_equal(tokens[b, length:length + count], generated[:count])
      assert (tokens[b, length + count:] == VOCAB - 1).all()
    assert mask[0].sum() <= 3


def test_no_gradient_flows_and_it_runs_inside_jit(lm):
  model, variables, _ = lm
  prompts, lengths = _prompts()

  def total(params, lengths):
    out = generate.sample(model, {'params': params}, prompts, lengths, key=jax.random.key(0),
                          max_new_tokens=3, top_p=0.9)
    return out.log_prob.sum()
  grads = jax.jit(jax.grad(total))(variables['params'], lengths)
  assert all((np.asarray(g) == 0).all() for g in jax.tree.leaves(grads))


def test_bad_settings_are_named(lm):
  model, variables, _ = lm
  prompts, lengths = _prompts()
  cases = [(dict(temperature=-1.0), 'temperature=-1.0'), (dict(top_k=-2), 'top_k=-2'),
           (dict(top_p=0.0), r'top_p=0.0'), (dict(max_new_tokens=0), 'max_new_tokens=0'),
           (dict(stop_token=VOCAB), f'stop_token={VOCAB}')]
  for changes, message in cases:
    kwargs = {'key': jax.random.key(0), 'max_new_tokens': 2, **changes}
    with pytest.raises(ValueError, match=message):
      generate.sample(model, variables, prompts, lengths, **kwargs)
  with pytest.raises(ValueError, match='needs a key'):
    generate.sample(model, variables, prompts, lengths, max_new_tokens=2)
  with pytest.raises(ValueError, match=r'prompt_lengths must be in \[1, 7\]'):
    generate.greedy(model, variables, prompts, np.array([0, 1, 2, 3]), max_new_tokens=2)
  with pytest.raises(ValueError, match='num_beams=0'):
    generate.beam_search(model, variables, prompts, lengths, num_beams=0, max_new_tokens=2)
  with pytest.raises(ValueError, match='exceeds max_len=32'):
    generate.greedy(model, variables, prompts, lengths, max_new_tokens=30)
