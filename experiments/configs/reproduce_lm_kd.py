"""Distilling a language model on the Python 3.11 documentation ('pydoc', BPE 2,048).

    python experiments/reproduce_lm_kd.py --profile select  # KD settings on validation
    python experiments/reproduce_lm_kd.py --profile full    # the table
    python experiments/reproduce_lm_kd.py --profile smoke   # CI: every row, 20 steps

The teacher (`lm_teacher`: 4 layers, d = 192, 2.2 M parameters) trains once, 3,000 steps of
16 x 256 tokens, and is shared by every seed; the student (`lm_student`: 2 layers, d = 128,
0.66 M) trains 1,000 steps alone or from the live teacher with one objective per row. The
distillation rows refuse to start unless the teacher beats the student alone by >= 0.3
nats/token on validation (`min_headroom`).

Selection: the 'select' profile runs the KD grid (`SELECT_GRID`) with student seed 10, which
no row of the table uses, on validation only; its choice is written into `KD` below in a
commit before the judged seeds run. The full profile refuses to run while `KD` is None.

Cost (2 shared CPU cores, from the measured 2.2 CPU-s per teacher step and ~0.33 s per
student step, ~0.85 s per step with the live teacher): teacher ~1.8 h; student alone 5 x
~6 min; 20 distillation runs x ~14 min ~ 4.7 h; the select grid 4 x ~14 min: ~7.5 h.
"""
from __future__ import annotations

import ml_collections

from jaxkd.tables.sweep import RunSpec

NAME = 'lm_kd'
TITLE = 'Distilling a language model (pydoc, BPE 2,048)'
ROWS = {'teacher': 'lm_teacher, cross-entropy', 'student': 'lm_student alone',
        'kd': '+ token KD', 'reverse_kl': '+ reverse KL', 'jsd': '+ JSD (beta = 0.5)',
        'skew_kl': '+ skew KL (a = 0.1)', 'minilm': '+ MiniLM attention and value relations'}
CONTROL = 'student'
SELECT_SEED = 10
SELECT_GRID = ((1.0, 0.5), (1.0, 0.9), (2.0, 0.5), (2.0, 0.9))  # (temperature, KD weight)
# Chosen by the 'select' profile (validation bits per byte, student seed 10): not run yet.
KD = None  # e.g. dict(temperature=1.0, weight=0.5), committed before the full profile runs
SELECTION_NOTE = ('KD temperature and weight chosen on validation bits per byte by the '
                  f'select profile (student seed {SELECT_SEED}, used by no row), committed '
                  'before the judged seeds ran; every other setting fixed in advance.')

_FULL = dict(corpus='pydoc', tokenizer='bpe', seq_len=256, batch_size=16,
             teacher_steps=3000, student_steps=1000, min_headroom=0.3,
             teacher='lm_teacher', student='lm_student', teacher_overrides={},
             student_overrides={}, max_train_rows=0, max_eval_rows=0, log_every=50,
             eval_every=250, checkpoint_every=250, teacher_depth=4, warmup_steps=100)
PROFILES = {
    'full': dict(_FULL, seeds=dict(student=(0, 1, 2, 3, 4), kd=(0, 1, 2, 3, 4),
                                   default=(0, 1, 2)), select=False),
    'select': dict(_FULL, seeds={}, select=True),
    # every row once, 20 steps, tiny models, byte tokens (CI: a generated corpus)
    'smoke': dict(_FULL, tokenizer='byte', seq_len=32, batch_size=8, teacher_steps=20,
                  student_steps=20, min_headroom=float('-inf'), teacher='transformer',
                  student='transformer', teacher_overrides=dict(width=32, depth=2, heads=2),
                  student_overrides=dict(width=16, depth=2, heads=2), max_eval_rows=16,
                  log_every=10, eval_every=10, checkpoint_every=0, teacher_depth=2,
                  warmup_steps=2,
                  seeds=dict(default=(0,)), select=False),
}


def get_config(profile: str = 'full') -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict(PROFILES[profile or 'full'])
  config.profile = profile or 'full'
  return config


def objectives(config, kd: dict) -> dict:
  """Each distillation row's terms (cross-entropy beside every one, weight 1 - w)."""
  w, t = kd['weight'], kd['temperature']
  last = f'block{config.teacher_depth - 1}'
  with_ce = lambda name, **s: {'ce': {'weight': 1.0 - w},  # noqa: E731
                               name: {'weight': w, **s}}
  return {
      'kd': with_ce('kd', temperature=t),
      'reverse_kl': with_ce('reverse_kl', temperature=t),
      'jsd': with_ce('jsd', temperature=t, mixing_weight=0.5),
      'skew_kl': with_ce('skew_kl', temperature=t, skew=0.1),
      'minilm': {'ce': {'weight': 1.0}, 'minilm': {'weight': 1.0, 'teacher_block': last}},
  }


def recipe_config(config, root: str, model: str, overrides: dict, steps: int, seed: int,
                  terms: dict | None = None, teacher: bool = False):
  """The `language_model` recipe's settings of one run of this table (or of a table that
  shares its teacher: `root`/lm_kd/teacher/seed0)."""
  from jaxkd.recipes import language_model
  c = language_model.default_config()
  c.update(corpus=config.corpus, tokenizer=config.tokenizer, seq_len=config.seq_len,
           batch_size=config.batch_size, model=model, num_steps=steps, seed=seed,
           max_train_rows=config.max_train_rows, max_eval_rows=config.max_eval_rows,
           log_every=config.log_every, eval_every=config.eval_every,
           warmup_steps=config.warmup_steps,
           checkpoint_every=config.checkpoint_every)
  c.model_overrides = dict(overrides)
  c.terms = terms or {}
  if teacher:
    c.teacher_dir = f'{root}/{NAME}/teacher/seed0/final'
  return c


def student_config(config, root: str, seed: int, terms: dict | None = None,
                   teacher: bool = False):
  return recipe_config(config, root, config.student, config.student_overrides,
                       config.student_steps, seed, terms, teacher)


def teacher_spec(config, root: str) -> RunSpec:
  return RunSpec(NAME, 'teacher', 0, 'language_model',
                 recipe_config(config, root, config.teacher, config.teacher_overrides,
                               config.teacher_steps, 0))


def kd_settings(config) -> dict:
  """`KD` (the smoke profile: T = 1, weight 0.5 until it is chosen); the full profile
  refuses while `KD` is None."""
  kd = KD if config.profile == 'full' else KD or {'temperature': 1.0, 'weight': 0.5}
  if kd is None:
    raise ValueError('KD is not selected yet: run --profile select, write its choice into KD '
                     'in experiments/configs/reproduce_lm_kd.py and commit, then run the table.')
  return kd


def run_specs(config, root: str) -> list:
  """The teacher first, the student alone next (the headroom gate reads both), then the
  distillation rows; the select profile: the teacher, the student alone and the KD grid."""
  specs = [teacher_spec(config, root)]
  student = lambda seed, terms=None, teacher=False: student_config(  # noqa: E731
      config, root, seed, terms, teacher)
  if config.select:
    specs.append(RunSpec(NAME, 'student', SELECT_SEED, 'language_model', student(SELECT_SEED)))
    for t, w in SELECT_GRID:
      terms = objectives(config, {'temperature': t, 'weight': w})['kd']
      specs.append(RunSpec(NAME, f'kd_t{t:g}_w{w:g}', SELECT_SEED, 'language_model',
                           student(SELECT_SEED, terms, True), {'temperature': t, 'weight': w}))
    return specs
  kd = kd_settings(config)
  seeds = lambda row: config.seeds.get(row, config.seeds['default'])  # noqa: E731
  specs += [RunSpec(NAME, 'student', s, 'language_model', student(s)) for s in seeds('student')]
  for row, terms in objectives(config, kd).items():
    specs += [RunSpec(NAME, row, s, 'language_model', student(s, terms, True))
              for s in seeds(row)]
  return specs
