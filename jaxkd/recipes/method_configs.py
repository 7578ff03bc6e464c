"""Every distillation method of `jaxkd.losses.LOSSES` as a named distillation config of the
LeNet-5 pair, with its paper's defaults: the term's field defaults and its `paper`
(`jaxkd.losses.Paper`: weights and epoch settings), read from the registry, plus the
modules the method taps on LeNet-5 (the one thing the pair sets beyond the papers).

    config = method_config('dkd+fitnet')   # `A+B`: B's terms added to A's (A's CE weight)
    config.teacher_dir = 'workdirs/teacher'
    recipes.distill(config, 'workdirs/dkd_fitnet')

`experiments/configs/kd_methods.py:NAME` is this config. Settings named `<x>_epochs` are
turned into `<x>_steps` by the recipe, with the run's steps per epoch. Other models list
their feature paths in `jaxkd.models.feature_paths`.
"""
from __future__ import annotations

import dataclasses

import ml_collections

from jaxkd.losses import LOSSES
from jaxkd.recipes import defaults

_PENULTIMATE = dict(student_tap='dense2', teacher_tap='dense2')
_STAGES = dict(student_taps=('pool1', 'pool2'), teacher_taps=('pool1', 'pool2'))
# What the LeNet-5 pair sets beyond the papers' defaults: the modules each method taps.
LENET5_TAPS = {
    'fitnet': dict(student_tap='pool2', teacher_tap='pool2'),  # a middle stage
    'at': _STAGES,  # every stage
    'sp': dict(student_tap='pool2', teacher_tap='pool2'),  # the last conv stage
    'cc': _PENULTIMATE,
    'rkd': _PENULTIMATE,
    'pkt': _PENULTIMATE,
    'nst': _STAGES,  # the intermediate maps
    'ickd': dict(student_taps=('pool2',), teacher_taps=('pool2',)),  # the last conv stage
    # The flow between conv2 (10x10) and pool2 (5x5): pool1 (14x14) pools onto neither.
    'fsp': dict(student_taps=('conv2', 'pool2'), teacher_taps=('conv2', 'pool2')),
    'vid': _STAGES,
    # Pre-ReLU maps (the conv outputs); LeNet-5 has no BatchNorm, so the margin reads the
    # batch's statistics.
    'ofd': dict(student_taps=('conv1', 'conv2'), teacher_taps=('conv1', 'conv2')),
    'crd': _PENULTIMATE,  # num_data: the training split's size, filled in by the recipe
    'reviewkd': _STAGES,  # fused deepest first
    # sdd taps the last stage of a ResNet/WRN (its defaults): it needs a classifier on the
    # global average of that map, not LeNet-5's; use it with e.g. --config.model=resnet8.
}
GAP_ONLY = ('sdd',)  # methods that need a global-average-pool classifier (not LeNet-5)
# Methods that read a transformer's taps (`block<i>`, `block<i>/attention/...`): run them on
# language models (jaxkd.recipes.language_model), e.g. lm_student taught by lm_teacher.
LANGUAGE_ONLY = ('hidden_mse', 'minilm', 'sampled_kd')
# Settings of a registered method under another name: name -> (its loss, CE weight, settings).
VARIANTS = {
    # KD with logit standardisation, Sun et al. 2024: base T 2, KD weight 9, CE 0.1.
    'kd_ls': ('kd', 0.1, dict(weight=9.0, temperature=2.0, standardize=True)),
}


def paper_settings(name: str) -> dict:
  """The registry's term `name` with its paper's weight, field defaults and epoch settings,
  and the taps of the LeNet-5 pair."""
  term = LOSSES[name]
  paper = term.paper
  settings = {'weight': paper.weight}
  for field in dataclasses.fields(term):
    if field.name not in term.from_run and (
        field.name.removesuffix('_steps') not in paper.epochs):
      settings[field.name] = field.default
  settings.update({f'{key}_epochs': value for key, value in paper.epochs.items()})
  return {**settings, **LENET5_TAPS.get(name, {})}


def _methods() -> dict:
  """name: (cross-entropy weight, {term: settings}), in the registry's order, variants after
  the logit methods."""
  methods = {}
  for name, term in LOSSES.items():
    if name == 'ce':
      continue
    methods[name] = (term.paper.ce_weight, {name: paper_settings(name)})
    if name == 'ctkd':
      for variant, (loss, ce_weight, settings) in VARIANTS.items():
        methods[variant] = (ce_weight, {loss: {**paper_settings(loss), **settings}})
  return methods


# name: (cross-entropy weight, {term: settings}) of every named method.
METHODS = _methods()


def method_config(methods: str = 'kd') -> ml_collections.ConfigDict:
  """The LeNet-5-Half distillation config (`defaults.distillation`) whose objective is the
  named methods' terms, `'A+B'` joined: cross-entropy at A's weight, then each one's terms."""
  names = (methods or 'kd').split('+')
  unknown = [n for n in names if n not in METHODS]
  if unknown:
    raise ValueError(f'Unknown method(s) {unknown}; valid: {sorted(METHODS)} (join with +).')
  config = defaults.distillation('lenet5_half')
  terms = {'ce': dict(weight=METHODS[names[0]][0])}
  for name in names:
    terms.update({term: dict(settings) for term, settings in METHODS[name][1].items()})
  config.terms = ml_collections.ConfigDict(terms)
  config.method = '+'.join(names)
  return config
