"""Teacher-output cache for offline distillation: run the teacher over a dataset once.

A cache stores one row of teacher outputs per example, in the dataset's stored order, and
the provenance it is valid for: dataset, split, input transform, teacher fingerprint and
format. `TeacherCache.check` refuses any other use with one clear error, so a cache can
never silently teach the wrong images, teacher or task.

Formats:
  * full logits, float32 or float16 (temperature-free);
  * top-k: the k largest teacher logits and their class indices, plus the log of the
    probability mass of all other classes at the cache's temperature, kept as one bucket.
    The soft loss is then the KL between (k+1)-bucket distributions; see `topk_logits`.

Language models' caches (per token, `[N, L, ...]`: sampled token ids or top-k + rest mass,
in sharded ArrayRecord files) are `jaxkd.cache_lm`'s; its sampling and storage figures are
re-exported here (`sample_teacher_tokens`, `bytes_per_token`).
"""
from __future__ import annotations

import dataclasses
import json
import os
import warnings
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np

from jaxkd.augment import Augment
from jaxkd.cache_lm import bytes_per_token as bytes_per_token
from jaxkd.cache_lm import sample_teacher_tokens as sample_teacher_tokens
from jaxkd.cache_lm import topk_teacher_targets as topk_teacher_targets
from jaxkd.optim import SettingWarning

FORMAT_VERSION = 1
DTYPES = ('float32', 'float16')


class CacheMismatchError(ValueError):
  """A teacher cache used for data, a teacher or a transform it was not computed for."""


@dataclasses.dataclass(frozen=True)
class TeacherCache:
  """Teacher outputs for every example of one split, with their provenance.

  Attributes:
    logits: [N, C] (full) or [N, k] (top-k values), float32 or float16.
    indices: None, or int32 [N, k] class indices of the top-k values.
    rest_log_mass: None, or float32 [N]: log of the teacher's probability mass outside the
      top k at `provenance['temperature']`.
    provenance: dataset, split, transform, teacher_fingerprint, num_classes, topk,
      temperature, dtype, num_examples.
  """

  logits: np.ndarray
  indices: np.ndarray | None
  rest_log_mass: np.ndarray | None
  provenance: dict

  @property
  def topk(self) -> int | None:
    return self.provenance['topk']

  def check(self, *, dataset: str, split: str, transform: dict,
            teacher_fingerprint: str | None = None, augment: Augment = Augment(),
            temperature: float | None = None, num_examples: int | None = None) -> None:
    """Raises `CacheMismatchError` unless this cache is valid for the described use."""
    p = self.provenance
    problems = []
    if (dataset, split) != (p['dataset'], p['split']):
      problems.append(f"it was computed on {p['dataset']}/{p['split']}, not {dataset}/{split}")
    if transform != p['transform']:
      problems.append(f"it was computed with input transform {p['transform']}, not {transform}")
    if teacher_fingerprint is not None and teacher_fingerprint != p['teacher_fingerprint']:
      problems.append(f"it holds teacher {p['teacher_fingerprint'][:16]}..., not "
                      f"{teacher_fingerprint[:16]}...")
    if not augment.is_identity:
      problems.append(f'training uses random augmentation {augment.describe()}, which would '
                      'show the student images the teacher never saw; train with '
                      'Augment() or with a live teacher')
    if num_examples is not None and num_examples != p['num_examples']:
      problems.append(f"it has {p['num_examples']} rows for {num_examples} examples")
    if self.topk and temperature is not None and not np.isclose(temperature, p['temperature']):
      problems.append(f"its top-{self.topk} rest mass was computed at temperature "
                      f"{p['temperature']}, not {temperature}; recompute it or keep full logits")
    if problems:
      raise CacheMismatchError('This teacher cache cannot be used: ' + '; '.join(problems) +
                               '. Recompute the cache for this run (jaxkd.cache.compute).')

  def rows(self) -> dict[str, np.ndarray]:
    """Per-example arrays to carry in each batch (gathered with the images)."""
    if self.topk:
      return {'teacher_topk_logits': self.logits, 'teacher_topk_indices': self.indices,
              'teacher_rest_log_mass': self.rest_log_mass}
    return {'teacher_logits': self.logits}

  def save(self, directory: str) -> None:
    """Writes `.npy` arrays and `cache.json` (no pickle); replaces the folder atomically."""
    tmp = directory.rstrip('/') + '.tmp'
    os.makedirs(tmp, exist_ok=True)
    checksums = {}
    for name, array in self.rows().items():
      np.save(os.path.join(tmp, f'{name}.npy'), array, allow_pickle=False)
      checksums[name] = _sha256(array)
    with open(os.path.join(tmp, 'cache.json'), 'w') as f:
      json.dump({'format_version': FORMAT_VERSION, **self.provenance, 'sha256': checksums},
                f, indent=2)
    if os.path.isdir(directory):
      old = directory.rstrip('/') + '.old'
      os.replace(directory, old)
      os.replace(tmp, directory)
      _rmtree(old)
    else:
      os.replace(tmp, directory)

  @classmethod
  def load(cls, directory: str) -> 'TeacherCache':
    path = os.path.join(directory, 'cache.json')
    if not os.path.isfile(path):
      raise FileNotFoundError(f'No teacher cache at {directory!r} (missing cache.json); '
                              'create one with jaxkd.cache.compute(...).save(directory).')
    with open(path) as f:
      provenance = json.load(f)
    if provenance.pop('format_version') != FORMAT_VERSION:
      raise CacheMismatchError(f'{directory!r} has an unknown cache format; recompute it.')
    checksums = provenance.pop('sha256', {})

    def load(name):
      path = os.path.join(directory, f'{name}.npy')
      try:
        array = np.load(path, allow_pickle=False)
      except (OSError, ValueError) as error:
        raise CacheMismatchError(f'{path} is damaged ({error}); recompute the cache.') from None
      if name in checksums and _sha256(array) != checksums[name]:
        raise CacheMismatchError(f'{path} is damaged: it does not match the checksum in '
                                 'cache.json; recompute the cache.')
      return array

    if provenance['topk']:
      return cls(load('teacher_topk_logits'), load('teacher_topk_indices'),
                 load('teacher_rest_log_mass'), provenance)
    return cls(load('teacher_logits'), None, None, provenance)


@flax.struct.dataclass
class TopKRows:
  """A batch's rows of a top-k cache (`TeacherCache.rows()` with `topk` set), as a step
  reads them: full logits exist only once the student's logits are known (`logits_for`)."""

  topk_logits: jax.Array  # [B, k], or [B, L, k] for a language model's positions
  indices: jax.Array  # int32, as topk_logits
  rest_log_mass: jax.Array  # [B] or [B, L]

  @classmethod
  def from_batch(cls, batch: dict) -> 'TopKRows':
    return cls(batch['teacher_topk_logits'], batch['teacher_topk_indices'],
               batch['teacher_rest_log_mass'])

  def top1(self) -> jax.Array:
    """The teacher's top-1 class of each row (its largest stored logit's index)."""
    best = jnp.argmax(self.topk_logits, axis=-1)[..., None]
    return jnp.take_along_axis(self.indices, best, axis=-1)[..., 0]

  def logits_for(self, student_logits: jax.Array, *, temperature: float) -> jax.Array:
    """Full-width teacher logits for this student (see `topk_logits`)."""
    return topk_logits(student_logits, self.topk_logits, self.indices, self.rest_log_mass,
                       temperature=temperature)


def _sha256(array: np.ndarray) -> str:
  import hashlib
  return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def _rmtree(path: str) -> None:
  import shutil
  shutil.rmtree(path, ignore_errors=True)


# A top-k cache keeping less than this share of the teacher's softened mass is warned about.
TOPK_KEPT_WARNING = 0.5


def compute(
    apply_fn: Callable[[Any, jax.Array], jax.Array],
    teacher_variables: Any,
    images: np.ndarray,
    *,
    dataset: str,
    split: str,
    transform: dict,
    teacher_fingerprint: str,
    batch_size: int = 1000,
    dtype: str = 'float32',
    topk: int | None = None,
    temperature: float | None = None,
) -> TeacherCache:
  """Runs the teacher (inference mode) over `images` once, in order.

  Args:
    apply_fn: `apply(variables, images) -> logits`, e.g. `jaxkd.distill.inference_apply(m)`.
    teacher_variables: the teacher's variables.
    images: the split's model inputs [N, H, W, C] after `transform` (normalised float).
    dataset, split, transform, teacher_fingerprint: provenance recorded in the cache.
    batch_size: examples per teacher call; the last batch is padded. In a run of several
      processes each computes an equal block of the rows and all gather them.
    dtype: 'float32' or 'float16' storage of logits.
    topk: keep only the k largest logits per example, plus the rest's mass in one bucket.
    temperature: required with `topk`: the temperature the rest mass is computed at.
  """
  if dtype not in DTYPES:
    raise ValueError(f'Unknown cache dtype {dtype!r}; choose one of {DTYPES}.')
  if topk is not None and (temperature is None or temperature <= 0):
    raise ValueError('A top-k cache needs the training temperature (> 0): its rest mass '
                     'depends on it. Pass temperature=T.')
  from jaxkd import distributed
  from jaxkd import ops
  run = ops.current().jit(apply_fn)  # on CPU by default with XLA's own convolution kernels
  # With several processes each runs the teacher on its block of rows, and all gather them.
  block = distributed.process_block(len(images))
  mine = images[block]
  outputs = []
  for start in range(0, max(len(mine), 1), batch_size):
    chunk = mine[start:start + batch_size]
    pad = batch_size - len(chunk)
    if pad:
      chunk = np.concatenate([chunk, np.zeros((pad,) + images.shape[1:], images.dtype)])
    outputs.append(np.asarray(run(teacher_variables, chunk), np.float32)[:batch_size - pad])
  logits = np.concatenate(outputs)
  share = block.stop - block.start  # every block padded to one length for the gather
  logits = np.concatenate([logits, np.zeros((share - len(logits),) + logits.shape[1:],
                                            logits.dtype)])
  logits = distributed.allgather_rows(logits, len(images))
  bad = ~np.isfinite(logits).all(axis=-1)
  if bad.any():
    raise FloatingPointError(
        f'The teacher ({teacher_fingerprint[:12]}) gives non-finite logits for {int(bad.sum())} '
        f'of {len(logits)} {dataset} {split} examples (first: example {int(np.argmax(bad))}); '
        'its variables are damaged or it diverged. No cache was written.')
  provenance = {'dataset': dataset, 'split': split, 'transform': transform,
                'teacher_fingerprint': teacher_fingerprint, 'num_classes': logits.shape[-1],
                'num_examples': len(logits), 'topk': topk, 'temperature': temperature,
                'dtype': dtype}
  if not topk:
    return TeacherCache(logits.astype(dtype), None, None, provenance)
  if not 0 < topk < logits.shape[-1]:
    raise ValueError(f'topk must be in 1..{logits.shape[-1] - 1}, got {topk}.')
  indices = np.argsort(-logits, axis=-1, kind='stable')[:, :topk].astype(np.int32)
  values = np.take_along_axis(logits, indices, -1)
  scaled = logits.astype(np.float64) / temperature
  log_z = _logsumexp(scaled)
  rest = scaled.copy()
  np.put_along_axis(rest, indices, -np.inf, -1)
  rest_log_mass = (_logsumexp(rest) - log_z).astype(np.float32)
  kept = 1.0 - float(np.mean(np.exp(rest_log_mass)))
  if kept < TOPK_KEPT_WARNING:
    warnings.warn(
        f'The top-{topk} cache keeps {kept:.0%} of the teacher\'s probability mass at '
        f'temperature {temperature:g} (mean over {len(logits)} examples); the rest is one '
        'bucket, so most of the soft targets\' signal is lost. Raise cache_topk, lower the '
        'temperature, or cache every logit (cache_topk=0).', SettingWarning, stacklevel=2)
  return TeacherCache(values.astype(dtype), indices, rest_log_mass, provenance)


def _logsumexp(x: np.ndarray) -> np.ndarray:
  top = np.max(x, -1, keepdims=True)
  top = np.where(np.isfinite(top), top, 0.0)
  return (np.log(np.sum(np.exp(x - top), -1)) + top[..., 0])


def topk_logits(student_logits: jax.Array, topk_logits_: jax.Array, indices: jax.Array,
                rest_log_mass: jax.Array, *, temperature: float) -> jax.Array:
  """Full-width teacher logits whose KD loss equals the (k+1)-bucket KL, value and gradient.

  The teacher's top-k probabilities come from the cache; its rest mass `r` is spread over
  the other classes in proportion to the student's own (stop-gradient) distribution there:
  p_j = r * q_j / q_rest. Then KL(p || q) = KL over the k+1 buckets (top-k classes, rest),
  and so are its gradients w.r.t. the student logits. Returned as `T * log p`, so that
  `softmax(result / T) == p` inside `kd_loss`. Any leading axes: `[B, C]` rows, or a
  language model's `[B, L, V]` positions (`indices [B, L, k]`, `rest_log_mass [B, L]`).
  """
  t = temperature
  student = jax.lax.stop_gradient(student_logits.astype(jnp.float32)) / t
  in_topk = jnp.put_along_axis(jnp.zeros(student.shape, jnp.bool_), indices, True, axis=-1,
                               inplace=False)
  log_q = jax.nn.log_softmax(student)
  log_q_rest = jax.nn.logsumexp(jnp.where(in_topk, -jnp.inf, log_q), -1, keepdims=True)
  # Teacher's top-k log-probabilities at T: value/T minus the full partition function, which
  # follows from the top-k values and the rest mass: log Z = logsumexp(top/T) - log(1 - r).
  top = topk_logits_.astype(jnp.float32) / t
  rest = rest_log_mass.astype(jnp.float32)[..., None]
  log_z = jax.nn.logsumexp(top, -1, keepdims=True) - jnp.log1p(-jnp.exp(rest))
  log_p_rest = rest + log_q - log_q_rest
  log_p = jnp.put_along_axis(log_p_rest, indices, top - log_z, axis=-1, inplace=False)
  return t * log_p
