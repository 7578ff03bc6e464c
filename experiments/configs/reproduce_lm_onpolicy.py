"""On-policy, sequence-level and cached distillation of the language-model pair of
reproduce_lm_kd.py (pydoc, BPE 2,048; `lm_teacher` -> `lm_student`), 3 seeds (0, 1, 2).

    python experiments/reproduce_lm_onpolicy.py --profile full   # the table (after lm_kd's KD)
    python experiments/reproduce_lm_onpolicy.py --profile smoke  # CI: every row once, 6 steps

Rows (each student `lm_student`, 1,000 steps of 16 x 256 tokens, as reproduce_lm_kd.py's):
'student' alone; 'token_kd', the control every row is tested against: cross-entropy plus
token KD from the live teacher at reproduce_lm_kd.KD's temperature and weight; 'seqkd',
cross-entropy on the teacher's greedy continuations (Kim & Rush 2016; seqkd_pydoc.py's
'greedy'); 'gkd_0', 'gkd_0.5', 'gkd_1': GKD (Agarwal et al. 2024; gkd_pydoc.py) with JSD
(beta = 0.5) against the live teacher, the student's own samples replacing the rows'
continuations with probability 0 / 0.5 / 1; 'sampled_8', 'sampled_32': token KD's terms with
the live teacher replaced by a stored sampled cache of K = 8 / 32 draws per position
(Anshumann et al. 2025; `sampled_kd` at KD's temperature and weight); 'topk_16B', 'topk_64B':
the same with a top-k + rest-of-mass cache in bfloat16 whose k makes its bytes per token
(`jaxkd.cache_lm.bytes_per_token`) those of the sampled caches, 16 and 64 (k = 3 and 15 at
V = 2,048), or the nearest k below. The full float32 cache would take 8,192 bytes per token.

The teacher is reproduce_lm_kd.py's, run by the same spec into `ROOT/lm_kd/teacher/seed0`, and
the student-alone runs are lm_kd's seeds 0-2 (`ROOT/lm_kd/student`): both are shared with
that table when the two run under the same --root (the default does). The greedy SeqKD data
is decoded once and shared by the seeds; every cache row writes its own cache per seed.

Selection: none on this table. Every setting is fixed in advance from the papers (GKD's
lambda grid, beta = 0.5 and T = 1 sampling; Anshumann et al.'s K; SeqKD's greedy decoding)
or taken from reproduce_lm_kd.KD, chosen on validation there with a seed no row here uses;
the full profile refuses to run while that KD is None.

Cost (2 shared CPU cores; reproduce_lm_kd.py's ~0.33 s per student step and ~0.85 s with
the live teacher; docs/language-models.md's ~8,400 teacher forward tokens/s and ~1,800 greedy
teacher / ~1,550 sampled student new tokens/s; pydoc's train split, 9.65 MB, is ~10,000 rows
of 256 BPE tokens): teacher ~1.8 h and student alone 3 x ~6 min, nothing when lm_kd's ran
under the same root; token_kd and gkd_0 3 x ~14 min each; seqkd: ~1.9 M greedy tokens once
(~18 min) then 3 x ~6 min; gkd_0.5 and gkd_1: 16 x 192 sampled tokens (~2 s) on each step
that draws: 3 x ~31 and 3 x ~47 min; the four cache rows: a teacher pass over the training
rows per cache and seed (~5 min; 12 caches) then 3 x ~7 min each. ~8.5 h beside lm_kd's runs
(~10.5 h alone). Not run yet.
"""
from __future__ import annotations

import ml_collections

import gkd_pydoc
import reproduce_lm_kd as kd_table
import seqkd_pydoc
from jaxkd.tables.sweep import RunSpec

NAME = 'lm_onpolicy'
TITLE = 'On-policy, sequence-level and cached distillation of a language model (pydoc)'
CONTROL = 'token_kd'
ALONE = 'student'
SAMPLED = (8, 32)  # draws per position of the sampled caches
TOPK_VALUES = 'bfloat16'
SELECTION_NOTE = ('No selection on this table: settings fixed in advance from the papers; '
                  'the KD temperature and weight are reproduce_lm_kd.KD, chosen on validation '
                  'there with a seed no row here uses.')


def vocab_size(config) -> int:
  if config.tokenizer == 'byte':
    from jaxkd.data.tokenizer import ByteTokenizer
    return ByteTokenizer.vocab_size
  return config.vocab_size


def caches(vocab: int) -> dict[str, dict]:
  """Each cache row's `teacher_cache` kind and k, and its bytes per token: the sampled caches'
  K, then top-k in bfloat16 with the largest k whose bytes per token are at most theirs."""
  from jaxkd.cache_lm import bytes_per_token
  out = {}
  for draws in SAMPLED:
    size = bytes_per_token('sampled', vocab_size=vocab, k=draws)
    out[f'sampled_{draws}'] = {'kind': 'sampled', 'k': draws, 'bytes_per_token': size}
  for draws in SAMPLED:
    budget = out[f'sampled_{draws}']['bytes_per_token']
    k = max(k for k in range(1, budget + 1) if bytes_per_token(
        'topk', vocab_size=vocab, k=k, value_dtype=TOPK_VALUES) <= budget)
    out[f'topk_{budget}B'] = {'kind': 'topk', 'k': k, 'value_dtype': TOPK_VALUES,
                              'bytes_per_token': bytes_per_token(
                                  'topk', vocab_size=vocab, k=k, value_dtype=TOPK_VALUES)}
  return out


def _rows(vocab: int) -> dict[str, str]:
  """What each row is, with each cache's bytes per token (the same for any V <= 65,536) and
  the full float32 cache's at `vocab`."""
  from jaxkd.cache_lm import bytes_per_token
  full = bytes_per_token('full', vocab_size=vocab)
  rows = {'teacher': "lm_teacher, cross-entropy (lm_kd's)", 'student': 'lm_student alone',
          'token_kd': f'+ token KD, live teacher (control; as a full float32 cache: 4 V = '
                      f'{full:,} B/token at V = {vocab:,})',
          'seqkd': "CE on the teacher's greedy continuations",
          'gkd_0': 'GKD, JSD(0.5), student data 0', 'gkd_0.5': 'GKD, JSD(0.5), student data 0.5',
          'gkd_1': 'GKD, JSD(0.5), student data 1'}
  for row, cache in caches(vocab).items():
    what = (f"sampled cache, K = {cache['k']}" if cache['kind'] == 'sampled'
            else f"top-{cache['k']} cache, bfloat16")
    rows[row] = f"+ token KD from a {what}: {cache['bytes_per_token']} B/token"
  return rows


ROWS = _rows(2048)  # the full profile's vocabulary (runs record their own: `info`)

PROFILES = {
    'full': dict(kd_table.PROFILES['full'], seeds=(0, 1, 2), prompt_len=64, new_tokens=192),
    # every row once, tiny models, byte tokens, students 6 steps (CI: a generated corpus)
    'smoke': dict(kd_table.PROFILES['smoke'], seeds=(0,), prompt_len=8, new_tokens=12,
                  student_steps=6, log_every=3, eval_every=6),
}


def get_config(profile: str = 'full') -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict(PROFILES[profile or 'full'])
  config.profile = profile or 'full'
  return config


def run_specs(config, root: str) -> list:
  """lm_kd's teacher and student-alone runs (shared under the same root), then each row's
  seeds in `ROWS` order."""
  kd = kd_table.kd_settings(config)  # refuses the full profile until lm_kd's KD is chosen
  token_kd = kd_table.objectives(config, kd)['kd']
  student = lambda seed, terms=None: kd_table.student_config(  # noqa: E731
      config, root, seed, terms, teacher=terms is not None)
  generation = {'prompt_len': config.prompt_len, 'new_tokens': config.new_tokens}
  specs = [kd_table.teacher_spec(config, root)]
  specs += [RunSpec(kd_table.NAME, 'student', s, 'language_model', student(s))
            for s in config.seeds]
  plans = {'token_kd': ({'terms': token_kd}, {})}
  seqkd = seqkd_pydoc.get_config('greedy')
  plans['seqkd'] = ({'terms': seqkd.terms.to_dict(), 'seqkd': {
      **seqkd.seqkd.to_dict(), **generation, 'data_dir': f'{root}/{NAME}/seqkd_data'}}, {})
  for variant in ('lambda_0', 'lambda_0.5', 'lambda_1'):
    gkd = gkd_pydoc.get_config(variant)
    plans[f"gkd_{variant.split('_')[1]}"] = (
        {'terms': gkd.terms.to_dict(), 'on_policy': {**gkd.on_policy.to_dict(), **generation}},
        {})
  from jaxkd.cache_lm import bytes_per_token
  vocab = vocab_size(config)
  full = bytes_per_token('full', vocab_size=vocab)
  for row, cache in caches(vocab).items():
    settings = {k: cache[k] for k in ('kind', 'k', 'value_dtype') if k in cache}
    terms = dict(token_kd)
    if cache['kind'] == 'sampled':  # the cache's draws stand in for the teacher's softmax
      terms['sampled_kd'] = terms.pop('kd')
    info = {'bytes_per_token': cache['bytes_per_token'], 'full_bytes_per_token': full,
            'cache_kind': cache['kind'], 'cache_k': cache['k']}
    plans[row] = ({'terms': terms, 'teacher_cache': settings}, info)
  for row, (settings, info) in plans.items():
    for seed in config.seeds:
      c = student(seed, settings['terms'])
      for key in ('seqkd', 'on_policy'):
        if key in settings:
          c[key] = settings[key]
      if 'teacher_cache' in settings:  # per seed: a seed's variance includes its draws
        c.teacher_cache = {**settings['teacher_cache'],
                           'dir': f'{root}/{NAME}/caches/{row}/seed{seed}'}
      specs.append(RunSpec(NAME, row, seed, 'language_model', c, info))
  return specs
