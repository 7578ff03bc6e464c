"""jaxkd.seqkd and the language-model recipe's `config.seqkd`: prompts and loss masks, the
teacher's greedy continuations written once with a provenance that refuses another teacher or
other settings, a SeqKD student that learns them (and resumes exactly), and word-KD beside it."""
import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from test_text import _write_corpus  # noqa: E402

from jaxkd import models, seqkd  # noqa: E402
from jaxkd.recipes import language_model  # noqa: E402


def test_prompts_are_the_rows_first_real_tokens():
  tokens = np.arange(20, dtype=np.int32).reshape(2, 10)
  mask = np.ones((2, 10), np.float32)
  mask[:, -1] = 0
  mask[1, 2:] = 0  # a last packed row: three real tokens, then padding
  prompts, lengths = seqkd.prompts_of({'tokens': tokens, 'mask': mask}, 4)
  np.testing.assert_array_equal(prompts, tokens[:, :4])
  np.testing.assert_array_equal(lengths, [4, 3])


@pytest.mark.slow
def test_the_loss_mask_covers_the_continuation_only():
  model = models.build('transformer', num_classes=30, width=16, depth=1, heads=2, max_len=16)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
  variables = {'params': {**variables['params'],  # peaked, so greedy stops sometimes
                          'embed': {'embedding': jax.random.normal(jax.random.key(1), (30, 16))}}}
  rng = np.random.default_rng(0)
  prompts = rng.integers(0, 30, (5, 4)).astype(np.int32)
  lengths = np.array([4, 2, 4, 1, 3], np.int32)
  free = seqkd.decode_rows(model, variables, prompts, lengths, pad_id=29, sep_id=28,
                           settings={'decode': 'greedy', 'new_tokens': 6, 'batch_size': 2})
  stop = int(free['tokens'][0, 5])  # row 0's second new token
  rows = seqkd.decode_rows(model, variables, prompts, lengths, sep_id=stop, pad_id=29,
                           settings={'decode': 'greedy', 'new_tokens': 6, 'batch_size': 2})
  assert rows['tokens'].shape == rows['mask'].shape == (5, 10)
  for b, length in enumerate(lengths):
    generated = free['tokens'][b, length:length + 6]
    hits = np.flatnonzero(generated == stop)
    count = hits[0] + 1 if len(hits) else 6
    # position j is weighted exactly when its target j + 1 is a new token
    expected = np.zeros(10)
    expected[length - 1:length - 1 + count] = 1
    np.testing.assert_array_equal(rows['mask'][b], expected)
    np.testing.assert_array_equal(rows['tokens'][b, :length + count],
                                  np.concatenate([prompts[b, :length], generated[:count]]))
  assert rows['mask'][0].sum() <= 2
  beam = seqkd.decode_rows(model, variables, prompts, lengths, sep_id=stop, pad_id=29,
                           settings={'decode': 'beam', 'num_beams': 1, 'length_penalty': 0.0,
                                     'new_tokens': 6, 'batch_size': 2})
  for name in ('tokens', 'mask'):  # one beam is greedy
    np.testing.assert_array_equal(beam[name], rows[name])


def test_bad_settings_are_named():
  for changes, message in (({'decode': 'sample'}, "decode='sample'"),
                           ({'prompt_len': 0}, 'prompt_len=0'),
                           ({'prompt_len': 20, 'new_tokens': 20}, 'exceeds seq_len=32'),
                           ({'beams': 2}, r"unknown settings \['beams'\]")):
    with pytest.raises(ValueError, match=message):
      seqkd.check_settings(changes, seq_len=32)
  assert seqkd.check_settings({'decode': 'greedy', 'num_beams': 8}, seq_len=256)['num_beams'] == 1


def _config(**changes):
  config = language_model.default_config()
  config.update(tokenizer='byte', seq_len=32, batch_size=8, num_steps=6, warmup_steps=2,
                learning_rate=1e-2, log_every=2, checkpoint_every=0, eval_every=100,
                eval_batch_size=8, max_eval_rows=8, model='transformer',
                model_overrides={'width': 16, 'depth': 1, 'heads': 2})
  config.update(**changes)
  return config


def _losses(workdir):
  records = [json.loads(line) for line in open(workdir / 'metrics.jsonl')]
  return [r for r in records if 'loss' in r and 'valid_loss' not in r]


@pytest.mark.slow
def test_seqkd_trains_on_the_teachers_sequences_and_refuses_another_teacher(tmp_path,
                                                                             monkeypatch):
  from jaxkd import checkpoint
  _write_corpus(tmp_path / 'source')
  monkeypatch.setenv('JAXKD_PYDOC_DIR', str(tmp_path / 'source'))
  monkeypatch.setenv('JAXKD_DATA_DIR', str(tmp_path / 'data'))
  teacher = language_model.run(
      _config(num_steps=30, model_overrides={'width': 32, 'depth': 1, 'heads': 2}),
      str(tmp_path / 'teacher'))
  data_dir = str(tmp_path / 'seqkd_data')
  settings = {'decode': 'greedy', 'prompt_len': 8, 'new_tokens': 16, 'data_dir': data_dir}
  seqkd_run = lambda workdir, **kw: language_model.run(  # noqa: E731
      _config(teacher_dir=str(tmp_path / 'teacher'), seqkd=settings, num_steps=24,
              max_train_rows=48, checkpoint_every=12, **kw), str(tmp_path / workdir))
  student = seqkd_run('seqkd')
  # The data: 48 prompts, each the teacher's greedy continuation (a NumPy argmax of its
  # full pass), recorded with the fingerprint the teacher's run reported.
  record = json.loads((tmp_path / 'seqkd_data' / 'provenance.json').read_text())
  assert record['provenance']['teacher_sha256'] == teacher['params_sha256']
  assert record['provenance']['decoding']['new_tokens'] == 16
  tokens, mask = (np.load(tmp_path / 'seqkd_data' / f'{k}.npy') for k in ('tokens', 'mask'))
  assert tokens.shape == (48, 24) and student['seqkd']['rows'] == 48
  assert mask[:, :7].sum() == 0 and mask.sum() == student['seqkd']['continuation_tokens'] > 48
  model, variables, _ = language_model.load_lm(str(tmp_path / 'teacher'))
  logits = np.asarray(model.apply(variables, jnp.asarray(tokens[:4, :-1])))
  weighted = mask[:4, :-1] > 0
  np.testing.assert_array_equal(logits.argmax(-1)[weighted], tokens[:4, 1:][weighted])
  # It learns them: the training loss (on continuations only) falls.
  losses = [r['loss'] for r in _losses(tmp_path / 'seqkd')]
  assert len(losses) == 12 and np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3])
  # Stopped at step 12 and resumed (the data read back): the uninterrupted parameters.
  seqkd_run('resumed', stop_at=12)
  assert seqkd_run('resumed')['params_sha256'] == student['params_sha256']
  # Word-KD beside it reads the same data (not decoded again) and the live teacher.
  word = language_model.run(
      _config(teacher_dir=str(tmp_path / 'teacher'), seqkd=settings, max_train_rows=48,
              terms={'ce': {'weight': 0.5}, 'kd': {'weight': 0.5, 'temperature': 1.0}}),
      str(tmp_path / 'word_kd'))
  assert json.loads((tmp_path / 'seqkd_data' / 'provenance.json').read_text()) == record
  assert {'kd_loss', 'ce_loss'} <= set(_losses(tmp_path / 'word_kd')[-1])
  assert np.isfinite(word['valid']['loss'])
  # Another teacher (one parameter changed), or other decoding settings, are refused.
  saved, meta = checkpoint.load_variables(str(tmp_path / 'teacher'))
  saved = jax.tree.map(np.asarray, saved)
  saved['params']['norm']['bias'] = saved['params']['norm']['bias'] + 1e-3
  checkpoint.save_variables(str(tmp_path / 'other' / 'final'), saved, metadata=meta, step=30)
  with pytest.raises(ValueError, match='teacher_sha256: stored'):
    language_model.run(_config(teacher_dir=str(tmp_path / 'other'), seqkd=settings,
                               max_train_rows=48), str(tmp_path / 'refused'))
  with pytest.raises(ValueError, match='decoding.new_tokens: stored 16, this run 12'):
    language_model.run(_config(teacher_dir=str(tmp_path / 'teacher'), max_train_rows=48,
                               seqkd={**settings, 'new_tokens': 12}), str(tmp_path / 'refused'))
  with pytest.raises(ValueError, match='set config.teacher_dir'):
    language_model.run(_config(seqkd=settings), str(tmp_path / 'refused'))
