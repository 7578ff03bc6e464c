"""A run's train-state checkpoints (`Checkpointer`: async saves, retention, resume checks
against the run's metadata, damaged steps set aside)."""
from __future__ import annotations

import os
import warnings
from typing import Any, NamedTuple

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from jaxkd import distributed
from jaxkd import paths
from jaxkd.checkpoint.files import (
    STATE_ITEMS, DamagedCheckpointError, DamagedCheckpointWarning, IncompatibleCheckpointError,
    PyTree, damage_error, read_metadata, reader, versions, warn_incomplete)
from jaxkd.state import tree_sha256

# Metadata that may differ between an interrupted run and its resumption: the step, library
# versions, where the teachers and the source model live (their fingerprints are compared),
# the checkpoint ranking, and what a finished model adds. Everything else a run records (its
# task, model, data, seed, batch size, optimizer and schedule, objective, augmentation,
# number of steps, teachers' fingerprints) must agree.
NOT_COMPARED = ('step', 'jaxkd_version', 'jax_version', 'orbax_version', 'teacher_dirs',
                'init_dir', 'selection', 'class_names', 'params_sha256', 'variables_sha256',
                'state_sha256', 'leaf_sha256', 'test_accuracy')


class Restored(NamedTuple):
  """What `Checkpointer.restore` returns."""

  state: PyTree
  data_state: dict
  metadata: dict
  step: int



def _newest_metadata(directory: str) -> dict | None:
  """The metadata of the newest step whose metadata can be read (None: no steps); a step
  too damaged to read is left for `Checkpointer.restore` to report and set aside."""
  if not os.path.isdir(directory):
    return None
  with reader(directory, STATE_ITEMS) as manager:
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
    warn_incomplete(self.directory, 'ignored and removed')
    policy = [policies.LatestN(n=keep_last)]
    best_fn = None
    if keep_best:
      # Checkpoints saved between evaluations carry empty metrics and rank last.
      worst = float('-inf') if best_mode == 'max' else float('inf')
      best_fn = lambda metrics: metrics.get(best_metric, worst)  # noqa: E731
      policy.append(policies.BestN(get_metric_fn=best_fn, reverse=best_mode == 'min',
                                   n=keep_best, keep_checkpoints_without_metrics=False))
    self._manager = ocp.CheckpointManager(
        self.directory, item_names=STATE_ITEMS,
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
      raise damage_error(folder, error) from error
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


