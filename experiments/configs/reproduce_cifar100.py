"""CIFAR-100 teacher -> student pairs of the CRD / DKD tables, ready for a GPU and the data:
profiles 'full' (240 epochs each, 5 seeds) and 'tiny' (a smoke run on whatever archive
$JAXKD_CIFAR100_DIR holds; CI gives it a generated one).

    JAXKD_CIFAR100_DIR=/data/cifar python experiments/reproduce_cifar100.py --profile full

Per pair: the teacher, the student alone, KD (T = 4, hard 0.1, soft 0.9) and each method of
`config.methods` (registered names; logit methods need no taps), every run on the recipe of
`cifar100.py`. Published figures (top-1 %, the CRD and DKD papers) are beside ours. The
expected cost on one modern GPU: ~1-3 h per 240-epoch run (resnet56, wrn-40-2; resnet32x4
longer), 5 seeds x (teacher, student, KD, DKD) x 3 pairs = 60 runs.
"""
import ml_collections

import distill_cifar100
from cifar100 import get_config as train_config
from jaxkd.tables import reproduce, sweep
from jaxkd.tables.sweep import RunSpec

NAME = 'cifar100'
PAIRS = {'resnet56_resnet20': ('resnet56', 'resnet20'),
         'resnet32x4_resnet8x4': ('resnet32x4', 'resnet8x4'),
         'wrn_40_2_wrn_16_2': ('wrn_40_2', 'wrn_16_2')}
# Top-1 % on CIFAR-100: teacher, student alone, KD, DKD, CRD (CRD and DKD papers' tables).
PUBLISHED = {'resnet56_resnet20': dict(teacher=72.34, student=69.06, kd=70.66, dkd=71.97,
                                       crd=71.16),
             'resnet32x4_resnet8x4': dict(teacher=79.42, student=72.50, kd=73.33, dkd=76.32,
                                          crd=75.51),
             'wrn_40_2_wrn_16_2': dict(teacher=75.61, student=73.26, kd=74.92, dkd=76.23,
                                       crd=75.48)}
PROFILES = {
    'full': dict(seeds=(0, 1, 2, 3, 4), pairs=tuple(PAIRS), methods=('dkd',), epochs=240,
                 batch_size=64, eval_batch_size=1000),
    # A smoke run of the machinery: the smallest zoo ResNets, one epoch of a tiny archive.
    'tiny': dict(seeds=(0,), pairs=('resnet56_resnet20',), methods=('dkd',), epochs=1,
                 batch_size=4, eval_batch_size=8, models=('resnet8', 'resnet8')),
}


def get_config(profile: str = 'full') -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict(PROFILES[profile or 'full'])
  config.profile = profile or 'full'
  return config


def _sized(run, config, seed):
  run.seed, run.num_epochs = seed, config.epochs
  run.batch_size, run.eval_batch_size = config.batch_size, config.eval_batch_size
  return run


def run_specs(config, root: str) -> list:
  specs = []
  for seed in config.seeds:
    for pair in config.pairs:
      teacher_model, student_model = config.get('models') or PAIRS[pair]
      teacher = RunSpec(pair, 'teacher', seed, 'train',
                        _sized(train_config(teacher_model), config, seed))
      specs += [teacher, RunSpec(pair, 'student', seed, 'train',
                                 _sized(train_config(student_model), config, seed))]
      for method in ('kd', *config.methods):
        run = _sized(distill_cifar100.get_config(method), config, seed)
        run.model, run.teacher_dir = student_model, teacher.workdir(root)
        specs.append(RunSpec(pair, method, seed, 'distill', run))
  return specs


def tabulate(records, config) -> dict:
  return dict(runs=records, summary=sweep.summarize(records),
              published={pair: PUBLISHED[pair] for pair in config.pairs})


def render(payload: dict) -> str:
  lines = reproduce.header(f"CIFAR-100 pairs ({payload['profile']} profile)", payload)
  rows = [dict(r, pair=r['table']) for r in payload['summary']]
  lines += reproduce.markdown_table([
      ('pair', lambda r: r['pair']), ('row', lambda r: r['row']),
      ('seeds', lambda r: str(r['n'])),
      ('test acc % (last epoch)', lambda r: reproduce.cell(r, 'test_accuracy')),
      ('published %', lambda r: str(payload['published'][r['pair']].get(r['row'], ''))),
  ], rows)
  lines += reproduce.selection_lines(
      payload, 'none: the last epoch of the papers\' schedule, as the papers report it.')
  return '\n'.join(lines)
