"""One registry of objective terms by name, and objectives built from a by-name spec.

A method is one module of `jaxkd.losses.methods` and one line below."""
from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Mapping

from jaxkd.losses.objective import Objective, normalised_teacher_weights
from jaxkd.losses.terms import Term


def _method(module: str, term: str) -> type[Term]:
  """The term class `term` of `jaxkd.losses.methods.<module>`."""
  return getattr(importlib.import_module(f'jaxkd.losses.methods.{module}'), term)


# One line per method: its module in `jaxkd.losses.methods` and its term class.
_TERMS: tuple[type[Term], ...] = (
    _method('ce', 'CrossEntropy'),
    _method('kd', 'KD'),
    _method('reverse_kl', 'ReverseKL'),
    _method('jsd', 'JSD'),
    _method('dkd', 'DKD'),
    _method('dist', 'DIST'),
    _method('nkd', 'NKD'),
    _method('ttm', 'TTM'),
    _method('wttm', 'WTTM'),
    _method('ctkd', 'CTKD'),
    _method('fitnet', 'FitNet'),
    _method('at', 'AT'),
    _method('sp', 'SP'),
    _method('cc', 'CC'),
    _method('rkd', 'RKD'),
    _method('pkt', 'PKT'),
    _method('nst', 'NST'),
    _method('ickd', 'ICKD'),
    _method('fsp', 'FSP'),
    _method('vid', 'VID'),
    _method('ofd', 'OFD'),
    _method('crd', 'CRD'),
    _method('reviewkd', 'ReviewKD'),
    _method('sdd', 'SDD'),
    _method('logit_mse', 'LogitMSE'),
    _method('skew_kl', 'SkewKL'),
    _method('skew_reverse_kl', 'SkewReverseKL'),
    _method('hidden_mse', 'HiddenMSE'),
    _method('minilm', 'MiniLM'),
    _method('sampled_kd', 'SampledKD'),
)

# name -> term factory (a frozen dataclass of the term's keyword-only hyper-parameters).
LOSSES: Mapping[str, type[Term]] = {term.name: term for term in _TERMS}


def make_term(name: str, **hyperparams: Any) -> Term:
  """`LOSSES[name](**hyperparams)`, with errors that list the valid names and settings."""
  if name not in LOSSES:
    raise ValueError(f'Unknown loss {name!r}; valid: {", ".join(map(repr, LOSSES))}.')
  factory = LOSSES[name]
  valid = [f.name for f in dataclasses.fields(factory)]
  unknown = sorted(set(hyperparams) - set(valid))
  if unknown:
    raise ValueError(f'Unknown setting(s) {unknown} for loss {name!r}; valid: {valid}.')
  if hyperparams.get('teacher_weights') is not None:
    hyperparams['teacher_weights'] = normalised_teacher_weights(
        hyperparams['teacher_weights'], None)
  for key, value in hyperparams.items():  # configs give lists; terms hold tuples
    if isinstance(value, list):
      hyperparams[key] = tuple(value)
  return factory(**hyperparams)


def build_objective(spec: Mapping[str, Mapping[str, Any]], *,
                    num_teachers: int | None = None,
                    run: Mapping[str, Any] | None = None) -> Objective:
  """An objective from `{term name: {'loss': registry name (default: the term name),
  'weight': constant or schedule, **hyper-parameters}}`, e.g.
  `{'ce': {'weight': 1.0}, 'dkd': {'weight': 1.0, 'temperature': 4.0}}`.

  `run` holds what a recipe knows of the run (e.g. `num_data`, the training split's size;
  `label_smoothing`): a term takes each setting it lists in `from_run` from it when the spec
  leaves that setting out (or gives None)."""
  terms = {}
  for name, settings in spec.items():
    settings = dict(settings)
    loss = settings.pop('loss', name)
    if 'weight' not in settings:
      raise ValueError(f'Term {name!r} has no weight; give e.g. {{"weight": 1.0}}.')
    weight = settings.pop('weight')
    for setting in getattr(LOSSES.get(loss), 'from_run', ()):
      if settings.get(setting) is None and setting in (run or {}):
        settings[setting] = run[setting]
    terms[name] = (weight, make_term(loss, **settings))
  return Objective.of(num_teachers=num_teachers, **terms)
