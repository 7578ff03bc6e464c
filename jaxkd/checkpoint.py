"""Orbax checkpoints with JSON metadata: `CheckpointManager` + `ocp.args` only."""
from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

import jaxkd


def _manager(directory: str, **options) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      os.path.abspath(directory), item_names=('variables', 'metadata'),
      options=ocp.CheckpointManagerOptions(create=True, **options))


def save_variables(directory: str, variables: Any, *, metadata: dict, step: int = 0) -> None:
  """Saves model variables plus a JSON description (model, dataset, versions) atomically."""
  metadata = {**metadata, 'jaxkd_version': jaxkd.__version__, 'jax_version': jax.__version__}
  with _manager(directory) as manager:
    manager.save(step, args=ocp.args.Composite(
        variables=ocp.args.StandardSave(jax.device_get(variables)),
        metadata=ocp.args.JsonSave(metadata)), force=True)
    manager.wait_until_finished()


def load_variables(directory: str) -> tuple[Any, dict]:
  """Restores the newest variables saved by `save_variables` as host arrays, with metadata."""
  if not os.path.isdir(directory):
    raise FileNotFoundError(
        f'No checkpoint folder at {directory!r}; pass the folder written by '
        f'experiments/train.py (its WORKDIR/final).')
  with _manager(directory, read_only=True) as manager:
    step = manager.latest_step()
    if step is None:
      raise FileNotFoundError(f'{directory!r} holds no finished checkpoint.')
    restored = manager.restore(step, args=ocp.args.Composite(
        variables=ocp.args.StandardRestore(), metadata=ocp.args.JsonRestore()))
  variables = jax.tree.map(np.asarray, restored['variables'])
  return variables, dict(restored['metadata'])
