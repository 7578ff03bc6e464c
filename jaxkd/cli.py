"""The experiment command line: `python experiments/<script>.py --config FILE[:ARG]
[--config.key=value ...] --workdir DIR`, shared by every experiment script."""
from __future__ import annotations

import os
import sys


def main(recipe: str, script: str) -> None:
  """Runs `jaxkd.recipes.RECIPES[recipe](config, workdir)` with flags from `sys.argv`.

  `script` is the calling file; its `configs/` folder goes on `sys.path`, so config files
  can build on each other (`from fashion_mnist import get_config`).
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
    final = recipes.RECIPES[recipe](config.value, workdir.value)
    print(f"test accuracy {final['test_accuracy']:.4f}  params_sha256 {final['params_sha256']}")

  app.run(run)
