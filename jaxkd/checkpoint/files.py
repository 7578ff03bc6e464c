"""The files of a checkpoint folder, shared by the run-state checkpoints (`run_state`) and
the final variables (`final`): the items each holds, read-only managers, half-written steps,
and the errors for folders that cannot be used."""
from __future__ import annotations

import os
import warnings
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging

import jaxkd

PyTree = Any

TMP_SUFFIX = '.orbax-checkpoint-tmp'  # Orbax's name for a step still being written.
STATE_ITEMS = ('state', 'data', 'metadata')
FINAL_ITEMS = ('variables', 'metadata')
HANDLERS = {'state': ocp.StandardCheckpointHandler, 'variables': ocp.StandardCheckpointHandler,
             'data': ocp.JsonCheckpointHandler, 'metadata': ocp.JsonCheckpointHandler}



class IncompleteCheckpointWarning(UserWarning):
  """A half-written checkpoint folder (a save was interrupted) was found and skipped."""


class IncompatibleCheckpointError(ValueError):
  """The checkpoint in a workdir belongs to a different run than the one asked for."""


class DamagedCheckpointError(ValueError):
  """A checkpoint or saved model whose files cannot be read or do not hold what was saved."""


class DamagedCheckpointWarning(UserWarning):
  """The newest checkpoint was damaged; the run resumes from an older intact one."""


def damage_error(folder: str, error: Exception) -> DamagedCheckpointError:
  """The one-line error for a checkpoint that Orbax/TensorStore could not read."""
  if isinstance(error, DamagedCheckpointError):
    return error
  first = (str(error).strip().splitlines() or [''])[0][:200]
  return DamagedCheckpointError(
      f'{folder} is damaged: it could not be read ({type(error).__name__}: {first}).')



def versions() -> dict:
  """The library versions recorded with every checkpoint."""
  return {'jaxkd_version': jaxkd.__version__, 'jax_version': jax.__version__,
          'orbax_version': ocp.__version__}


def incomplete_steps(directory: str) -> list[str]:
  """Names of half-written step folders (interrupted saves) in `directory`."""
  if not os.path.isdir(directory):
    return []
  return sorted(name for name in os.listdir(directory) if TMP_SUFFIX in name)


def warn_incomplete(directory: str, action: str) -> None:
  """Warns (IncompleteCheckpointWarning) about half-written step folders in `directory`."""
  leftovers = incomplete_steps(directory)
  if leftovers:
    warnings.warn(
        f'{directory} holds half-written checkpoint folder(s) {leftovers} from an interrupted '
        f'save; they are {action}. The finished checkpoints next to them are intact.',
        IncompleteCheckpointWarning, stacklevel=3)


def reader(directory: str, item_names, handlers: dict | None = None) -> ocp.CheckpointManager:
  """A manager that never writes, creates or deletes anything."""
  verbosity = logging.get_verbosity()
  logging.set_verbosity(logging.ERROR)  # Orbax warns on every read-only manager it makes
  try:
    return ocp.CheckpointManager(
        directory, item_handlers=handlers or {name: HANDLERS[name]() for name in item_names},
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
  with reader(directory, STATE_ITEMS) as manager:
    return manager.latest_step()


def read_metadata(directory: str, step: int | None = None) -> dict:
  """The JSON description stored with step `step` (default: the newest) of `directory`."""
  directory = os.path.abspath(directory)
  with reader(directory, ('metadata',)) as manager:
    step = manager.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f'{directory!r} holds no finished checkpoint.')
    restored = manager.restore(step, args=ocp.args.Composite(metadata=ocp.args.JsonRestore()))
  return dict(restored['metadata'])



def newest_step(manager: ocp.CheckpointManager, directory: str) -> int:
  """The manager's newest step; FileNotFoundError if none."""
  step = manager.latest_step()
  if step is None:
    raise FileNotFoundError(f'{directory!r} holds no finished checkpoint.')
  return step

