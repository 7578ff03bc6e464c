"""The experiment command line: `python experiments/<script>.py --config FILE[:ARG]
[--config.key=value ...] --workdir DIR`, shared by every experiment script."""
from __future__ import annotations

import os
import sys


# What a run refuses (a bad setting, a missing or foreign folder, a diverged loss): printed as
# one line and exit status 2, no traceback unless $JAXKD_TRACEBACK is set.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, FloatingPointError)
TRACEBACK_ENV = 'JAXKD_TRACEBACK'


def main(recipe: str, script: str) -> None:
  """Runs `jaxkd.recipes.RECIPES[recipe](config, workdir)` with flags from `sys.argv`.

  `script` is the calling file; its `configs/` folder goes on `sys.path`, so config files
  can build on each other (`from fashion_mnist import get_config`). A refused run prints
  `error: ...` and exits with status 2 (`JAXKD_TRACEBACK=1` shows the traceback).
  """
  from absl import app, flags
  from ml_collections import config_flags

  sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(script)), 'configs'))
  config = config_flags.DEFINE_config_file('config', None, 'Config file (experiments/configs).')
  workdir = flags.DEFINE_string('workdir', None, 'Output folder; a rerun resumes from it.')
  flags.mark_flags_as_required(['config', 'workdir'])

  def run(argv):
    del argv
    from jaxkd import recipes
    recipes.enable_compilation_cache()
    try:
      final = recipes.RECIPES[recipe](config.value, workdir.value)
    except USER_ERRORS as error:
      if os.environ.get(TRACEBACK_ENV, '').lower() in ('1', 'true', 'yes'):
        raise
      print(f'error: {error}', file=sys.stderr, flush=True)
      sys.exit(2)
    print(f"test accuracy {final['test_accuracy']:.4f}  params_sha256 {final['params_sha256']}")

  app.run(run)
