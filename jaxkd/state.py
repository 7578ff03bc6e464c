"""The student's train state: a pure pytree, plus fingerprints of variable trees."""
from __future__ import annotations

import hashlib
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxkd.paths import flatten

PyTree = Any


@flax.struct.dataclass
class TrainState:
  """Everything a student's training step reads and writes; nothing static.

  The model's apply function and the optimizer are closed over by the step factory, so
  this pytree can be donated, sharded, checkpointed and compared leaf by leaf.
  """

  step: jax.Array  # int32 scalar
  params: PyTree
  batch_stats: PyTree  # {} for models without BatchNorm
  opt_state: PyTree
  rng: jax.Array  # raw uint32 key data; per-step keys are fold_in(rng, step)

  @property
  def variables(self) -> dict:
    """The model variables in the layout `Module.apply` expects."""
    return model_variables(self.params, self.batch_stats)


@flax.struct.dataclass
class DistillState(TrainState):
  """A student's train state plus what its distillation objective owns: `loss_params`
  (trained with the student: the optimizer sees `{'model': params, 'loss': loss_params}`)
  and `loss_state` (updated by the terms). `params`, `variables` and everything exported
  or fingerprinted are the student's alone."""

  loss_params: PyTree
  loss_state: PyTree


def model_variables(params: PyTree, batch_stats: PyTree) -> dict:
  """`{'params': ..., 'batch_stats': ...}`, leaving out an empty `batch_stats`."""
  variables = {'params': params}
  if batch_stats:
    variables['batch_stats'] = batch_stats
  return variables


def input_dtype(model: nn.Module):
  """What the model reads: int32 token ids for a language model (one with a `vocab_size`),
  float32 images otherwise."""
  return jnp.int32 if hasattr(model, 'vocab_size') else jnp.float32


def init_variables(model: nn.Module, *, key: jax.Array, input_shape) -> dict:
  """Initializes `model` on zeros of `input_shape` (batch dimension included)."""
  images = jnp.zeros(input_shape, input_dtype(model))
  variables = jax.jit(lambda k: model.init({'params': k, 'dropout': k}, images, train=False))(key)
  return flax.core.unfreeze(variables)


def seed_keys(seed: int) -> tuple[jax.Array, jax.Array]:
  """The run's two root keys, `(init_key, state_key)`: the model's initialization and the
  train state's per-step randomness. Every fresh init of a run derives from here."""
  init_key, state_key = jax.random.split(jax.random.key(seed))
  return init_key, state_key


def fresh_variables(model: nn.Module, *, seed: int, input_shape) -> dict:
  """The model's initial variables for a run of `seed` (those `create_train_state` uses)."""
  return init_variables(model, key=seed_keys(seed)[0], input_shape=input_shape)


def create_train_state(
    model: nn.Module,
    tx: optax.GradientTransformation,
    *,
    seed: int,
    input_shape,
    variables: dict | None = None,
) -> TrainState:
  """A fresh train state; `variables` (e.g. from a pre-trained checkpoint) replace the init."""
  if variables is None:
    variables = fresh_variables(model, seed=seed, input_shape=input_shape)
  _, state_key = seed_keys(seed)
  params = variables['params']
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      batch_stats=variables.get('batch_stats', {}),
      opt_state=tx.init(params),
      rng=jax.random.key_data(state_key),
  )


def step_key(rng: jax.Array, step: jax.Array) -> jax.Array:
  """The step's typed PRNG key: `fold_in(rng, step)`, so a resumed run repeats exactly."""
  return jax.random.fold_in(jax.random.wrap_key_data(rng), step)


def leaf_sha256(tree: PyTree) -> dict[str, str]:
  """`{'/'-joined path: SHA-256 of dtype, shape and bytes}` per leaf: a saved model's
  checksums, verified leaf by leaf when only some leaves are read back."""
  checksums = {}
  for path, leaf in flatten(tree).items():
    array = np.ascontiguousarray(np.asarray(jax.device_get(leaf)))
    digest = hashlib.sha256(f'{array.dtype.str}{array.shape}'.encode())
    digest.update(array.tobytes())
    checksums[path] = digest.hexdigest()
  return checksums


def tree_sha256(tree: PyTree) -> str:
  """SHA-256 over a tree's leaves in sorted-path order: path, dtype, shape and bytes.

  Used for `params_sha256` in final metrics and as the teacher fingerprint in checkpoints.
  """
  digest = hashlib.sha256()
  leaves = jax.tree_util.tree_leaves_with_path(tree)
  for path, leaf in sorted(leaves, key=lambda kv: jax.tree_util.keystr(kv[0])):
    array = np.asarray(jax.device_get(leaf))
    digest.update(jax.tree_util.keystr(path).encode())
    digest.update(f'{array.dtype.str}{array.shape}'.encode())
    digest.update(np.ascontiguousarray(array).tobytes())
  return digest.hexdigest()
