"""The frame every recipe runs in: its checkpointer, the shared loop with the config's
cadence, and the finish (final metrics, `params_sha256`, the saved model)."""
from __future__ import annotations

import contextlib
import os
from typing import Any, Callable, Iterator

import jax

from jaxkd.loop import fit
from jaxkd.recipes.provenance import best_epoch, machine, write_json
from jaxkd.state import TrainState, tree_sha256


@contextlib.contextmanager
def checkpointing(config, workdir: str, metadata: dict) -> Iterator[Any]:
  """The run's `Checkpointer` in WORKDIR/checkpoints (None when `checkpoint_every` is 0),
  closed (pending saves finished) on exit.

  Opening it refuses, before writing anything, a workdir whose checkpoints belong to
  another run, e.g. a distillation from a different teacher.
  """
  if not config.get('checkpoint_every', 0):
    yield None
    return
  from jaxkd import checkpoint  # local import: orbax is slow to import
  checkpointer = checkpoint.Checkpointer(
      os.path.join(workdir, 'checkpoints'), metadata=metadata,
      keep_last=config.get('keep_last', 2), keep_best=config.get('keep_best', 0),
      best_metric=config.get('best_metric', 'test_accuracy'),
      best_mode=config.get('best_mode', 'max'))
  with checkpointer:
    yield checkpointer


def fit_config(config, workdir: str, checkpointer, *, evaluate: Callable[[Any], dict],
               **kwargs) -> TrainState:
  """`jaxkd.loop.fit` with the config's batch size, logging, evaluation and checkpoint
  cadence; `evaluate(variables)` runs on the state's variables."""
  return fit(batch_size=config.batch_size, workdir=workdir, log_every=config.get('log_every', 50),
             checkpointer=checkpointer, checkpoint_every=config.get('checkpoint_every', 0),
             eval_every=config.get('eval_every', 1),
             evaluate=lambda state, epoch: evaluate(state.variables), **kwargs)


def finish(workdir: str, state: TrainState, evaluate, config, num_steps: int,
           wall_seconds: float, *, metadata: dict, extra: dict | None = None) -> dict:
  """Final test metrics, `params_sha256`, and the student's variables saved for later use.

  The variables go to WORKDIR/final (step `num_steps`) with the run's `metadata`, where
  `load_teacher` and `transfer.load_pretrained` read them.
  """
  from jaxkd import checkpoint  # local import: orbax is slow to import
  final = {
      **evaluate(state.variables),
      **best_epoch(workdir),
      'params_sha256': tree_sha256(state.params),
      'steps': num_steps,
      'wall_seconds': wall_seconds,
      'model': config.model,
      'dataset': config.dataset,
      'machine': machine(),
      **(extra or {}),
  }
  metadata = {**metadata, 'params_sha256': final['params_sha256'],
              'test_accuracy': final['test_accuracy']}
  checkpoint.save_variables(os.path.join(workdir, 'final'), jax.device_get(state.variables),
                            metadata=metadata, step=num_steps)
  write_json(os.path.join(workdir, 'final_metrics.json'), final)
  return final
