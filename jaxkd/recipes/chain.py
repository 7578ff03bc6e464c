"""Chains of teachers: born-again networks and teacher-assistant chains, one config each.

    generation 0 --teaches--> generation 1 --teaches--> ... --> generation K
                  (and, optionally, all generations together --teach--> one more student)

Born-again networks (Furlanello et al., ICML 2018): every generation has the same
architecture; the generations' ensemble (their averaged softened predictions, the
multi-teacher 'ensemble' mode) then teaches a final student. Teacher-assistant KD (Mirzadeh
et al., AAAI 2020): models of decreasing size, teacher -> assistant(s) -> student.

Every link is an ordinary run of the `train` (generation 0) or `distill` recipe in its own
WORKDIR/<k>-<model>, so each resumes, is checkpointed and exported like any run, and the
next one reads it as its teacher.
"""
from __future__ import annotations

import json
import os

from jaxkd import paths
from jaxkd.recipes.distillation import build_objective, distill
from jaxkd.recipes.environment import run_provenance, utc_now
from jaxkd.recipes.provenance import write_json
from jaxkd.recipes.run import selection_policy
from jaxkd.recipes.train import train
from jaxkd.recipes.validate import check_config

SEED_STRIDE = 1000  # generation k is initialized from seed + 1000 k (distinct up to 1000 seeds)


def chain_models(config) -> list[str]:
  """`config.chain.models` ('lenet5,lenet5_mid,lenet5_half'), at least two (one after a
  `teacher_dir`)."""
  spec = (config.get('chain') or {}).get('models', '')
  names = [n.strip() for n in str(spec).split(',')]
  if str(spec).strip() and not all(names):
    raise ValueError(f'chain.models={spec!r} has an empty entry; name one zoo model between '
                     'each pair of commas, e.g. --config.chain.models=lenet5,lenet5_half.')
  names = [n for n in names if n]
  first = 1 if config.get('teacher_dir') else 2
  if len(names) < first:
    raise ValueError(f'chain.models={spec!r} names {len(names)} model(s); a chain needs at least '
                     f'{first} (2 from scratch: a teacher and its student; 1 after an existing '
                     'teacher_dir), e.g. --config.chain.models=lenet5,lenet5_mid,lenet5_half.')
  return names  # each a zoo model: `check_config` refused the others


def link_config(config, *, model: str, generation: int, teacher_dirs: list[str]):
  """The config of one link: the chain's, with its model, seed and teacher(s)."""
  link = config.copy_and_resolve_references()
  with link.unlocked():
    link.model = model
    link.seed = config.seed + SEED_STRIDE * generation
    link.teacher_dir = ','.join(teacher_dirs)
    if len(teacher_dirs) > 1:  # the generations' ensemble teaches
      if not link.terms:
        link.kd.multi_teacher = 'ensemble'
      for name, settings in link.terms.items():
        if settings.get('loss', name) == 'kd':
          settings.multi_teacher = 'ensemble'
  return link


def _finished(workdir: str, model: str) -> dict | None:
  """A link already run to the end in `workdir` (its final metrics, for `model`), or None."""
  path = os.path.join(workdir, 'final_metrics.json')
  if not os.path.exists(path):
    return None
  with open(path) as f:
    final = json.load(f)
  if final.get('model') != model:
    raise ValueError(f'{workdir} holds a finished run of {final.get("model")!r}, not {model!r}; '
                     'use a new workdir for a different chain.')
  return final


CHAIN_CONFIG = 'chain_config.json'  # the settings a chain's workdir was started with


def check_chain_workdir(config, workdir: str) -> dict:
  """Refuses, before any link runs, a WORKDIR that holds a chain of other settings (other
  models, temperature, seed, ...): its finished links would be reused as if they were this
  chain's. Returns the settings to record (`CHAIN_CONFIG`)."""
  settings = json.loads(config.to_json_best_effort(sort_keys=True))
  recorded = os.path.join(workdir, CHAIN_CONFIG)
  if os.path.exists(recorded):
    with open(recorded) as f:
      differing = paths.differences(json.load(f), settings)
  elif os.path.exists(os.path.join(workdir, 'final_metrics.json')):  # a chain from before
    with open(os.path.join(workdir, 'final_metrics.json')) as f:
      summary = json.load(f)
    differing = paths.differences(
        {'chain.models': summary.get('chain'), 'chain.ensemble': summary.get('ensemble')},
        {'chain.models': chain_models(config),
         'chain.ensemble': bool((config.get('chain') or {}).get('ensemble', False))})
    differing = differing or {'(settings)': ('not recorded', 'this run\'s')}
  else:
    return settings
  if differing:
    details = '; '.join(f'{k}: workdir {a!r}, this run {b!r}' for k, (a, b) in
                        list(differing.items())[:5])
    raise FileExistsError(f'{workdir!r} holds a chain of other settings ({details}); its '
                          'finished links would be reused as this chain\'s. Nothing was changed: '
                          'use a new --workdir, or the original settings.')
  return settings


def chain(config, workdir: str) -> dict:
  """Runs the chain `config.chain.models` in WORKDIR/<k>-<model>.

  Generation 0 is trained with labels (or is `config.teacher_dir`, an existing teacher, in
  which case every model of the chain is a student); each next generation is distilled
  from the one before with `config.terms` (or the `config.kd` shorthand). With
  `config.chain.ensemble`, one more student of the last architecture is distilled from the
  ensemble of every generation (born-again networks' BANE, taught through the multi-teacher
  'ensemble' mode). Generation k uses seed `seed + 1000 k`. Finished links are reused, so
  a rerun resumes the chain. Writes WORKDIR/final_metrics.json: the last student's final
  metrics plus `generations` (model, workdir, test accuracy of each link).
  """
  check_config(config)
  selection_policy(config)
  names = chain_models(config)
  with_ensemble = bool((config.get('chain') or {}).get('ensemble', False))
  build_objective(config, num_teachers=1, steps_per_epoch=1)  # refused before any run
  settings = check_chain_workdir(config, workdir)
  links = []  # (kind, model, generation, teacher dirs)
  teachers = [config.teacher_dir] if config.get('teacher_dir') else []
  for k, name in enumerate(names):
    links.append(('distill' if teachers or k else 'train', name, k, list(teachers[-1:])))
    teachers.append(os.path.join(workdir, f'{k}-{name}'))
  generations = teachers[-len(names):]
  if with_ensemble:
    if len(generations) < 2:
      raise ValueError('chain.ensemble distils from the ensemble of the generations; the chain '
                       'has one, give chain.models at least 2.')
    links.append(('distill', names[-1], len(names), generations))
  write_json(os.path.join(workdir, CHAIN_CONFIG), settings)
  started = utc_now()
  records, final = [], None
  for kind, name, k, teacher_dirs in links:
    link_dir = os.path.join(workdir, f'{k}-{name}' if k < len(names) else f'ensemble-{name}')
    link = link_config(config, model=name, generation=k, teacher_dirs=teacher_dirs)
    final = _finished(link_dir, name)
    if final is None:
      final = (train if kind == 'train' else distill)(link, link_dir)
    records.append({'generation': k, 'model': name, 'workdir': link_dir, 'kind': kind,
                    'teachers': teacher_dirs, 'test_accuracy': final['test_accuracy'],
                    'params_sha256': final['params_sha256']})
  summary = {**final, 'generations': records, 'chain': names, 'ensemble': with_ensemble,
             # the chain's own sitting (each link's final metrics hold the link's)
             'provenance': run_provenance(config, started=started)}
  write_json(os.path.join(workdir, 'final_metrics.json'), summary)
  return summary
