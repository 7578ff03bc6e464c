"""Language-model steps: per-token, masked reduction over the global batch (NumPy reference,
1 vs 8 devices under jit, pmap and shard_map with uneven valid counts per device)."""
import jax
import numpy as np
import optax
import pytest

from jaxkd import losses, models
from jaxkd.distill import make_distill_step
from jaxkd.parallel import Parallel
from jaxkd.state import create_train_state, init_variables
from jaxkd.steps import batch_mean

V, L, B = 32, 8, 16
SHAPE = (1, L)


def _model(width, depth):
  return models.build('transformer', num_classes=V, width=width, depth=depth, heads=2,
                      max_len=L)


def _batch(seed=0):
  """Tokens with valid counts that differ per 2-row device shard (some rows empty)."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, V, (B, L + 1)).astype(np.int32)
  valid = np.array([8, 0, 3, 8, 1, 2, 8, 8, 5, 0, 0, 0, 7, 6, 4, 8])[:, None]
  mask = (np.arange(L)[None] < valid).astype(np.float32)
  return {'tokens': tokens[:, :-1], 'label': tokens[:, 1:], 'mask': mask}


def _log_softmax(z):
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _reference_loss(student_logits, teacher_logits, batch, temperature):
  """0.5 CE + 0.5 T^2 KL per token, token-weighted over the batch, in float64."""
  per_token = _reference_per_token(student_logits, teacher_logits, batch, temperature)
  return (per_token * batch['mask']).sum() / batch['mask'].sum()


def _reference_per_token(student_logits, teacher_logits, batch, temperature):
  """0.5 CE + 0.5 T^2 KL of each position `[B, L]`, in float64."""
  s = np.asarray(student_logits, np.float64)
  t = np.asarray(teacher_logits, np.float64)
  ce = -np.take_along_axis(_log_softmax(s), batch['label'][..., None], -1)[..., 0]
  log_p = _log_softmax(t / temperature)
  kl = (np.exp(log_p) * (log_p - _log_softmax(s / temperature))).sum(-1) * temperature ** 2
  return 0.5 * ce + 0.5 * kl


@pytest.fixture(scope='module')
def setup():
  teacher, student = _model(16, 1), _model(8, 1)
  teacher_vars = init_variables(teacher, key=jax.random.key(1), input_shape=SHAPE)
  tx = optax.sgd(0.1)
  objective = losses.make_objective(hard_weight=0.5, soft_weight=0.5, temperature=2.0)
  make = lambda p: make_distill_step(student=student, teachers=teacher, tx=tx,  # noqa: E731
                                     objective=objective, parallel=p)
  return teacher, student, teacher_vars, tx, make


def _run(parallel, setup, steps=2):
  _, student, teacher_vars, tx, make = setup
  step = make(parallel)
  state = parallel.replicate(create_train_state(student, tx, seed=0, input_shape=SHAPE))
  seen = []
  for i in range(steps):
    state, metrics = step(state, parallel.shard_batch(_batch(i)),
                          parallel.place_teacher(teacher_vars))
    seen.append(jax.device_get(parallel.unreplicate(metrics)))
  return seen, jax.device_get(parallel.unreplicate(state).params)


def test_distill_loss_is_token_weighted_numpy_reference(setup):
  teacher, student, teacher_vars, tx, _ = setup
  state = create_train_state(student, tx, seed=0, input_shape=SHAPE)
  batch = _batch(0)
  expected = _reference_loss(student.apply({'params': state.params}, batch['tokens']),
                             teacher.apply(teacher_vars, batch['tokens']), batch, 2.0)
  (metrics, *_), _ = _run(Parallel('jit', num_devices=1), setup, steps=1)
  np.testing.assert_allclose(metrics['loss'], expected, rtol=1e-5)
  # A mean of per-row means would differ: rows hold 0 to 8 valid tokens.
  assert abs(expected - _reference_loss(
      student.apply({'params': state.params}, batch['tokens']),
      teacher.apply(teacher_vars, batch['tokens']),
      {**batch, 'mask': np.ones_like(batch['mask'])}, 2.0)) > 1e-3


@pytest.mark.parametrize('mode', ['jit', 'pmap', 'shard_map'])
def test_distill_step_token_weighted_same_on_8_devices(setup, mode):
  ref_metrics, ref_params = _run(Parallel('jit', num_devices=1), setup)
  got_metrics, got_params = _run(Parallel(mode), setup)
  for ref, got in zip(ref_metrics, got_metrics):
    for name in ('loss', 'ce_loss', 'kd_loss', 'accuracy', 'agreement', 'teacher_accuracy'):
      np.testing.assert_allclose(got[name], ref[name], rtol=2e-5, atol=1e-7, err_msg=name)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               got_params, ref_params)


def test_batch_mean_without_mask_is_the_plain_mean():
  values = np.arange(6.0).reshape(2, 3)
  assert float(batch_mean(values, None, None)) == 2.5
  mask = np.array([[1, 0, 0], [1, 1, 0]], np.float32)
  np.testing.assert_allclose(batch_mean(values, mask, None), (0 + 3 + 4) / 3)


@pytest.mark.parametrize('mode', ['jit', 'shard_map'])
def test_vocab_chunked_distill_step_equals_the_direct_one(setup, mode):
  teacher, student, teacher_vars, tx, _ = setup
  objective = losses.build_objective({'ce': {'weight': 0.5},
                                      'kd': {'weight': 0.5, 'temperature': 2.0},
                                      'skew_kl': {'weight': 0.2}})
  runs = []
  for chunk in (None, 3):
    make = lambda p, chunk=chunk: make_distill_step(  # noqa: E731
        student=student, teachers=teacher, tx=tx, objective=objective, parallel=p,
        vocab_chunk=chunk)
    parallel = Parallel('jit', num_devices=1) if chunk is None else Parallel(mode)
    runs.append(_run(parallel, (teacher, student, teacher_vars, tx, make)))
  (ref_metrics, ref_params), (got_metrics, got_params) = runs
  for ref, got in zip(ref_metrics, got_metrics):
    assert set(ref) == set(got)
    for name in ref:
      np.testing.assert_allclose(got[name], ref[name], rtol=2e-5, atol=1e-6, err_msg=name)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               got_params, ref_params)


@pytest.mark.parametrize('mode,chunk', [('jit', None), ('pmap', 3), ('shard_map', None)])
def test_lm_eval_metrics_match_numpy(setup, mode, chunk):
  from jaxkd.language import evaluate_lm, make_lm_eval_step, summarize_lm
  teacher, student, teacher_vars, tx, _ = setup
  variables = {'params': create_train_state(student, tx, seed=0, input_shape=SHAPE).params}
  rows = {'tokens': np.concatenate([_batch(0)['tokens'], _batch(0)['label'][:, -1:]], 1),
          'mask': np.concatenate([_batch(0)['mask'], np.zeros((B, 1), np.float32)], 1)}
  rows = {k: v[:13] for k, v in rows.items()}  # a padded last batch
  parallel = Parallel(mode)
  step = make_lm_eval_step(model=student, teacher=teacher, parallel=parallel, vocab_chunk=chunk)
  sums = evaluate_lm(step, parallel.replicate(variables), rows, batch_size=8,
                     parallel=parallel, teacher_variables=parallel.replicate(teacher_vars))
  got = summarize_lm(sums, bytes_per_token=3.0)
  batch = {k: v[:13] for k, v in _batch(0).items()}
  s = np.asarray(student.apply(variables, batch['tokens']), np.float64)
  t = np.asarray(teacher.apply(teacher_vars, batch['tokens']), np.float64)
  mask = batch['mask']
  ce = -np.take_along_axis(_log_softmax(s), batch['label'][..., None], -1)[..., 0]
  loss = (ce * mask).sum() / mask.sum()
  assert got['tokens'] == int(mask.sum())
  np.testing.assert_allclose(got['loss'], loss, rtol=1e-5)
  np.testing.assert_allclose(got['perplexity'], np.exp(loss), rtol=1e-5)
  np.testing.assert_allclose(got['bits_per_byte'], loss / np.log(2) / 3.0, rtol=1e-5)
  top1 = s.argmax(-1)
  np.testing.assert_allclose(got['accuracy'], ((top1 == batch['label']) * mask).sum() / mask.sum())
  np.testing.assert_allclose(got['agreement'], ((top1 == t.argmax(-1)) * mask).sum() / mask.sum())
  # expected calibration error, 15 equal-width bins of the top-1 probability (Guo et al. 2017)
  confidence = np.exp(_log_softmax(s).max(-1))[mask > 0]
  hit = (top1 == batch['label'])[mask > 0]
  which = np.minimum((confidence * 15).astype(int), 14)
  ece = sum(abs(hit[which == b].sum() - confidence[which == b].sum()) for b in range(15))
  np.testing.assert_allclose(got['ece'], ece / len(hit), rtol=1e-4, atol=1e-6)
  assert 0.0 < got['ece'] < 1.0


def test_cached_teacher_logits_equal_the_live_teacher(setup):
  teacher, student, teacher_vars, tx, make = setup
  objective = losses.make_objective(hard_weight=0.5, soft_weight=0.5, temperature=2.0)
  cached = make_distill_step(student=student, teachers=None, tx=tx, objective=objective,
                             parallel=Parallel('jit', num_devices=1), cached=True)
  live = make(Parallel('jit', num_devices=1))
  batch = _batch(0)
  state = create_train_state(student, tx, seed=0, input_shape=SHAPE)
  logits = np.asarray(teacher.apply(teacher_vars, batch['tokens']))
  _, want = live(state, batch, teacher_vars)
  state = create_train_state(student, tx, seed=0, input_shape=SHAPE)
  _, got = cached(state, {**batch, 'teacher_logits': logits}, ())
  for name in ('loss', 'kd_loss', 'agreement'):
    np.testing.assert_allclose(got[name], want[name], rtol=1e-5, err_msg=name)


def test_vocab_chunked_train_step_equals_the_direct_one(setup):
  from jaxkd.steps import make_train_step
  _, student, _, tx, _ = setup
  results = []
  for chunk in (None, 5):
    parallel = Parallel('jit', num_devices=1)
    step = make_train_step(model=student, tx=tx, parallel=parallel, vocab_chunk=chunk)
    state = create_train_state(student, tx, seed=0, input_shape=SHAPE)
    state, metrics = step(state, _batch(0))
    results.append((jax.device_get(metrics), jax.device_get(state.params)))
  (want, want_params), (got, got_params) = results
  for name in want:
    np.testing.assert_allclose(got[name], want[name], rtol=2e-5, atol=1e-7, err_msg=name)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
               got_params, want_params)


def test_logged_metrics_are_token_weighted_across_the_logging_window(setup, tmp_path):
  """Two steps of 3 and 128 valid tokens logged together: sum(value * mask) / sum(mask)
  over both, not the mean of the two steps' means."""
  import json
  from jaxkd.loop import fit
  teacher, student, teacher_vars, tx, make = setup
  parallel = Parallel('jit', num_devices=1)
  step = make(parallel)
  short = _batch(0)
  short['mask'] = np.zeros_like(short['mask'])
  short['mask'][0, :3] = 1.0
  batches = [short, {**_batch(1), 'mask': np.ones_like(short['mask'])}]
  fresh = lambda: create_train_state(student, tx, seed=0, input_shape=SHAPE)  # noqa: E731
  params = [fresh().params, step(fresh(), batches[0], teacher_vars)[0].params]
  sums = np.zeros(3)  # loss, accuracy, agreement: each sum(value * mask)
  for batch, p in zip(batches, params):
    s = np.asarray(student.apply({'params': p}, batch['tokens']))
    t = np.asarray(teacher.apply(teacher_vars, batch['tokens']))
    per_token = (_reference_per_token(s, t, batch, 2.0), s.argmax(-1) == batch['label'],
                 s.argmax(-1) == t.argmax(-1))
    sums += [np.sum(v * batch['mask']) for v in per_token]
  tokens = sum(b['mask'].sum() for b in batches)
  fit(state=fresh(), step_fn=step, batches=lambda epoch, start: iter(batches[start:]),
      steps_per_epoch=2, num_steps=2, batch_size=B, workdir=str(tmp_path), parallel=parallel,
      step_args=(teacher_vars,), log_every=2)
  with open(tmp_path / 'metrics.jsonl') as f:
    (record,) = [json.loads(line) for line in f]
  np.testing.assert_allclose([record['loss'], record['accuracy'], record['agreement']],
                             sums / tokens, rtol=2e-5, atol=1e-7)
  assert record['tokens'] == tokens == 131
  assert record['tokens_per_s'] > 0
