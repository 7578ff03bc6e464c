"""Checkpoints on Orbax's `CheckpointManager` + `ocp.args`: train states and final variables.

A run's WORKDIR holds

    checkpoints/STEP/state      the student's TrainState (params, batch_stats, opt_state, rng)
    checkpoints/STEP/data       the data-iterator position (JSON)
    checkpoints/STEP/metadata   what the run is: model, data, task, teachers, versions (JSON)
    checkpoints/STEP/metrics    eval metrics, when the checkpoint is ranked for `keep_best`
    final/STEP/{variables, metadata}   the exported model (teacher / transfer source)

Orbax writes each step into `STEP.orbax-checkpoint-tmp` and renames it when complete, so a
process killed mid-save leaves the previous steps intact; the leftover folder is ignored by
readers and removed (with a warning) when a writer opens the folder again.
"""
from __future__ import annotations

import os
import warnings
from typing import Any, NamedTuple

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from orbax.checkpoint import checkpoint_managers as policies

import jaxkd
from jaxkd import distributed
from jaxkd import paths
from jaxkd.paths import flatten
from jaxkd.state import leaf_sha256, tree_sha256

PyTree = Any

TMP_SUFFIX = '.orbax-checkpoint-tmp'  # Orbax's name for a step still being written.
# Metadata that may differ between an interrupted run and its resumption: the step, library
# versions, where the teachers and the source model live (their fingerprints are compared),
# the checkpoint ranking, and what a finished model adds. Everything else a run records (its
# task, model, data, seed, batch size, optimizer and schedule, objective, augmentation,
# number of steps, teachers' fingerprints) must agree.
NOT_COMPARED = ('step', 'jaxkd_version', 'jax_version', 'orbax_version', 'teacher_dirs',
                'init_dir', 'selection', 'class_names', 'params_sha256', 'variables_sha256',
                'state_sha256', 'leaf_sha256', 'test_accuracy')
_STATE_ITEMS = ('state', 'data', 'metadata')
_FINAL_ITEMS = ('variables', 'metadata')
_HANDLERS = {'state': ocp.StandardCheckpointHandler, 'variables': ocp.StandardCheckpointHandler,
             'data': ocp.JsonCheckpointHandler, 'metadata': ocp.JsonCheckpointHandler}


class IncompleteCheckpointWarning(UserWarning):
  """A half-written checkpoint folder (a save was interrupted) was found and skipped."""


class IncompatibleCheckpointError(ValueError):
  """The checkpoint in a workdir belongs to a different run than the one asked for."""


class DamagedCheckpointError(ValueError):
  """A checkpoint or saved model whose files cannot be read or do not hold what was saved."""


class DamagedCheckpointWarning(UserWarning):
  """The newest checkpoint was damaged; the run resumes from an older intact one."""


def _damage(folder: str, error: Exception) -> DamagedCheckpointError:
  """The one-line error for a checkpoint that Orbax/TensorStore could not read."""
  if isinstance(error, DamagedCheckpointError):
    return error
  first = (str(error).strip().splitlines() or [''])[0][:200]
  return DamagedCheckpointError(
      f'{folder} is damaged: it could not be read ({type(error).__name__}: {first}).')


class Restored(NamedTuple):
  """What `Checkpointer.restore` returns."""

  state: PyTree
  data_state: dict
  metadata: dict
  step: int


def versions() -> dict:
  """The library versions recorded with every checkpoint."""
  return {'jaxkd_version': jaxkd.__version__, 'jax_version': jax.__version__,
          'orbax_version': ocp.__version__}


def incomplete_steps(directory: str) -> list[str]:
  """Names of half-written step folders (interrupted saves) in `directory`."""
  if not os.path.isdir(directory):
    return []
  return sorted(name for name in os.listdir(directory) if TMP_SUFFIX in name)


def _warn_incomplete(directory: str, action: str) -> None:
  leftovers = incomplete_steps(directory)
  if leftovers:
    warnings.warn(
        f'{directory} holds half-written checkpoint folder(s) {leftovers} from an interrupted '
        f'save; they are {action}. The finished checkpoints next to them are intact.',
        IncompleteCheckpointWarning, stacklevel=3)


def _reader(directory: str, item_names, handlers: dict | None = None) -> ocp.CheckpointManager:
  """A manager that never writes, creates or deletes anything."""
  verbosity = logging.get_verbosity()
  logging.set_verbosity(logging.ERROR)  # Orbax warns on every read-only manager it makes
  try:
    return ocp.CheckpointManager(
        directory, item_handlers=handlers or {name: _HANDLERS[name]() for name in item_names},
        options=ocp.CheckpointManagerOptions(read_only=True, create=False,
                                             save_interval_steps=0,
                                             enable_async_checkpointing=False))
  finally:
    logging.set_verbosity(verbosity)


def latest_step(directory: str) -> int | None:
  """The newest finished step in `directory` (None if none); writes nothing."""
  directory = os.path.abspath(directory)
  if not os.path.isdir(directory):
    return None
  with _reader(directory, _STATE_ITEMS) as manager:
    return manager.latest_step()


def read_metadata(directory: str, step: int | None = None) -> dict:
  """The JSON description stored with step `step` (default: the newest) of `directory`."""
  directory = os.path.abspath(directory)
  with _reader(directory, ('metadata',)) as manager:
    step = manager.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f'{directory!r} holds no finished checkpoint.')
    restored = manager.restore(step, args=ocp.args.Composite(metadata=ocp.args.JsonRestore()))
  return dict(restored['metadata'])


def _newest_metadata(directory: str) -> dict | None:
  """The metadata of the newest step whose metadata can be read (None: no steps); a step
  too damaged to read is left for `Checkpointer.restore` to report and set aside."""
  if not os.path.isdir(directory):
    return None
  with _reader(directory, _STATE_ITEMS) as manager:
    steps = sorted(manager.all_steps(), reverse=True)
  for step in steps:
    try:
      return read_metadata(directory, step)
    except Exception:  # noqa: BLE001 - any reading error means damaged: try an older step
      continue
  return None


def check_resumable(stored: dict, current: dict, *, directory: str) -> None:
  """Raises IncompatibleCheckpointError when `current` is not the run `stored` describes,
  listing every setting that differs (nested settings by dotted name)."""
  where = f'{directory} (step {stored.get("step")})'
  old = stored.get('teacher_fingerprints') or []
  new = current.get('teacher_fingerprints') or []
  if old != new:
    raise IncompatibleCheckpointError(
        f'Refusing to resume from {where}: it was distilled from teacher fingerprint(s) '
        f'{old or "none"}, but this run\'s teacher(s) {current.get("teacher_dirs") or ""} have '
        f'fingerprint(s) {new or "none"}. Pass the original teacher, or a new --workdir to start '
        f'afresh; the checkpoint was left untouched.')
  differing = differences(stored, current)
  if differing:
    details = '; '.join(f'{k}: checkpoint {a!r}, this run {b!r}' for k, (a, b) in differing.items())
    raise IncompatibleCheckpointError(
        f'Refusing to resume from {where}: it belongs to another run ({details}). Use a new '
        f'--workdir, or the original settings; the checkpoint was left untouched.')


def differences(stored: dict, current: dict) -> dict[str, tuple[Any, Any]]:
  """`{dotted setting: (stored, current)}` for every compared setting that differs."""
  return paths.differences(stored, current, ignore=NOT_COMPARED)


def _scalars(metrics: dict) -> dict:
  return {k: float(v) for k, v in metrics.items()
          if isinstance(v, (int, float, np.number)) or (hasattr(v, 'shape') and v.shape == ())}


class Checkpointer:
  """A run's train-state checkpoints: async saves, last-N and best-K retention, resume checks.

  Opening a folder that already holds checkpoints compares their metadata with `metadata`
  (`RESUME_KEYS` and the teacher fingerprints) before anything is written, and raises
  `IncompatibleCheckpointError` on a mismatch. Saves are asynchronous: `save` returns once
  the arrays are copied to host memory and Orbax writes them in the background; call
  `wait_until_finished` (or `close`) before relying on the files.

  Retention keeps the union of the `keep_last` newest steps and the `keep_best` steps with
  the best `best_metric` among the checkpoints saved with metrics (Orbax's `LatestN` and
  `BestN` under `AnyPreservationPolicy`). `keep_last >= 1`, so the newest is never deleted.

  Args:
    directory: the checkpoint folder (WORKDIR/checkpoints).
    metadata: JSON-able description of the run (see `recipes.run_metadata`); `step` and the
      jaxkd/JAX/Orbax versions are added at each save.
    keep_last: how many of the newest checkpoints to keep.
    keep_best: how many of the best-ranked checkpoints to keep besides (0: none).
    best_metric: key of the `metrics` passed to `save` that ranks checkpoints; a test-set
      metric (`test_...`) is refused unless `allow_test_selection`.
    best_mode: 'max' or 'min': whether a larger `best_metric` is better.
    allow_test_selection: permit ranking by a test-set metric (the caller records it).
    async_save: write in a background thread (False: `save` blocks until written).
  """

  def __init__(self, directory: str, *, metadata: dict, keep_last: int = 2, keep_best: int = 0,
               best_metric: str = '', best_mode: str = 'max', allow_test_selection: bool = False,
               async_save: bool = True):
    if keep_last < 1:
      raise ValueError(f'keep_last must be >= 1 (the newest checkpoint is never deleted), '
                       f'got {keep_last}.')
    if keep_best < 0 or (keep_best and not best_metric):
      raise ValueError(f'keep_best={keep_best} needs keep_best >= 0 and a best_metric to '
                       f'rank by (got {best_metric!r}).')
    if keep_best and best_metric.startswith('test_') and not allow_test_selection:
      raise ValueError(f'best_metric={best_metric!r} would select checkpoints on the test set; '
                       "rank by a validation metric (e.g. 'val_accuracy'), or pass "
                       'allow_test_selection=True to do it knowingly.')
    if best_mode not in ('max', 'min'):
      raise ValueError(f"best_mode must be 'max' or 'min', got {best_mode!r}.")
    self.directory = os.path.abspath(directory)
    self.metadata = dict(metadata)
    self.best_metric = best_metric if keep_best else ''
    # Check first, with a read-only manager: a refused resume must not touch the folder.
    stored = _newest_metadata(self.directory)
    if stored is not None:
      check_resumable(stored, self.metadata, directory=self.directory)
    # Every process has read the folder as it was before any of them creates or cleans it
    # (Orbax's managers synchronize processes; they must all take the same path).
    distributed.barrier('jaxkd_checkpointer_checked')
    _warn_incomplete(self.directory, 'ignored and removed')
    policy = [policies.LatestN(n=keep_last)]
    best_fn = None
    if keep_best:
      # Checkpoints saved between evaluations carry empty metrics and rank last.
      worst = float('-inf') if best_mode == 'max' else float('inf')
      best_fn = lambda metrics: metrics.get(best_metric, worst)  # noqa: E731
      policy.append(policies.BestN(get_metric_fn=best_fn, reverse=best_mode == 'min',
                                   n=keep_best, keep_checkpoints_without_metrics=False))
    self._manager = ocp.CheckpointManager(
        self.directory, item_names=_STATE_ITEMS,
        options=ocp.CheckpointManagerOptions(
            create=True, cleanup_tmp_directories=True, enable_async_checkpointing=async_save,
            preservation_policy=policies.AnyPreservationPolicy(policy),
            # best_fn makes Orbax store each save's metrics, which BestN ranks by.
            best_fn=best_fn, best_mode=best_mode))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: PyTree, *, data_state: dict | None = None,
           metrics: dict | None = None) -> bool:
    """Starts saving `state` as step `step`; returns once the arrays are on the host.

    `data_state` is the data-iterator position (JSON-able, e.g. `{'epoch': 2,
    'step_in_epoch': 5}`); `metrics` (scalars) rank this checkpoint for `keep_best` and must
    then hold `best_metric`.
    """
    if metrics is not None:
      metrics = _scalars(metrics)
      if self.best_metric and self.best_metric not in metrics:
        raise KeyError(f'best_metric {self.best_metric!r} is not among the metrics '
                       f'{sorted(metrics)} given to save step {step}.')
    # Orbax stores metrics only when ranking; unranked saves pass {} (ranked last).
    metrics = (metrics or {}) if self.best_metric else None
    metadata = {**self.metadata, 'step': int(step), 'state_sha256': tree_sha256(state),
                **versions()}
    return self._manager.save(int(step), metrics=metrics, force=True, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=ocp.args.JsonSave(dict(data_state or {})),
        metadata=ocp.args.JsonSave(metadata)))

  def restore(self, template: PyTree, step: int | None = None) -> Restored:
    """Restores step `step` (default: the newest intact one) shaped, typed and placed like
    `template`, after checking it against the checksum saved with it.

    `template` is a state of concrete arrays or `jax.ShapeDtypeStruct`s with shardings (e.g.
    from `jax.eval_shape` plus the target mesh's shardings): each leaf lands there directly.
    Without `step`, damaged newer checkpoints (unreadable, or not the state that was saved)
    are moved to WORKDIR/damaged_checkpoints/STEP with a `DamagedCheckpointWarning` naming
    them, and the newest intact one is restored; `DamagedCheckpointError` if none is.
    """
    self._manager.wait_until_finished()
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
    if step is not None:
      return self._restore_verified(step, abstract)
    damaged = []
    for candidate in sorted(self.all_steps(), reverse=True):
      try:
        restored = self._restore_verified(candidate, abstract)
      except DamagedCheckpointError as error:
        damaged.append((candidate, error))
        continue
      if damaged:
        self._set_aside(damaged, restored.step)
      return restored
    if not damaged:
      raise FileNotFoundError(f'{self.directory} holds no finished checkpoint.')
    raise DamagedCheckpointError(
        f'Every checkpoint in {self.directory} is damaged: '
        + '; '.join(str(error) for _, error in damaged)
        + ' Nothing was changed; use a new workdir.')

  def _restore_verified(self, step: int, abstract: PyTree) -> Restored:
    folder = os.path.join(self.directory, str(step))
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore(),
          metadata=ocp.args.JsonRestore()))
    except Exception as error:  # noqa: BLE001 - Orbax, TensorStore, zlib, JSON errors
      raise _damage(folder, error) from error
    metadata = dict(restored['metadata'])
    expected = metadata.get('state_sha256')
    if expected is None:
      raise DamagedCheckpointError(
          f'{folder} is damaged: its metadata has lost the checksum of its state, so it cannot '
          'be checked.')
    if tree_sha256(restored['state']) != expected:
      raise DamagedCheckpointError(
          f'{folder} is damaged: its state does not match the checksum saved with it.')
    return Restored(restored['state'], dict(restored['data'] or {}), metadata, int(step))

  def _set_aside(self, damaged: list, good: int) -> None:
    aside = os.path.join(os.path.dirname(self.directory), 'damaged_checkpoints')
    for step, error in damaged:
      target = os.path.join(aside, str(step))
      if distributed.is_main():  # one process moves; the others wait for it below
        os.makedirs(aside, exist_ok=True)
        os.replace(os.path.join(self.directory, str(step)), target)
      warnings.warn(f'{error} Moved to {target}; resuming from step {good}, the newest intact '
                    'checkpoint.', DamagedCheckpointWarning, stacklevel=3)
    distributed.barrier('jaxkd_damaged_checkpoints_set_aside')
    self._manager.reload()

  def metrics(self, step: int) -> dict | None:
    return self._manager.metrics(step)

  def wait_until_finished(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()  # waits for a pending save first

  def __enter__(self) -> 'Checkpointer':
    return self

  def __exit__(self, *exc) -> None:
    self.close()


# --- final variables (a teacher, or the source of a transfer) -------------------------------

def save_variables(directory: str, variables: PyTree, *, metadata: dict, step: int = 0) -> None:
  """Saves model variables plus a JSON description (model, dataset, versions) atomically.

  Saving again at a step that already exists keeps the existing files when they hold the
  same variables (a resumed run re-exporting), and raises otherwise: nothing is overwritten.
  Only the newest step is kept.
  """
  directory = os.path.abspath(directory)
  fingerprint = tree_sha256(variables)
  distributed.barrier('jaxkd_save_variables')  # all processes see the folder as it was
  if os.path.isdir(os.path.join(directory, str(step))):
    with _reader(directory, _FINAL_ITEMS) as manager:
      exists = step in manager.all_steps()
    if exists:
      stored = read_metadata(directory, step)
      if stored.get('variables_sha256') == fingerprint:
        return
      raise FileExistsError(
          f'{directory} already holds different variables at step {step} '
          f'(sha256 {stored.get("variables_sha256")}, not {fingerprint}); use a new workdir.')
  _warn_incomplete(directory, 'ignored and removed')
  metadata = {**metadata, 'step': int(step), 'variables_sha256': fingerprint,
              'leaf_sha256': leaf_sha256(variables), **versions()}
  options = ocp.CheckpointManagerOptions(
      create=True, cleanup_tmp_directories=True,
      preservation_policy=policies.LatestN(n=1))
  with ocp.CheckpointManager(directory, item_names=_FINAL_ITEMS, options=options) as manager:
    manager.save(step, force=True, args=ocp.args.Composite(
        variables=ocp.args.StandardSave(variables),
        metadata=ocp.args.JsonSave(metadata)))
    manager.wait_until_finished()


def _final_dir(directory: str) -> str:
  if not os.path.isdir(directory):
    raise FileNotFoundError(
        f'No checkpoint folder at {directory!r}; pass the folder written by '
        f'experiments/train.py (its WORKDIR or WORKDIR/final).')
  final = os.path.join(directory, 'final')
  return os.path.abspath(final if os.path.isdir(final) else directory)


def variables_metadata(directory: str) -> tuple[PyTree, dict, int]:
  """(tree of ArrayMetadata with .shape/.dtype, JSON metadata, step) of saved variables.

  `directory` is a WORKDIR or its `final` folder. Reads no array data.
  """
  directory = _final_dir(directory)
  _warn_incomplete(directory, 'ignored')
  with _reader(directory, _FINAL_ITEMS) as manager:
    step = _latest(manager, directory)
    tree = manager.item_metadata(step)['variables'].tree
  return tree, read_metadata(directory, step), step


def load_variables(directory: str, target: PyTree | None = None) -> tuple[PyTree, dict]:
  """Restores the newest variables saved by `save_variables`, with their metadata.

  Without `target`, leaves come back as host NumPy arrays. With `target` (a tree of arrays
  or `jax.ShapeDtypeStruct`s with shardings, matching the saved structure), each leaf is
  read straight into the target's placement, e.g. sharded over another device mesh;
  `orbax.checkpoint.PLACEHOLDER` leaves are not read and come back as placeholders.
  """
  directory = _final_dir(directory)
  _warn_incomplete(directory, 'ignored')
  try:
    if target is None:
      with _reader(directory, _FINAL_ITEMS) as manager:
        step = _latest(manager, directory)
        abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype),
                                manager.item_metadata(step)['variables'].tree)
        restored = manager.restore(step, args=ocp.args.Composite(
            variables=ocp.args.StandardRestore(abstract), metadata=ocp.args.JsonRestore()))
    else:
      # StandardRestore takes no placeholders; PyTreeRestore reads the same files and skips them.
      abstract = jax.tree.map(_abstract, target)
      handlers = {'variables': ocp.PyTreeCheckpointHandler(), 'metadata': _HANDLERS['metadata']()}
      with _reader(directory, _FINAL_ITEMS, handlers=handlers) as manager:
        step = _latest(manager, directory)
        restored = manager.restore(step, args=ocp.args.Composite(
            variables=ocp.args.PyTreeRestore(
                item=abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract)),
            metadata=ocp.args.JsonRestore()))
  except FileNotFoundError:
    raise
  except Exception as error:  # noqa: BLE001 - Orbax, TensorStore, zlib, JSON errors
    raise _damage(directory, error) from error
  variables, metadata = restored['variables'], dict(restored['metadata'])
  _verify(directory, variables, metadata)
  return variables, metadata


def _verify(directory: str, variables: PyTree, metadata: dict) -> None:
  """Checks restored leaves against the checksums saved with them (leaf by leaf, so that
  placeholders, the leaves not read, are skipped); DamagedCheckpointError names the leaf."""
  expected = metadata.get('leaf_sha256')
  if expected is None:  # saved before per-leaf checksums: the whole tree, when all was read
    whole = metadata.get('variables_sha256')
    if not whole:
      raise DamagedCheckpointError(
          f'{directory} is damaged: its metadata has lost both checksums (leaf_sha256, '
          'variables_sha256), so its variables cannot be checked. Retrain or restore this model.')
    if not any(leaf is ocp.PLACEHOLDER for leaf in jax.tree.leaves(variables)) and (
        tree_sha256(variables) != whole):
      raise DamagedCheckpointError(
          f'{directory} is damaged: its variables do not match the checksum saved with them.')
    return
  read = {path: leaf for path, leaf in flatten(variables).items() if leaf is not ocp.PLACEHOLDER}
  actual = leaf_sha256(read)
  for path in sorted(read):
    if actual[path] != expected.get(path):
      raise DamagedCheckpointError(
          f'{directory} is damaged: {path} does not match the checksum saved with it. '
          'Retrain or restore this model.')


def _latest(manager: ocp.CheckpointManager, directory: str) -> int:
  """The manager's newest step; FileNotFoundError if none."""
  step = manager.latest_step()
  if step is None:
    raise FileNotFoundError(f'{directory!r} holds no finished checkpoint.')
  return step


def _abstract(leaf):
  if leaf is ocp.PLACEHOLDER or isinstance(leaf, jax.ShapeDtypeStruct):
    return leaf
  return ocp.utils.to_shape_dtype_struct(leaf)


__all__ = ['Checkpointer', 'DamagedCheckpointError', 'DamagedCheckpointWarning',
           'IncompatibleCheckpointError', 'IncompleteCheckpointWarning',
           'Restored', 'check_resumable', 'differences', 'incomplete_steps', 'latest_step', 'load_variables',
           'read_metadata', 'save_variables', 'variables_metadata', 'versions']
