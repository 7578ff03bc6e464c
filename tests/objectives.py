"""Test helper: an objective over logits alone, called as `(student_logits, labels,
teacher_logits, *, step) -> (total, components)` through `Objective.apply`."""
import jax.numpy as jnp

from jaxkd import losses


def on_logits(objective: losses.Objective):
  """`objective.apply` on logits: teacher_logits one array, a sequence of them, or None."""

  def call(student_logits, labels, teacher_logits=None, *, step):
    if teacher_logits is None:
      teachers = []
    elif isinstance(teacher_logits, (list, tuple)):
      teachers = list(teacher_logits)
    else:
      teachers = [teacher_logits]
    batch = {} if labels is None else {'label': labels}
    total, components, _ = objective.apply(losses.Context(
        losses.Outputs(jnp.asarray(student_logits)),
        [losses.Outputs(jnp.asarray(t)) for t in teachers], batch, step=step))
    return total, components

  return call
