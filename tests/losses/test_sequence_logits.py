"""Every registered per-example logit term takes sequences `[B, L, V]`, one value per
position (the same as on the flattened `[B * L, V]` rows); batch-level ones refuse them."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxkd.losses import LOSSES, Context, Outputs, build_objective
from sequence_refs import sequence_case

POSITION_TERMS = [name for name, term in LOSSES.items()
                  if term.per_example and not term().student_taps]
BATCH_TERMS = [name for name, term in LOSSES.items()
               if not term.per_example and not term().student_taps]


def _apply(objective, student, teacher, labels):
  student_outputs = Outputs(jnp.asarray(student))
  teacher_outputs = [Outputs(jnp.asarray(teacher))]
  params, state = objective.init(jax.random.key(0), student_outputs, teacher_outputs)
  # what a sampled teacher cache puts in the batch: 4 token ids per position (sampled_kd)
  rows, vocab = labels.shape, student.shape[-1]
  sample_ids = (jnp.arange(np.prod(rows) * 4) % vocab).reshape(rows + (4,)).astype(jnp.int32)
  return objective.apply(Context(student_outputs, teacher_outputs,
                                 {'label': labels, 'teacher_sample_ids': sample_ids},
                                 params=params, state=state))


@pytest.mark.parametrize('name', POSITION_TERMS)
def test_logit_term_is_per_position(name):
  assert {'kd', 'reverse_kl', 'jsd', 'skew_kl', 'skew_reverse_kl'} <= set(POSITION_TERMS)
  student, teacher, labels, _ = sequence_case(0, extreme=False)
  objective = build_objective({name: {'weight': 1.0}})
  total, components, _ = _apply(objective, student, teacher, labels)
  assert total.shape == labels.shape
  b, l, v = student.shape
  flat, flat_components, _ = _apply(objective, student.reshape(b * l, v),
                                    teacher.reshape(b * l, v), labels.reshape(b * l))
  np.testing.assert_allclose(total, np.asarray(flat).reshape(b, l), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(components[name],
                             np.asarray(flat_components[name]).reshape(b, l), rtol=1e-5,
                             atol=1e-6)


@pytest.mark.parametrize('name', BATCH_TERMS)
def test_batch_level_logit_term_refuses_sequences_by_name(name):
  student, teacher, labels, _ = sequence_case(1, extreme=False)
  objective = build_objective({name: {'weight': 1.0}})
  with pytest.raises(ValueError, match=f"'{name}'.*relates the examples of a batch"):
    _apply(objective, student, teacher, labels)
