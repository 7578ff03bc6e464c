"""The experiment command line: `python experiments/<script>.py --config FILE[:ARG]
[--config.key=value ...] --workdir DIR`, shared by every experiment script."""
from __future__ import annotations

import os
import sys


# What a run refuses (a bad setting, a missing or foreign folder, a diverged loss): printed as
# one line and exit status 2, no traceback unless $JAXKD_TRACEBACK is set.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, FloatingPointError)
TRACEBACK_ENV = 'JAXKD_TRACEBACK'


def exit_on_user_error(function, *args, **kwargs):
  """`function(*args, **kwargs)`; a refusal (`USER_ERRORS`) prints `error: ...` and exits 2
  (`JAXKD_TRACEBACK=1` re-raises it, with its traceback)."""
  try:
    return function(*args, **kwargs)
  except USER_ERRORS as error:
    if os.environ.get(TRACEBACK_ENV, '').lower() in ('1', 'true', 'yes'):
      raise
    print(f'error: {error}', file=sys.stderr, flush=True)
    sys.exit(2)


def main(recipe: str, script: str) -> None:
  """Runs `jaxkd.recipes.RECIPES[recipe](config, workdir)` with flags from `sys.argv`.

  `script` is the calling file; its `configs/` folder goes on `sys.path`, so config files
  can build on each other (`from fashion_mnist import get_config`). A refused run prints
  `error: ...` and exits with status 2 (`JAXKD_TRACEBACK=1` shows the traceback).
  `--coordinator_address`, `--num_processes` and `--process_id` make the run one process of
  several (`jaxkd.distributed.initialize`; none needed under SLURM or on a TPU pod).
  """
  from absl import app, flags
  from ml_collections import config_flags

  sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(script)), 'configs'))
  config = config_flags.DEFINE_config_file('config', None, 'Config file (experiments/configs).')
  workdir = flags.DEFINE_string('workdir', None, 'Output folder; a rerun resumes from it.')
  flags.mark_flags_as_required(['config', 'workdir'])
  coordinator = flags.DEFINE_string(
      'coordinator_address', '', 'host:port of process 0, for a run of several processes.')
  num_processes = flags.DEFINE_integer('num_processes', 0, 'Processes in the run (0: one).')
  process_id = flags.DEFINE_integer('process_id', -1, "This process's index, 0..n-1.")

  def run(argv):
    del argv
    from jaxkd import distributed
    from jaxkd import ops
    exit_on_user_error(ops.check_settings)  # JAXKD_CONV_IMPL & co., before anything runs
    exit_on_user_error(distributed.initialize, coordinator.value, num_processes.value,
                       process_id.value)
    from jaxkd import recipes
    recipes.enable_compilation_cache()
    final = exit_on_user_error(recipes.RECIPES[recipe], config.value, workdir.value)
    if distributed.is_main():
      print(f"test accuracy {final['test_accuracy']:.4f}  "
            f"params_sha256 {final['params_sha256']}")

  app.run(run)
