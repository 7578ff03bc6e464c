"""Logit terms from last hidden states, a chunk of positions at a time: neither model's
`[B, L, V]` logits exist at once.

A language model's logits are `hidden [B, L, D] @ embedding[V, D]^T`. At V = 32,768 and
L = 1,024 one float32 copy is 128 MiB per sequence, and distillation holds several (both
models' logits, softmaxes, their gradients). `apply_in_chunks` scans over chunks of `chunk`
positions: each iteration forms both models' logits for its positions, applies the
objective's per-position terms and keeps only per-position values `[B, chunk]`; the
iteration is rematerialised (`jax.checkpoint`), so the backward pass recomputes a chunk's
logits instead of storing them. Values and gradients equal the direct form's (tested):

  total, components, stats = apply_in_chunks(
      objective, Hidden(h_s, emb_s), [Hidden(h_t, emb_t)], {'label': labels}, chunk=128)
"""
from __future__ import annotations

from typing import Sequence

import flax
import jax
import jax.numpy as jnp

import numpy as np

from jaxkd.losses.objective import Objective
from jaxkd.losses.terms import Context, Outputs


@flax.struct.dataclass
class Hidden:
  """A language model's last hidden states `[B, L, D]` and its output embedding `[V, D]`
  (logits = `states @ embedding^T`, float32)."""

  states: jax.Array
  embedding: jax.Array

  def logits(self, states: jax.Array | None = None) -> jax.Array:
    """float32 logits of `states` (default: all of this model's): `[..., V]`."""
    states = self.states if states is None else states
    return jnp.einsum('...d,vd->...v', states, self.embedding.astype(states.dtype),
                      preferred_element_type=jnp.float32)


# Per-position batch entries the terms read, carried chunk by chunk: the targets, and a
# sampled teacher cache's draws `[B, L, K]` (`sampled_kd`).
POSITION_ENTRIES = ('label', 'teacher_sample_ids')


def _entries(batch: dict) -> dict:
  """The batch's per-position entries (`POSITION_ENTRIES`) that are present."""
  return {k: v for k, v in batch.items() if k in POSITION_ENTRIES and v is not None}


def _chunks(x: jax.Array, chunk: int) -> jax.Array:
  """`[B, L, ...] -> [L / chunk, B, chunk, ...]` (L padded with zeros to a multiple)."""
  pad = -x.shape[1] % chunk
  x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
  x = x.reshape((x.shape[0], x.shape[1] // chunk, chunk) + x.shape[2:])
  return jnp.moveaxis(x, 1, 0)


def _unchunk(x: jax.Array, length: int) -> jax.Array:
  """Inverse of `_chunks`: `[n, B, chunk, ...] -> [B, length, ...]`."""
  x = jnp.moveaxis(x, 0, 1)
  return x.reshape((x.shape[0], -1) + x.shape[3:])[:, :length]


def check_objective(objective: Objective, chunk: int) -> None:
  """Refuses what cannot run on vocabulary chunks (taps, state) and a chunk < 1."""
  if objective.student_taps or objective.teacher_taps or any(
      term.owns_state for _, _, term in objective.terms):
    raise ValueError('Chunked logit terms read the last hidden states only: terms that tap '
                     'features or keep state cannot run on vocabulary chunks; use the '
                     'direct form (no chunking).')
  if chunk < 1:
    raise ValueError(f'chunk must be a positive number of positions, got {chunk}.')


def _chunk_terms(objective, student_logits, teacher_logits, entries, step, key, params):
  """The objective on one chunk's logits: `(total, components, stats)`, each `[B, chunk]`."""
  total, components, _ = objective.apply(Context(
      Outputs(student_logits), [Outputs(z) for z in teacher_logits], entries, step=step,
      key=key, params=params or {}))
  return total, components, logit_stats(student_logits, [Outputs(z) for z in teacher_logits])


def logit_stats(student_logits: jax.Array, teachers: Sequence[Outputs]) -> dict[str, jax.Array]:
  """Per example (position): the student's top-1 `'prediction'` and its probability
  `'confidence'`, each teacher's top-1
  `'teacher<i>_top1'` (its own stored one when its logits are rebuilt from a top-k cache)
  and `'teacher<i>_finite'` (all its logits finite)."""
  logits = student_logits.astype(jnp.float32)
  stats = {'prediction': jnp.argmax(logits, -1),
           # the top-1 probability: exp(max - logsumexp), what calibration bins by
           'confidence': jnp.exp(jnp.max(logits, -1) - jax.nn.logsumexp(logits, -1))}
  for i, teacher in enumerate(teachers):
    stats[f'teacher{i}_top1'] = (jnp.argmax(teacher.logits, -1) if teacher.top1 is None
                                 else teacher.top1)
    stats[f'teacher{i}_finite'] = jnp.all(jnp.isfinite(teacher.logits), -1)
  return stats


def apply_in_chunks(
    objective: Objective,
    student: Hidden,
    teachers: Sequence[Hidden],
    batch: dict,
    *,
    chunk: int,
    step=0,
    key: jax.Array | None = None,
    params: dict | None = None,
) -> tuple[jax.Array, dict[str, jax.Array], dict[str, jax.Array]]:
  """`objective.apply` on logits formed `chunk` positions at a time.

  Args:
    objective: terms that read logits only (no taps, no state): per-position logit terms
      (`ce`, `kd`, `reverse_kl`, `jsd`, `skew_kl`, ...).
    student: the student's `Hidden` (gradients flow into its states and embedding).
    teachers: the teachers' `Hidden`s (any gradient into them is stopped).
    batch: per-position entries `[B, L, ...]` the terms read (`POSITION_ENTRIES`: `label`,
      a sampled cache's draws); others are not passed.
    chunk: positions per chunk (L need not be a multiple: the last chunk is padded).
    step, key, params: as in `Context` (a learned temperature reads `params`).

  Returns:
    ``(total [B, L], components {name: [B, L]}, stats)``, total and components as
    `Objective.apply` gives them; `stats` as `logit_stats` gives them, per position.
  """
  check_objective(objective, chunk)
  length = student.states.shape[1]
  per_position = {k: _chunks(v, chunk) for k, v in _entries(batch).items()}
  teachers = [jax.lax.stop_gradient(t) for t in teachers]

  @jax.checkpoint
  def one_chunk(student, teachers, xs):
    states, teacher_states, entries = xs
    student_logits = student.logits(states)
    teacher_logits = [t.logits(s) for t, s in zip(teachers, teacher_states)]
    return _chunk_terms(objective, student_logits, teacher_logits, entries, step, key, params)

  def body(carry, xs):
    return carry, one_chunk(student, teachers, xs)

  xs = (_chunks(student.states, chunk), [_chunks(t.states, chunk) for t in teachers],
        per_position)
  _, (total, components, stats) = jax.lax.scan(body, None, xs)
  unchunk = lambda tree: jax.tree.map(lambda x: _unchunk(x, length), tree)  # noqa: E731
  return unchunk(total), unchunk(components), unchunk(stats)


def weighted_sum_in_chunks(
    objective: Objective,
    student: Hidden,
    teachers: Sequence[Hidden],
    batch: dict,
    weights: jax.Array,
    *,
    chunk: int,
    step=0,
    key: jax.Array | None = None,
    params: dict | None = None,
) -> tuple[jax.Array, tuple[dict[str, jax.Array], dict[str, jax.Array]]]:
  """``sum(total * weights)`` over the positions, as `apply_in_chunks` computes `total`, with
  its gradient formed during the forward scan (a fused linear loss): each chunk's logits
  exist once, for the value and the gradient together, and nothing is recomputed. For a
  loss that is a weighted sum of per-position values (the step's masked mean, `weights =
  mask / count`): use `apply_in_chunks` for any other function of the values.

  Args:
    weights: `[B, L]` weights of the positions (no gradient flows into them).
    (others as `apply_in_chunks`; gradients flow into the student's states, its embedding
    and `params`).

  Returns:
    ``(loss, (components, stats))``: the scalar loss; the components and stats as
    `apply_in_chunks` gives them (values only, no gradient).
  """
  check_objective(objective, chunk)
  length = student.states.shape[1]
  params = params or {}

  def scan_chunks(student, params, teachers, entries, weights):
    def chunk_loss(states, embedding, params, teacher_states, entries, weights):
      total, components, stats = _chunk_terms(
          objective, Hidden(states, embedding).logits(),
          [t.logits(s) for t, s in zip(teachers, teacher_states)], entries, step, key, params)
      return jnp.sum(total * weights), (components, stats)

    def body(carry, xs):
      loss, d_embedding, d_params = carry
      states, teacher_states, entries, weights = xs
      value, vjp, aux = jax.vjp(
          lambda s, e, p: chunk_loss(s, e, p, teacher_states, entries, weights),
          states, student.embedding, params, has_aux=True)
      d_states, d_e, d_p = vjp(jnp.ones_like(value))
      carry = (loss + value, d_embedding + d_e, jax.tree.map(jnp.add, d_params, d_p))
      return carry, (d_states, aux)

    zeros = (jnp.zeros((), jnp.float32), jnp.zeros_like(student.embedding),
             jax.tree.map(jnp.zeros_like, params))
    xs = (_chunks(student.states, chunk), [_chunks(t.states, chunk) for t in teachers],
          {k: _chunks(v, chunk) for k, v in entries.items()}, _chunks(weights, chunk))
    (loss, d_embedding, d_params), (d_states, aux) = jax.lax.scan(body, zeros, xs)
    unchunk = lambda tree: jax.tree.map(lambda x: _unchunk(x, length), tree)  # noqa: E731
    grads = (Hidden(unchunk(d_states).astype(student.states.dtype), d_embedding), d_params)
    return (loss, unchunk(aux)), grads

  @jax.custom_vjp
  def fused(student, params, teachers, entries, weights):
    return scan_chunks(student, params, teachers, entries, weights)[0]

  def forward(student, params, teachers, entries, weights):
    out, grads = scan_chunks(student, params, teachers, entries, weights)
    return out, (grads, teachers, entries, weights)

  def backward(residuals, cotangents):
    (d_student, d_params), teachers, entries, weights = residuals
    scale = cotangents[0]  # the aux outputs are values only
    scaled = jax.tree.map(lambda g: (g * scale).astype(g.dtype), (d_student, d_params))
    no_entries = jax.tree.map(lambda x: np.zeros(x.shape, jax.dtypes.float0), entries)
    return (*scaled, jax.tree.map(jnp.zeros_like, teachers), no_entries,
            jnp.zeros_like(weights))

  fused.defvjp(forward, backward)
  teachers = [jax.lax.stop_gradient(t) for t in teachers]
  loss, aux = fused(student, params, teachers, _entries(batch),
                    jnp.asarray(weights, jnp.float32))
  return loss, jax.lax.stop_gradient(aux)
