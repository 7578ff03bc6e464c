"""Final variables (a teacher, or the source of a transfer): `WORKDIR/final/STEP/{variables,
metadata}`, saved once, read by path, checked leaf by leaf against the checksums saved with
them."""
from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from jaxkd import distributed
from jaxkd.checkpoint.files import (FINAL_ITEMS, HANDLERS, DamagedCheckpointError, PyTree,
                                    damage_error, newest_step, read_metadata, reader, versions,
                                    warn_incomplete)
from jaxkd.paths import flatten
from jaxkd.state import leaf_sha256, tree_sha256


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
    with reader(directory, FINAL_ITEMS) as manager:
      exists = step in manager.all_steps()
    if exists:
      stored = read_metadata(directory, step)
      if stored.get('variables_sha256') == fingerprint:
        return
      raise FileExistsError(
          f'{directory} already holds different variables at step {step} '
          f'(sha256 {stored.get("variables_sha256")}, not {fingerprint}); use a new workdir.')
  warn_incomplete(directory, 'ignored and removed')
  metadata = {**metadata, 'step': int(step), 'variables_sha256': fingerprint,
              'leaf_sha256': leaf_sha256(variables), **versions()}
  options = ocp.CheckpointManagerOptions(
      create=True, cleanup_tmp_directories=True,
      preservation_policy=policies.LatestN(n=1))
  with ocp.CheckpointManager(directory, item_names=FINAL_ITEMS, options=options) as manager:
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
  warn_incomplete(directory, 'ignored')
  with reader(directory, FINAL_ITEMS) as manager:
    step = newest_step(manager, directory)
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
  warn_incomplete(directory, 'ignored')
  try:
    if target is None:
      with reader(directory, FINAL_ITEMS) as manager:
        step = newest_step(manager, directory)
        abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype),
                                manager.item_metadata(step)['variables'].tree)
        restored = manager.restore(step, args=ocp.args.Composite(
            variables=ocp.args.StandardRestore(abstract), metadata=ocp.args.JsonRestore()))
    else:
      # StandardRestore takes no placeholders; PyTreeRestore reads the same files and skips them.
      abstract = jax.tree.map(_abstract, target)
      handlers = {'variables': ocp.PyTreeCheckpointHandler(), 'metadata': HANDLERS['metadata']()}
      with reader(directory, FINAL_ITEMS, handlers=handlers) as manager:
        step = newest_step(manager, directory)
        restored = manager.restore(step, args=ocp.args.Composite(
            variables=ocp.args.PyTreeRestore(
                item=abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract)),
            metadata=ocp.args.JsonRestore()))
  except FileNotFoundError:
    raise
  except Exception as error:  # noqa: BLE001 - Orbax, TensorStore, zlib, JSON errors
    raise damage_error(directory, error) from error
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


def _abstract(leaf):
  if leaf is ocp.PLACEHOLDER or isinstance(leaf, jax.ShapeDtypeStruct):
    return leaf
  return ocp.utils.to_shape_dtype_struct(leaf)
