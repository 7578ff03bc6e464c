"""MiniLM (Wang et al. 2020): self-attention distributions and value relations, per head."""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from jaxkd.losses.numerics import kl, upcast
from jaxkd.losses.terms import Paper, Term


def _per_query_kl(teacher_probs: jax.Array, student_probs: jax.Array) -> jax.Array:
  """``KL(teacher || student)`` over the keys of `[B, N, L, L]` rows, averaged over heads:
  `[B, L]` (keys either gives probability 0, e.g. future ones, contribute 0)."""
  teacher_probs, student_probs = upcast(teacher_probs), upcast(student_probs)
  if teacher_probs.shape != student_probs.shape:
    raise ValueError(f'teacher shape {teacher_probs.shape} and student shape '
                     f'{student_probs.shape} differ; MiniLM pairs the same heads over the '
                     'same positions.')
  # `!= 0`, not `> 0`: a NaN probability must reach the value (NaN in, NaN out).
  log_t = jnp.log(jnp.where(teacher_probs != 0, teacher_probs, 1.0))
  log_s = jnp.log(jnp.where(student_probs != 0, student_probs, 1.0))
  # A student 0 where the teacher is not would be infinite: softmax rows never give it.
  return jnp.mean(kl(teacher_probs, log_t, log_s), axis=1)


def minilm_attention_loss(student_probs: jax.typing.ArrayLike,
                          teacher_probs: jax.typing.ArrayLike) -> jax.Array:
  r"""MiniLM's self-attention distribution transfer, per query position.

  .. math::
    \ell_{b,l} = \frac{1}{N} \sum_{n=1}^{N} \mathrm{KL}\big(A^t_{b,n,l,:} \,\|\,
    A^s_{b,n,l,:}\big)

  over the ``N`` heads of the two models' (last) layers.

  Args:
    student_probs: ``[B, N, L, L]`` the student's attention probabilities (rows sum to 1;
      causal rows give later keys 0).
    teacher_probs: ``[B, N, L, L]`` the teacher's, same shape (same number of heads).

  Returns:
    ``[B, L]`` float32 loss per query position.

  References:
    Wang et al., `MiniLM: Deep Self-Attention Distillation for Task-Agnostic Compression
    of Pre-Trained Transformers <https://arxiv.org/abs/2002.10957>`_, NeurIPS 2020, eq. (5).
  """
  return _per_query_kl(teacher_probs, student_probs)


def value_relation(values: jax.typing.ArrayLike) -> jax.Array:
  """Causal ``softmax(V V^T / sqrt(d))`` per head: `[B, L, N, d] -> float32 [B, N, L, L]`."""
  values = upcast(values)
  scores = jnp.einsum('blnd,bmnd->bnlm', values, values) / math.sqrt(values.shape[-1])
  length = values.shape[1]
  causal = jnp.tril(jnp.ones((length, length), bool))
  return jax.nn.softmax(jnp.where(causal, scores, -jnp.inf), axis=-1)


def minilm_value_loss(student_values: jax.typing.ArrayLike,
                      teacher_values: jax.typing.ArrayLike) -> jax.Array:
  r"""MiniLM's value-relation transfer, per query position.

  .. math::
    \ell_{b,l} = \frac{1}{N} \sum_n \mathrm{KL}\big(VR^t_{b,n,l,:} \,\|\, VR^s_{b,n,l,:}\big),
    \quad VR = \mathrm{softmax}\big(V V^\top / \sqrt{d}\big)

  Each model's head width ``d`` may differ (the relations are ``L x L``). For a causal
  language model the relation of position ``l`` covers positions ``<= l`` (a bidirectional
  model's, as in the paper, covers all), so padding after a sequence's end never enters a
  valid position's loss.

  Args:
    student_values: ``[B, L, N, d_s]`` the student's attention values (per head).
    teacher_values: ``[B, L, N, d_t]`` the teacher's, same ``B, L, N``.

  Returns:
    ``[B, L]`` float32 loss per query position.

  References:
    Wang et al. 2020 (as `minilm_attention_loss`), eq. (6)-(7).
  """
  return _per_query_kl(value_relation(teacher_values), value_relation(student_values))


@dataclasses.dataclass(frozen=True)
class MiniLM(Term):
  """MiniLM: KL between the teacher's and the student's attention distributions
  (`minilm_attention_loss`) plus between their value relations (`minilm_value_loss`), of one
  block each (the last ones in the paper), per position. Same number of heads; one teacher.
  Parts: `attention` and `value`."""

  student_block: str = 'block1'
  teacher_block: str = 'block3'
  attention_weight: float = 1.0
  value_weight: float = 1.0

  name = 'minilm'
  family = 'relation'
  # MiniLM: L_AT + L_VR with weight 1 each, no cross-entropy in task-agnostic distillation.
  paper = Paper('Wang et al. 2020, MiniLM', 'https://arxiv.org/abs/2002.10957', weight=1.0,
                ce_weight=0.0)

  @property
  def student_taps(self) -> tuple[str, ...]:
    return (f'{self.student_block}/attention/probs', f'{self.student_block}/attention/qkv')

  @property
  def teacher_taps(self) -> tuple[str, ...]:
    return (f'{self.teacher_block}/attention/probs', f'{self.teacher_block}/attention/qkv')

  def __call__(self, ctx):
    if len(ctx.teachers) != 1:
      raise ValueError(f'minilm reads one teacher, got {len(ctx.teachers)}.')
    (s_probs, s_qkv), (t_probs, t_qkv) = (
        [outputs.features[tap] for tap in taps] for outputs, taps in
        ((ctx.student, self.student_taps), (ctx.teachers[0], self.teacher_taps)))
    attention = minilm_attention_loss(s_probs, t_probs)
    value = minilm_value_loss(s_qkv[:, :, 2], t_qkv[:, :, 2])
    total = self.attention_weight * attention + self.value_weight * value
    return total, {'attention': attention, 'value': value}, ctx.state
