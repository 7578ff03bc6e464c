"""The frame every recipe runs in: its checkpointer, the shared loop with the config's
cadence, and the finish (final metrics, `params_sha256`, the saved model)."""
from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from typing import Any, Callable, Iterator

import jax

from jaxkd import distributed
from jaxkd.loop import fit
from jaxkd.recipes.defaults import default, setting
from jaxkd.recipes.environment import run_provenance, started_before
from jaxkd.recipes.provenance import best_epoch, machine, write_json
from jaxkd.state import TrainState, tree_sha256


SPLITS = ('val', 'test')  # what an evaluation measures: `val_*` and `test_*` metrics


def selection_policy(config) -> dict:
  """How the run chooses among its checkpoints, checked before any work: `keep_best > 0`
  ranks by `best_metric`, a validation metric by default. A test metric is refused unless
  `allow_test_selection` is set, and then recorded (`test_selection: True`) in the run's
  metadata, final metrics and table rows.
  """
  keep_best = setting(config, 'keep_best')
  if not keep_best:
    return {'keep_best': 0, 'metric': None, 'split': None, 'mode': None,
            'test_selection': False}
  metric = setting(config, 'best_metric') or default('best_metric')
  split = metric.split('_', 1)[0]
  if split not in SPLITS or metric == f'{split}_':
    raise ValueError(f'best_metric={metric!r} is not an evaluation metric; use a validation '
                     "metric such as 'val_accuracy' or 'val_loss'.")
  if split == 'val' and not setting(config, 'validation_size'):
    raise ValueError(f'keep_best={keep_best} ranks checkpoints by {metric!r}, but there is no '
                     'validation split: set validation_size > 0 (training images held out '
                     'for model selection), or keep_best=0.')
  allowed = bool(setting(config, 'allow_test_selection'))
  if split == 'test' and not allowed:
    raise ValueError(f'best_metric={metric!r} would select checkpoints on the test set; rank by '
                     "a validation metric ('val_accuracy' with validation_size > 0), or set "
                     'allow_test_selection=True to do it knowingly (the run records it).')
  return {'keep_best': keep_best, 'metric': metric, 'split': split,
          'mode': setting(config, 'best_mode'), 'test_selection': split == 'test'}


LOCK_FILE = '.jaxkd.lock'


class WorkdirBusyError(FileExistsError):
  """Another live process holds the workdir."""


@contextlib.contextmanager
def workdir_lock(workdir: str) -> Iterator[None]:
  """Holds WORKDIR for one process: a second one is refused at start, naming the owner.

  An advisory `flock` on WORKDIR/.jaxkd.lock, which the kernel releases when its process
  dies (SIGKILL included), so a stale lock file never blocks a rerun. The file is removed on
  exit, and so is WORKDIR when this created it and nothing was written into it (a run
  refused before its first write leaves no folder behind). Local file systems only: `flock`
  over NFS may not exclude processes on other hosts.
  """
  import fcntl  # POSIX only; imported here so the module imports everywhere
  created = not os.path.exists(workdir)
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, LOCK_FILE)
  while True:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      owner = os.read(fd, 4096).decode(errors='replace').strip() or 'unknown'
      os.close(fd)
      raise WorkdirBusyError(
          f'workdir {workdir!r} is in use by another run ({owner}); wait for it to end or use '
          f'another --workdir. Nothing was changed.') from None
    try:  # the file may have been removed by an owner releasing it just before we locked
      same = os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
      same = False
    if same:
      break
    os.close(fd)
  os.ftruncate(fd, 0)
  os.write(fd, json.dumps({'pid': os.getpid(), 'host': socket.gethostname(),
                           'started': time.strftime('%Y-%m-%d %H:%M:%S')}).encode())
  try:
    yield
  finally:
    os.unlink(path)
    os.close(fd)
    if created and not os.listdir(workdir):
      os.rmdir(workdir)


def check_workdir(config, workdir: str, metadata: dict,
                  finals: dict[str, dict] | None = None) -> None:
  """Refuses, before anything is written, a run that would mix two runs' files in WORKDIR:
  a finished run (final_metrics.json), a saved final model from other settings (WORKDIR/final,
  and the recipe's other `finals`: {folder: the metadata this run would save there}), or
  checkpoints that a run without checkpointing would silently restart over."""
  from jaxkd import checkpoint  # local import: orbax is slow to import
  for final, expected in {os.path.join(workdir, 'final'): metadata, **(finals or {})}.items():
    if checkpoint.latest_step(final) is not None:  # another run's model: name the differences
      checkpoint.check_resumable(checkpoint.read_metadata(final), expected, directory=final)
  finished = os.path.join(workdir, 'final_metrics.json')
  if os.path.exists(finished):
    raise FileExistsError(
        f'{workdir!r} holds a finished run ({finished}); a rerun would mix two runs\' files. '
        'Nothing was changed: use a new --workdir, or remove this one to run it again.')
  saved = checkpoint.latest_step(os.path.join(workdir, 'checkpoints'))
  if saved is not None and not setting(config, 'checkpoint_every'):
    raise FileExistsError(
        f'checkpoint_every=0, but {workdir!r} holds checkpoints up to step {saved}: this run '
        'would start afresh over them. Nothing was changed: set checkpoint_every > 0 to resume, '
        'or use a new --workdir.')


@contextlib.contextmanager
def checkpointing(config, workdir: str, metadata: dict,
                  finals: dict[str, dict] | None = None) -> Iterator[Any]:
  """The run's room: WORKDIR held for this process (`workdir_lock`) and checked
  (`check_workdir`), and its `Checkpointer` in WORKDIR/checkpoints (None when
  `checkpoint_every` is 0), closed (pending saves finished) on exit. Recipes finish (save
  the final model) inside it.

  Opening it refuses, before writing anything, a workdir whose checkpoints or final models
  (WORKDIR/final and the recipe's other `finals`) belong to another run (every differing
  setting listed), e.g. a distillation from another teacher.
  """
  # The main process holds the lock for the run (processes of one run share the workdir).
  lock = workdir_lock(workdir) if distributed.is_main() else contextlib.nullcontext()
  with lock:
    check_workdir(config, workdir, metadata, finals)
    if not setting(config, 'checkpoint_every'):
      yield None
      return
    from jaxkd import checkpoint  # local import: orbax is slow to import
    selection = metadata['selection']
    checkpointer = checkpoint.Checkpointer(
        os.path.join(workdir, 'checkpoints'), metadata=metadata,
        keep_last=setting(config, 'keep_last'), keep_best=selection['keep_best'],
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

  return fit(batch_size=config.batch_size, workdir=workdir, log_every=setting(config, 'log_every'),
             checkpointer=checkpointer, checkpoint_every=setting(config, 'checkpoint_every'),
             eval_every=setting(config, 'eval_every'), evaluate=evaluate_epoch, **kwargs)


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
      # what made it: commit, versions, dataset, CPU (the start of the sitting that ended it)
      'provenance': run_provenance(config, started=started_before(wall_seconds)),
      **(extra or {}),
  }
  metadata = {**metadata, 'params_sha256': final['params_sha256'],
              'test_accuracy': final['test_accuracy']}
  checkpoint.save_variables(os.path.join(workdir, 'final'), jax.device_get(state.variables),
                            metadata=metadata, step=num_steps)
  write_json(os.path.join(workdir, 'final_metrics.json'), final)
  return final
