"""What made a run: the code (commit, clean tree), the packages, the data and the machine.

Recorded in every run's final metrics (`provenance`) and carried into the results JSON of
the tables, so a number can be traced to the commit, versions, dataset and CPU that made it,
and a table gathered from runs at several commits says so.
"""
from __future__ import annotations

import datetime
import functools
import importlib.metadata
import os
import subprocess

# The packages whose versions can change a run's numbers (or its speed).
PACKAGES = ('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'numpy', 'scipy',
            'ml-collections', 'tensorflow-datasets', 'chex')


def _git(*args: str) -> str | None:
  try:
    return subprocess.run(['git', *args], capture_output=True, text=True, check=True,
                          cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return None


def git_commit() -> str:
  """The commit of the checkout this library is imported from ('unknown' outside git)."""
  return _git('rev-parse', 'HEAD') or 'unknown'


def git_clean() -> bool | None:
  """Whether the checkout's tracked files are as committed (None outside git): untracked
  files (run folders, results being written) are not code that ran."""
  status = _git('status', '--porcelain', '--untracked-files=no')
  return None if status is None else status == ''


@functools.cache
def package_versions(packages: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
  """The installed version of each of `packages` (None where it is not installed)."""
  versions = {}
  for name in packages:
    try:
      versions[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      versions[name] = None
  return versions


def utc_now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')


def run_provenance(config, *, started: str, ended: str | None = None) -> dict:
  """What made a run of `config`, for its final metrics: commit and clean tree, start and
  end time (UTC), package versions, the dataset's SHA-256 (`jaxkd.data.dataset_sha256`),
  the CPU and its vector instruction set, and the convolution and pooling paths."""
  from jaxkd import data  # local imports: TFDS is slow to import
  from jaxkd import ops
  from jaxkd.recipes.provenance import cpu_isa, cpu_model
  import jax
  dataset = config.get('dataset') or 'fashion_mnist'
  try:
    dataset_sha = data.dataset_sha256(dataset)
  except Exception as error:  # a provenance field must never fail a finished run
    dataset_sha = f'unknown ({type(error).__name__})'
  return {
      'git_commit': git_commit(), 'git_clean': git_clean(),
      'started': started, 'ended': ended or utc_now(),
      'packages': dict(package_versions()), 'python': _python_version(),
      'dataset': dataset, 'dataset_sha256': dataset_sha,
      'cpu_model': cpu_model(), 'cpu_isa': cpu_isa()['isa'],
      'backend': jax.default_backend(),
      'conv_impl': ops.current().conv_impl, 'pool_impl': ops.current().pool_impl,
  }


def _python_version() -> str:
  import platform
  return platform.python_version()


def started_before(seconds: float) -> str:
  """The UTC time `seconds` ago: a run's start from its wall time."""
  start = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=seconds)
  return start.isoformat(timespec='seconds')
