"""On-policy distillation (GKD, jaxkd.on_policy): at student_data_fraction 0 the step is the
supervised token-KD step; at 1 it trains on the student's own samples (what generate.sample
draws with the step's key, the loss on the sampled continuation); a failed generation stops
the run; the recipe's settings are checked before data loads and a resumed run is exact."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxkd import generate, losses, models, on_policy
from jaxkd.distill import make_distill_step
from jaxkd.language import lm_batch
from jaxkd.loop import check_numerics
from jaxkd.parallel import Parallel
from jaxkd.state import create_train_state, init_variables

V, L, B = 32, 16, 8
copy = lambda tree: jax.tree.map(jnp.array, tree)  # noqa: E731  (the steps donate their state)
SEP, PAD = V - 2, V - 1
SETTINGS = on_policy.check_settings({'student_data_fraction': 1.0, 'prompt_len': 5,
                                     'new_tokens': 7}, seq_len=L, batch_size=B)


def _rows(seed=0):
  """Packed rows [B, L + 1]: full rows, and a last row with three real tokens."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, SEP, (B, L + 1)).astype(np.int32)
  mask = np.ones((B, L + 1), np.float32)
  mask[:, -1] = 0
  mask[-1, 2:] = 0
  return {'tokens': tokens, 'mask': mask}


@pytest.fixture(scope='module')
def setup():
  build = lambda width: models.build('transformer', num_classes=V, width=width,  # noqa: E731
                                     depth=1, heads=2, max_len=L)
  teacher, student = build(16), build(8)
  teacher_vars = init_variables(teacher, key=jax.random.key(1), input_shape=(1, L))
  tx = optax.sgd(0.5)
  objective = losses.build_objective({'jsd': {'weight': 1.0, 'mixing_weight': 0.5}})
  parallel = Parallel('jit')  # over the tests' 8 CPU devices

  @functools.cache
  def make(fraction=None):
    settings = None if fraction is None else {**SETTINGS, 'student_data_fraction': fraction}
    wrap = None if settings is None else functools.partial(
        on_policy.wrap_update, student=student, settings=settings, sep_id=SEP, pad_id=PAD,
        batch_sharding=parallel.batch_sharding())
    step = make_distill_step(student=student, teachers=teacher, tx=tx, objective=objective,
                             parallel=parallel, wrap_update=wrap)
    return lambda state, rows: step(parallel.replicate(copy(state)),  # noqa: E731
                                    parallel.shard_batch(lm_batch(rows)),
                                    parallel.place_teacher(teacher_vars))

  state = create_train_state(student, tx, seed=0, input_shape=(1, L))
  make.teacher = teacher
  return student, teacher_vars, state, make


def _expected_rows(student, params, rows, key):
  """The student's samples as training rows, built from generate.sample with NumPy."""
  tokens, mask = rows['tokens'], rows['mask']
  P, N = SETTINGS['prompt_len'], SETTINGS['new_tokens']
  lengths = np.minimum(1 + mask[:, :P - 1].sum(1), P).astype(np.int32)
  out = generate.sample(student, {'params': params}, tokens[:, :P], lengths, key=key,
                        max_new_tokens=N, temperature=1.0, stop_token=SEP, pad_token=PAD)
  expected = {'tokens': np.full((B, L + 1), PAD, np.int32), 'mask': np.zeros((B, L + 1))}
  expected['tokens'][:, :P + N] = np.asarray(out.tokens)
  expected['mask'][:, :P + N - 1] = np.asarray(out.mask)[:, 1:]
  return expected, lengths


def test_student_rows_are_generate_sample_with_the_steps_key(setup):
  student, _, state, _ = setup
  rows = _rows()
  _, sample_key = on_policy.step_keys(state.rng, jnp.int32(3))
  got, failed = jax.jit(functools.partial(
      on_policy.student_rows, student, settings=SETTINGS, sep_id=SEP, pad_id=PAD))(
          {'params': state.params}, lm_batch(rows), sample_key)
  expected, lengths = _expected_rows(student, state.params, rows, sample_key)
  np.testing.assert_array_equal(got['tokens'], expected['tokens'])
  np.testing.assert_array_equal(got['mask'], expected['mask'])
  np.testing.assert_array_equal(failed, np.zeros(B))
  np.testing.assert_array_equal(lengths, [5] * 7 + [3])
  # The loss covers the sampled continuation only: not the fixed rows' mask.
  assert (np.asarray(got['mask'])[:, :lengths.min() - 1] == 0).all()
  assert not np.array_equal(got['mask'], rows['mask'])


def test_fraction_zero_is_supervised_token_kd_exactly(setup):
  student, teacher_vars, state, make = setup
  plain, gkd = make(), make(0.0)
  a = b = state
  for i in range(3):
    rows = _rows(i)
    a, metrics_a = plain(a, rows)
    b, metrics_b = gkd(b, rows)
    assert float(metrics_b['on_policy']) == 0.0 and float(metrics_b['check_generation']) == 0
    assert float(metrics_a['loss']) == float(metrics_b['loss'])
  # The coin's `lax.cond` makes another program than the plain step, which XLA may fuse and
  # round differently in the last bit (the losses above agree exactly): equal to float32's
  # resolution, not bit for bit.
  for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
    np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)


def test_fraction_one_trains_on_the_students_samples(setup):
  student, teacher_vars, state, make = setup
  rows = _rows(1)
  state = copy(state).replace(step=jnp.int32(4))
  expected, _ = _expected_rows(student, state.params, rows,
                               on_policy.step_keys(state.rng, state.step)[1])
  on, metrics = make(1.0)(state, rows)
  assert float(metrics['on_policy']) == 1.0
  reference, reference_metrics = make()(state, expected)
  fixed, fixed_metrics = make()(state, rows)
  np.testing.assert_allclose(metrics['loss'], reference_metrics['loss'], rtol=1e-6)
  assert not np.isclose(metrics['loss'], fixed_metrics['loss'], rtol=1e-2)
  for x, y in zip(jax.tree.leaves(on.params), jax.tree.leaves(reference.params)):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_pmap_and_shard_map_sample_per_device_alike(setup):
  student, teacher_vars, state, make = setup
  objective = losses.build_objective({'jsd': {'weight': 1.0, 'mixing_weight': 0.5}})
  losses_by_mode = {}
  for mode in ('jit', 'pmap', 'shard_map'):
    parallel = Parallel(mode)
    for fraction in (0.0, 1.0):
      step = make_distill_step(
          student=student, teachers=make.teacher, tx=optax.sgd(0.5), objective=objective,
          parallel=parallel, wrap_update=functools.partial(
              on_policy.wrap_update, student=student, sep_id=SEP, pad_id=PAD,
              settings={**SETTINGS, 'student_data_fraction': fraction},
              batch_sharding=parallel.batch_sharding()))
      _, metrics = step(parallel.replicate(copy(state)), parallel.shard_batch(lm_batch(_rows())),
                        parallel.place_teacher(teacher_vars))
      losses_by_mode[mode, fraction] = float(parallel.unreplicate(metrics)['loss'])
  for mode in ('pmap', 'shard_map'):
    np.testing.assert_allclose(losses_by_mode[mode, 0.0], losses_by_mode['jit', 0.0], rtol=1e-5)
  # Each device samples its rows from the step's key folded with its index: pmap and
  # shard_map draw alike, jit (one program over the global batch) otherwise.
  np.testing.assert_allclose(losses_by_mode['pmap', 1.0], losses_by_mode['shard_map', 1.0],
                             rtol=1e-5)


def test_a_failed_generation_stops_the_run(setup):
  _, teacher_vars, state, make = setup
  broken = copy(state).replace(params=jax.tree.map(lambda x: x * jnp.nan, state.params))
  _, metrics = make(1.0)(broken, _rows())
  assert float(metrics['check_generation']) == 1.0
  with pytest.raises(FloatingPointError, match='failed generation'):
    check_numerics(jax.device_get(metrics), 1)


def test_adaptive_buffer_holds_the_students_samples(setup):
  from jaxkd import on_policy_replay
  student, teacher_vars, state, make = setup
  settings = {**SETTINGS, 'adaptive': True, 'buffer_rows': 2 * B}
  objective = losses.build_objective({'jsd': {'weight': 1.0, 'mixing_weight': 0.5}})
  tx = optax.sgd(0.5)
  parallel = Parallel('jit')
  step = make_distill_step(student=student, teachers=make.teacher, tx=tx,
                           objective=objective, parallel=parallel,
                           wrap_update=functools.partial(
                               on_policy.wrap_update, student=student, settings=settings,
                               sep_id=SEP, pad_id=PAD, num_steps=4,
                               batch_sharding=parallel.batch_sharding()))
  replay_state = on_policy_replay.create_replay_state(
      copy(state), tx, rows=2 * B, width=L + 1, settings=settings, reference_loss=3.0)
  expected = []
  for i in range(2):  # phi = 1 and the buffer not full: both steps sample afresh
    params = copy(replay_state.params)
    expected.append(_expected_rows(student, params, _rows(i),
                                   on_policy.step_keys(replay_state.rng, jnp.int32(i))[1])[0])
    replay_state, metrics = step(parallel.replicate(replay_state),
                                 parallel.shard_batch(lm_batch(_rows(i))),
                                 parallel.place_teacher(teacher_vars))
    assert float(metrics['on_policy']) == 1.0 and float(metrics['replayed']) == 0.0
  replay = jax.device_get(replay_state.replay)
  assert int(replay['size']) == 2 * B and int(replay['next']) == 0
  for name in ('tokens', 'mask'):
    np.testing.assert_array_equal(replay[name], np.concatenate([e[name] for e in expected]))
  # The buffer full, step 2 of 4 samples afresh when u < phi (1 - 2 / 4), else replays.
  u = jax.random.uniform(on_policy.step_keys(replay_state.rng, jnp.int32(2))[0])
  assert int(on_policy_replay.branch(u, replay, jnp.int32(2), 4)) == (1 if u < 0.5 else 2)


def test_adaptive_fraction_rises_when_the_validation_loss_stalls():
  from jaxkd import on_policy_replay
  settings = {'loss_tolerance': 0.1, 'fraction_increment': 0.1}
  replay = {'fraction': 0.0, 'reference_loss': 2.0}
  falling = on_policy_replay.raise_fraction(replay, 1.5, settings=settings)
  assert (falling['fraction'], falling['reference_loss']) == (0.0, 2.0)
  within = on_policy_replay.raise_fraction(replay, 2.05, settings=settings)
  assert (within['fraction'], within['reference_loss']) == (0.0, 2.0)
  raised = on_policy_replay.raise_fraction(replay, 2.1, settings=settings)
  assert raised['fraction'] == np.float32(0.1) and raised['reference_loss'] == np.float32(2.1)
  capped = on_policy_replay.raise_fraction({'fraction': 0.95, 'reference_loss': 1.0}, 9.0,
                                           settings=settings)
  assert capped['fraction'] == 1.0


@pytest.mark.parametrize('change, name', [
    ({'student_data_fraction': 1.5}, 'student_data_fraction'),
    ({'prompt_len': 0}, 'prompt_len'),
    ({'prompt_len': 12, 'new_tokens': 8}, 'prompt_len \\+ new_tokens'),
    ({'temperature': 0.0}, 'temperature'),
    ({'top_p': 0.0}, 'top_p'),
    ({'adaptive': 'yes'}, 'adaptive'),
    ({'adaptive': True, 'buffer_rows': 4}, 'buffer_rows'),
    ({'lambda_': 0.5}, 'unknown'),
])
def test_bad_settings_are_named(change, name):
  with pytest.raises(ValueError, match=name):
    on_policy.check_settings({'prompt_len': 5, 'new_tokens': 7, **change}, seq_len=L,
                             batch_size=B)


# --- the language-model recipe's config.on_policy -----------------------------------------

@pytest.fixture(scope='module')
def trained_teacher(tmp_path_factory):
  import pathlib
  import sys
  sys.path.insert(0, str(pathlib.Path(__file__).parent))
  from test_text import _write_corpus
  from jaxkd.recipes import language_model
  root = tmp_path_factory.mktemp('on_policy')
  _write_corpus(root / 'source')
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv('JAXKD_PYDOC_DIR', str(root / 'source'))
    patch.setenv('JAXKD_DATA_DIR', str(root / 'data'))
    language_model.run(_recipe_config(model_overrides={'width': 32, 'depth': 1, 'heads': 2}),
                       str(root / 'teacher'))
    yield root


def _recipe_config(**changes):
  from jaxkd.recipes import language_model
  config = language_model.default_config()
  config.update(tokenizer='byte', seq_len=24, batch_size=8, num_steps=6, warmup_steps=1,
                learning_rate=1e-2, log_every=1, checkpoint_every=3, eval_every=3,
                eval_batch_size=8, max_train_rows=32, max_eval_rows=8, model='transformer',
                model_overrides={'width': 16, 'depth': 1, 'heads': 2})
  config.update(**changes)
  return config


def _student(root, workdir, **changes):
  import json
  from jaxkd.recipes import language_model
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv('JAXKD_PYDOC_DIR', str(root / 'source'))
    patch.setenv('JAXKD_DATA_DIR', str(root / 'data'))
    result = language_model.run(_recipe_config(
        teacher_dir=str(root / 'teacher'), terms={'jsd': {'weight': 1.0, 'mixing_weight': 0.5}},
        **changes), str(root / workdir))
  records = [json.loads(line) for line in open(root / workdir / 'metrics.jsonl')]
  return result, [r for r in records if 'loss' in r]


GKD = {'prompt_len': 8, 'new_tokens': 12}


@pytest.mark.slow
def test_recipe_resumed_run_is_exact(trained_teacher):
  root = trained_teacher
  kd, kd_records = _student(root, 'kd_here')
  # Fraction 0 through the recipe is token KD: the same losses at every logged step (to
  # float32's last bits: the coin's `lax.cond` is another program, which XLA may round
  # differently, as test_fraction_zero_is_supervised_token_kd_exactly says).
  zero, zero_records = _student(root, 'zero', on_policy={**GKD, 'student_data_fraction': 0.0})
  assert [r['on_policy'] for r in zero_records] == [0.0] * len(kd_records)
  np.testing.assert_allclose([r['loss'] for r in zero_records],
                             [r['loss'] for r in kd_records], rtol=1e-5)
  half = {**GKD, 'student_data_fraction': 0.5}
  whole, whole_records = _student(root, 'whole', on_policy=half)
  drawn = [r['on_policy'] for r in whole_records]
  assert 0.0 in drawn and 1.0 in drawn, drawn  # both kinds of batch within 6 steps (seed 0)
  assert whole['params_sha256'] != kd['params_sha256']
  _student(root, 'resumed', on_policy=half, stop_at=3)  # as a preemption after step 3
  resumed, resumed_records = _student(root, 'resumed', on_policy=half)
  assert resumed['params_sha256'] == whole['params_sha256']
  assert [r['loss'] for r in resumed_records] == [r['loss'] for r in whole_records]


@pytest.mark.slow
def test_recipe_adaptive_resumed_run_is_exact(trained_teacher):
  root = trained_teacher
  adaptive = {**GKD, 'adaptive': True, 'student_data_fraction': 1.0, 'buffer_rows': 16,
              'loss_tolerance': 0.0}
  whole, whole_records = _student(root, 'adaptive', on_policy=adaptive)
  assert {r['replayed'] for r in whole_records} == {0.0, 1.0}  # seed 0 draws both
  _student(root, 'adaptive_resumed', on_policy=adaptive, stop_at=3)
  resumed, resumed_records = _student(root, 'adaptive_resumed', on_policy=adaptive)
  assert resumed['params_sha256'] == whole['params_sha256']
  assert [r['loss'] for r in resumed_records] == [r['loss'] for r in whole_records]


def test_recipe_checks_the_settings_before_loading_data(tmp_path, monkeypatch):
  from jaxkd.recipes import language_model
  monkeypatch.setenv('JAXKD_PYDOC_DIR', str(tmp_path / 'nothing_here'))
  monkeypatch.setenv('JAXKD_DATA_DIR', str(tmp_path / 'data'))
  with pytest.raises(ValueError, match='student_data_fraction'):
    language_model.run(_recipe_config(teacher_dir='x', terms={'kd': {'weight': 1.0}},
                                      on_policy={'student_data_fraction': -0.1}),
                       str(tmp_path / 'w'))
  with pytest.raises(ValueError, match='teacher'):
    language_model.run(_recipe_config(on_policy=GKD), str(tmp_path / 'w'))


# The kill may land in an asynchronous save: its half-written folder is set aside (warned).
@pytest.mark.slow
@pytest.mark.filterwarnings('ignore::jaxkd.checkpoint.IncompleteCheckpointWarning')
def test_recipe_killed_mid_run_resumes_to_the_uninterrupted_parameters(trained_teacher):
  import json
  import os
  import pathlib
  import subprocess
  import sys
  from test_lm_recipe import KILLED_RUN  # SIGKILL after step 5 (checkpoints every 3)
  root = trained_teacher
  half = {**GKD, 'student_data_fraction': 0.5}
  whole, _ = _student(root, 'kill_whole', on_policy=half, num_steps=8, checkpoint_every=2)
  settings = _recipe_config(
      teacher_dir=str(root / 'teacher'), num_steps=8, checkpoint_every=2,
      terms={'jsd': {'weight': 1.0, 'mixing_weight': 0.5}}, on_policy=half).to_dict()
  env = {**os.environ, 'PYTHONPATH': str(pathlib.Path(__file__).parents[1]),
         'JAXKD_PYDOC_DIR': str(root / 'source'), 'JAXKD_DATA_DIR': str(root / 'data')}
  killed = subprocess.run([sys.executable, '-c', KILLED_RUN, json.dumps(settings),
                           str(root / 'killed')], env=env, capture_output=True, text=True)
  assert killed.returncode == -9, killed.stderr[-2000:]
  assert not (root / 'killed' / 'final_metrics.json').exists()
  resumed, _ = _student(root, 'killed', on_policy=half, num_steps=8, checkpoint_every=2)
  assert resumed['params_sha256'] == whole['params_sha256']


def test_recipe_refuses_the_adaptive_buffer_outside_jit(tmp_path, monkeypatch):
  from jaxkd.recipes import language_model
  monkeypatch.setenv('JAXKD_PYDOC_DIR', str(tmp_path / 'nothing_here'))
  with pytest.raises(ValueError, match="parallel='jit'"):
    language_model.run(_recipe_config(teacher_dir='x', terms={'kd': {'weight': 1.0}},
                                      parallel='pmap', on_policy={**GKD, 'adaptive': True}),
                       str(tmp_path / 'w'))
