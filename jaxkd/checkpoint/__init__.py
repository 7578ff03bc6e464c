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

# One module per concern: the folder's files and errors, the final variables, the run's
# train-state checkpoints. Every public name is here (NOT_COMPARED and TMP_SUFFIX too).
from jaxkd.checkpoint.files import (
    TMP_SUFFIX, DamagedCheckpointError, DamagedCheckpointWarning, IncompatibleCheckpointError,
    IncompleteCheckpointWarning, incomplete_steps, latest_step, read_metadata, versions)
from jaxkd.checkpoint.final import load_variables, save_variables, variables_metadata
from jaxkd.checkpoint.run_state import (
    NOT_COMPARED, Checkpointer, Restored, check_resumable, differences)

__all__ = ['Checkpointer', 'DamagedCheckpointError', 'DamagedCheckpointWarning',
           'IncompatibleCheckpointError', 'IncompleteCheckpointWarning',
           'Restored', 'check_resumable', 'differences', 'incomplete_steps', 'latest_step',
           'load_variables', 'read_metadata', 'save_variables', 'variables_metadata', 'versions']
