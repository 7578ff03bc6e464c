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


SPLITS = ('val', 'test')  # what an evaluation measures: `val_*` and `test_*` metrics


def selection_policy(config) -> dict:
  """How the run chooses among its checkpoints, checked before any work: `keep_best > 0`
  ranks by `best_metric`, a validation metric by default. A test metric is refused unless
  `allow_test_selection` is set, and then recorded (`test_selection: True`) in the run's
  metadata, final metrics and table rows.
  """
  keep_best = config.get('keep_best', 0)
  if not keep_best:
    return {'keep_best': 0, 'metric': None, 'split': None, 'mode': None,
            'test_selection': False}
  metric = config.get('best_metric') or 'val_accuracy'
  split = metric.split('_', 1)[0]
  if split not in SPLITS or metric == f'{split}_':
    raise ValueError(f'best_metric={metric!r} is not an evaluation metric; use a validation '
                     "metric such as 'val_accuracy' or 'val_loss'.")
  if split == 'val' and not config.get('validation_size', 0):
    raise ValueError(f'keep_best={keep_best} ranks checkpoints by {metric!r}, but there is no '
                     'validation split: set validation_size > 0 (training images held out '
                     'for model selection), or keep_best=0.')
  allowed = bool(config.get('allow_test_selection', False))
  if split == 'test' and not allowed:
    raise ValueError(f'best_metric={metric!r} would select checkpoints on the test set; rank by '
                     "a validation metric ('val_accuracy' with validation_size > 0), or set "
                     'allow_test_selection=True to do it knowingly (the run records it).')
  return {'keep_best': keep_best, 'metric': metric, 'split': split,
          'mode': config.get('best_mode', 'max'), 'test_selection': split == 'test'}


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
  selection = metadata['selection']
  checkpointer = checkpoint.Checkpointer(
      os.path.join(workdir, 'checkpoints'), metadata=metadata,
      keep_last=config.get('keep_last', 2), keep_best=selection['keep_best'],
      best_metric=selection['metric'] or '', best_mode=selection['mode'] or 'max',
      allow_test_selection=selection['test_selection'])
  with checkpointer:
    yield checkpointer


def fit_config(config, workdir: str, checkpointer, *, evaluate: Callable[[Any], dict],
               evaluate_state: Callable[[Any], dict] | None = None, **kwargs) -> TrainState:
  """`jaxkd.loop.fit` with the config's batch size, logging, evaluation and checkpoint
  cadence; `evaluate(variables)` runs on the state's variables, and `evaluate_state(state)`,
  when given, adds what else a scheme evaluates (an EMA teacher)."""

  def evaluate_epoch(state, epoch):
    del epoch
    return {**evaluate(state.variables), **(evaluate_state(state) if evaluate_state else {})}

  return fit(batch_size=config.batch_size, workdir=workdir, log_every=config.get('log_every', 50),
             checkpointer=checkpointer, checkpoint_every=config.get('checkpoint_every', 0),
             eval_every=config.get('eval_every', 1), evaluate=evaluate_epoch, **kwargs)


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
      'selection': metadata['selection'],
      **(extra or {}),
  }
  metadata = {**metadata, 'params_sha256': final['params_sha256'],
              'test_accuracy': final['test_accuracy']}
  checkpoint.save_variables(os.path.join(workdir, 'final'), jax.device_get(state.variables),
                            metadata=metadata, step=num_steps)
  write_json(os.path.join(workdir, 'final_metrics.json'), final)
  return final
