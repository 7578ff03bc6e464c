"""The language-model table's smoke profile: every row, 20 steps, on a generated corpus;
the results JSON has the runs, summaries, tests and the headroom the gate read."""
import json
import os
import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from test_text import _write_corpus  # noqa: E402

from jaxkd.tables import lm, reproduce  # noqa: E402

EXPERIMENTS = pathlib.Path(__file__).parents[1] / 'experiments'


@pytest.fixture
def corpus(tmp_path, monkeypatch):
  _write_corpus(tmp_path / 'source')
  monkeypatch.setenv('JAXKD_PYDOC_DIR', str(tmp_path / 'source'))
  monkeypatch.setenv('JAXKD_DATA_DIR', str(tmp_path / 'data'))


def _smoke(name: str, tmp_path):
  """`(table, payload, the saved JSON)` of table `name`'s smoke profile."""
  table = reproduce.load_table(str(EXPERIMENTS / 'configs' / f'reproduce_{name}.py'))
  payload = lm.command_line('smoke', table, default_root=str(tmp_path / 'root'),
                            full_results=str(tmp_path / 'results'),
                            argv=['--profile', 'smoke', '--results', str(tmp_path / 'out')])
  with open(tmp_path / 'out' / f'{name}_smoke.json') as f:
    return table, payload, json.load(f)


def test_smoke_profile_runs_every_row(corpus, tmp_path):
  table, payload, saved = _smoke('lm_kd', tmp_path)
  assert {r['row'] for r in saved['runs']} == set(table.ROWS)
  assert all(r['test_bits_per_byte'] > 0 and 'seed' in r for r in saved['runs'])
  assert {t['treatment'] for t in payload['tests']} == set(table.ROWS) - {'teacher', 'student'}
  assert all(t['n'] == 1 for t in payload['tests'])  # one seed each: no p-value yet
  losses = {r['row']: r['test_loss'] for r in saved['runs']}
  assert len(set(losses.values())) == len(losses)  # every row trained its own way
  assert saved['headroom'] is not None
  assert os.path.exists(tmp_path / 'out' / 'lm_kd_smoke.md')


def test_full_profile_waits_for_the_selection_and_the_gate_refuses(tmp_path):
  table = reproduce.load_table(str(EXPERIMENTS / 'configs' / 'reproduce_lm_kd.py'))
  onpolicy = reproduce.load_table(str(EXPERIMENTS / 'configs' / 'reproduce_lm_onpolicy.py'))
  if table.KD is None:
    for waiting in (table, onpolicy):  # the on-policy table's control is lm_kd's KD
      with pytest.raises(ValueError, match='not selected yet'):
        waiting.run_specs(waiting.get_config('full'), str(tmp_path))
  records = [{'row': 'teacher', 'valid_loss': 3.0}, {'row': 'student', 'valid_loss': 3.2}]
  assert lm.headroom(records, 'student') == pytest.approx(0.2)


def test_select_profile_runs_the_grid_with_a_seed_no_row_uses(tmp_path):
  table = reproduce.load_table(str(EXPERIMENTS / 'configs' / 'reproduce_lm_kd.py'))
  specs = table.run_specs(table.get_config('select'), str(tmp_path))
  grid = [s for s in specs if s.row.startswith('kd_')]
  assert len(grid) == len(table.SELECT_GRID)
  assert {s.seed for s in specs if s.row != 'teacher'} == {table.SELECT_SEED}
  smoke = table.run_specs(table.get_config('smoke'), str(tmp_path))
  assert table.SELECT_SEED not in {s.seed for s in smoke}
  records = [{'row': 'kd_t1_w0.5', 'seed': 10, 'test_bits_per_byte': 2.0}]
  assert [r['row'] for r in lm.summarize(records, list(table.ROWS))] == ['kd_t1_w0.5']


@pytest.mark.slow
def test_onpolicy_smoke_profile_runs_every_row_against_token_kd(corpus, tmp_path):
  table, payload, saved = _smoke('lm_onpolicy', tmp_path)
  assert {r['row'] for r in saved['runs']} == set(table.ROWS)
  stored = {r['row']: r.get('bytes_per_token') for r in saved['runs']}
  # K uint16 ids; top-k bfloat16: k (2 + 2) + 4 bytes, k = 3 and 15; full: 4 V, V = 258
  assert {row: stored[row] for row in table.caches(258)} == {
      'sampled_8': 16, 'sampled_32': 64, 'topk_16B': 16, 'topk_64B': 64}
  assert {r.get('full_bytes_per_token') for r in saved['runs'] if r['row'] in stored
          and stored[r['row']]} == {4 * 258}
  assert {t['treatment'] for t in payload['tests']} == set(table.ROWS) - {'teacher', 'token_kd'}
  assert {t['control'] for t in payload['tests']} == {'token_kd'}
  assert saved['headroom'] is not None  # the student alone's, not the control's
  markdown = (tmp_path / 'out' / 'lm_onpolicy_smoke.md').read_text()
  assert '| gkd_0.5 | token_kd |' in markdown and '16 B/token' in markdown
