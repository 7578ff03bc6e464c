"""The experiment command line: `python experiments/<script>.py --config FILE[:ARG]
[--config.key=value ...] --workdir DIR`, shared by every experiment script."""
from __future__ import annotations

import os
import sys


# What a run refuses (a bad setting, a missing or foreign folder, a diverged loss): printed as
# one line and exit status 2, no traceback unless $JAXKD_TRACEBACK is set.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, FloatingPointError, PermissionError,
               NotADirectoryError, IsADirectoryError)
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


def _config_error(error: BaseException) -> str:
  """A readable line from what ml_collections raises for a bad `--config` flag: an unknown
  key (with its "Did you mean" hint), a missing file, or a config's own refusal."""
  chain = [error]
  while (chain[-1].__cause__ or chain[-1].__context__) is not None:
    chain.append(chain[-1].__cause__ or chain[-1].__context__)

  def text(e: BaseException) -> str:
    while isinstance(e, BaseException):  # AttributeError(KeyError(...)) nests the message
      e = e.args[0] if e.args else str(e)
    return str(e)

  if isinstance(chain[-1], (KeyError, AttributeError)):
    key = text(chain[-1]).strip(chr(39) + '"')
    hints = [line for e in chain for line in text(e).splitlines() if 'Did you mean' in line]
    return (f'--config: unknown setting {key!r}; '
            + (hints[0].strip() if hints else 'see the config file for the valid ones'))
  # the first failure says most; a config's own refusal comes wrapped in a traceback whose
  # last line is the message
  lines = [line.strip() for line in text(chain[-1]).splitlines() if line.strip()]
  return f'--config: {lines[-1] if lines else type(chain[-1]).__name__}'


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with a refused flag or config printed as one `error: ...` line and
  exit status 2 (no traceback; `JAXKD_TRACEBACK=1` shows it)."""
  from absl import flags
  try:
    return flags.FLAGS(argv)
  except (flags.Error, KeyError, AttributeError, OSError, ValueError) as error:
    if os.environ.get(TRACEBACK_ENV, '').lower() in ('1', 'true', 'yes'):
      raise
    first = str(error).splitlines()[0] if str(error) else ''
    if isinstance(error, flags.Error) and (error.__cause__ or error.__context__) is None:
      message = first  # absl's own: an unknown flag, a missing value
    elif isinstance(error, flags.Error) and first.startswith('flag --') and 'config file' not in first:
      message = first.removeprefix('flag ')  # names the flag: "--config.x=abc: invalid ..."
    else:
      message = _config_error(error)
    print(f'error: {message}', file=sys.stderr, flush=True)
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
    settings = exit_on_user_error(_loaded, config)
    exit_on_user_error(distributed.initialize, coordinator.value, num_processes.value,
                       process_id.value, settings={'recipe': recipe, 'config': settings.to_dict()})
    from jaxkd import recipes
    recipes.enable_compilation_cache()
    final = exit_on_user_error(recipes.RECIPES[recipe], settings, workdir.value)
    if distributed.is_main() and 'test_accuracy' in final:
      print(f"test accuracy {final['test_accuracy']:.4f}  "
            f"params_sha256 {final['params_sha256']}")
    elif distributed.is_main() and 'test' in final:  # a language model's
      print(f"test bits per byte {final['test']['bits_per_byte']:.4f}  "
            f"params_sha256 {final['params_sha256']}")

  app.run(run, flags_parser=_parse_flags)


def _loaded(config_flag):
  """The parsed config (ml_collections loads the file lazily), its load errors as ValueError."""
  try:
    config = config_flag.value
    config.keys()  # a file that failed to load is a stand-in that raises on first use
    return config
  except (OSError, KeyError, AttributeError) as error:
    raise ValueError(_config_error(error)) from error
