"""One registry of objective terms by name, and objectives built from a by-name spec."""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from jaxkd.losses.contrastive_terms import CRD
from jaxkd.losses.feature_terms import AT, FitNet
from jaxkd.losses.logit_terms import CTKD, DIST, DKD, JSD, NKD, TTM, WTTM, ReverseKL
from jaxkd.losses.map_terms import FSP, ICKD, NST, OFD, VID
from jaxkd.losses.multiscale_terms import SDD, ReviewKD
from jaxkd.losses.objective import Objective
from jaxkd.losses.relation_terms import CC, PKT, RKD, SP
from jaxkd.losses.terms import KD, CrossEntropy, Term, normalised_teacher_weights

# name -> term factory (a frozen dataclass of the term's keyword-only hyper-parameters).
LOSSES: Mapping[str, type[Term]] = {
    term.name: term for term in (CrossEntropy, KD, ReverseKL, JSD, DKD, DIST, NKD, TTM, WTTM,
                                 CTKD, FitNet, AT, SP, CC, RKD, PKT, NST, ICKD, FSP, VID, OFD, CRD,
                                 ReviewKD, SDD)
}


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
                    num_teachers: int | None = None) -> Objective:
  """An objective from `{term name: {'loss': registry name (default: the term name),
  'weight': constant or schedule, **hyper-parameters}}`, e.g.
  `{'ce': {'weight': 1.0}, 'dkd': {'weight': 1.0, 'temperature': 4.0}}`."""
  terms = {}
  for name, settings in spec.items():
    settings = dict(settings)
    loss = settings.pop('loss', name)
    if 'weight' not in settings:
      raise ValueError(f'Term {name!r} has no weight; give e.g. {{"weight": 1.0}}.')
    weight = settings.pop('weight')
    terms[name] = (weight, make_term(loss, **settings))
  return Objective.of(num_teachers=num_teachers, **terms)
