"""Relation terms: how the examples of a batch relate to each other, matched between student
and teacher (SP, CC, RKD, PKT). Each gives one value per batch, computed on the global batch
under every parallel mode (the features are gathered over the data axis)."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxkd.losses.feature.relation import cc_loss, pkt_loss, rkd_loss, sp_loss
from jaxkd.losses.terms import OneTap, Term, combine_teachers, gather, validated


@dataclasses.dataclass(frozen=True)
class _Relation(OneTap, Term):
  """A batch-level term over one student tap and one teacher tap (flattened per example)."""

  student_tap: str = 'pool2'
  teacher_tap: str = 'pool2'
  teacher_weights: tuple[float, ...] | None = None

  per_example = False

  def relation(self, student: jax.Array, teacher: jax.Array) -> jax.Array:
    raise NotImplementedError

  def __call__(self, student, teachers, batch, *, step, key, params, state, axis_name):
    del batch, step, key, params
    features = gather(student.features[self.student_tap].astype(jnp.float32), axis_name)
    per_teacher = [self.relation(features, gather(
        t.features[self.teacher_tap].astype(jnp.float32), axis_name)) for t in teachers]
    return (*combine_teachers(self.teacher_weights, per_teacher), state)


@dataclasses.dataclass(frozen=True)
class SP(_Relation):
  """Similarity-preserving KD (Tung & Mori 2019, `sp_loss`): the batch's row-normalised
  similarity matrices of the features at the taps (the paper: the last stage)."""

  name = 'sp'

  def relation(self, student, teacher):
    return sp_loss(student, teacher)


@dataclasses.dataclass(frozen=True)
class CC(_Relation):
  """Correlation congruence (Peng et al. 2019, `cc_loss`): the batch's Gaussian-RBF kernel
  matrices (order-`order` Taylor expansion, `gamma`) of the L2-normalised embeddings."""

  gamma: float = 0.4
  order: int = 2

  name = 'cc'

  def __post_init__(self):
    validated('gamma', self.gamma, positive=True)
    if not isinstance(self.order, int) or self.order < 1:
      raise ValueError(f'order must be an int >= 1, got {self.order!r}; the paper uses 2.')

  def relation(self, student, teacher):
    return cc_loss(student, teacher, gamma=self.gamma, order=self.order)


@dataclasses.dataclass(frozen=True)
class RKD(_Relation):
  """Relational KD (Park et al. 2019, `rkd_loss`): smooth-L1 between the normalised pairwise
  distances (`distance_weight`) and the triplet angles (`angle_weight`) of the embeddings."""

  distance_weight: float = 25.0
  angle_weight: float = 50.0

  name = 'rkd'

  def __post_init__(self):
    validated('distance_weight', self.distance_weight, positive=False)
    validated('angle_weight', self.angle_weight, positive=False)

  def relation(self, student, teacher):
    return rkd_loss(student, teacher, distance_weight=self.distance_weight,
                    angle_weight=self.angle_weight)


@dataclasses.dataclass(frozen=True)
class PKT(_Relation):
  """Probabilistic knowledge transfer (Passalis & Tefas 2018, `pkt_loss`): KL between the
  batch's cosine-similarity distributions of the embeddings."""

  name = 'pkt'

  def relation(self, student, teacher):
    return pkt_loss(student, teacher)
