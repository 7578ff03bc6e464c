"""Rerun one row of a table and set the new runs beside the recorded ones.

    python experiments/reproduce_headroom_kd.py --verify student --seeds 0

A table's numbers are only as good as the claim that its code makes them: this reruns the
runs of a row (in a new folder, never over the recorded runs) and prints, per run, the test
accuracy and `params_sha256` recorded in the results JSON and those of the rerun. A run that
needs a teacher (`teacher_dir`) or an initialization (`init_dir`) uses the one under --root
when it is there, else reruns it too.
"""
from __future__ import annotations

import copy
import fnmatch
import json
import os
import tempfile
from typing import Sequence

from jaxkd import recipes
from jaxkd.tables.sweep import RunSpec

UPSTREAM = ('teacher_dir', 'init_dir')  # config keys naming another run of the table


def _rerun(spec: RunSpec, by_workdir: dict[str, RunSpec], verify_root: str,
           done: dict[str, str]) -> tuple[str, dict]:
  """Runs `spec` under `verify_root` (its missing upstream runs first); (workdir, final)."""
  config = copy.deepcopy(spec.config)
  for key in UPSTREAM:
    upstream = config.get(key)
    if not upstream or os.path.exists(os.path.join(upstream, 'final')):
      continue
    if upstream not in done:
      if upstream not in by_workdir:
        raise FileNotFoundError(f'{spec.table}/{spec.row} seed {spec.seed} needs {upstream}, '
                                'which is neither there nor a run of this profile.')
      done[upstream] = _rerun(by_workdir[upstream], by_workdir, verify_root, done)[0]
    config[key] = done[upstream]
  workdir = spec.workdir(verify_root)
  print(f'verify: running {spec.table}/{spec.row} seed {spec.seed} in {workdir}', flush=True)
  return workdir, recipes.RECIPES[spec.recipe](config, workdir)


def verify_rows(specs: Sequence[RunSpec], *, row: str, seeds: set[int] | None, root: str,
                recorded: str, verify_root: str | None = None) -> int:
  """Reruns the runs of `specs` whose row matches `row` (fnmatch) and seed is in `seeds`
  (None: all), and prints recorded vs now; returns how many differ (accuracy or params).

  Raises:
    ValueError: no run matches.
  """
  chosen = [s for s in specs if fnmatch.fnmatchcase(s.row, row)
            and (seeds is None or s.seed in seeds)]
  if not chosen:
    raise ValueError(f'--verify {row!r} (seeds {sorted(seeds) if seeds else "all"}) matches '
                     'no run of this profile.')
  runs = {}
  if os.path.exists(recorded):
    with open(recorded) as f:
      runs = {(r['table'], r['row'], r['seed']): r for r in json.load(f)['runs']}
  else:
    print(f'verify: no recorded results at {recorded}; printing the new runs alone.')
  if verify_root is None:
    parent = os.path.dirname(os.path.abspath(root))
    os.makedirs(parent, exist_ok=True)
    verify_root = tempfile.mkdtemp(prefix=f'{os.path.basename(root)}_verify_', dir=parent)
  by_workdir = {s.workdir(root): s for s in specs}
  done: dict[str, str] = {}
  lines, differing = [], 0
  for spec in chosen:
    _, final = _rerun(spec, by_workdir, verify_root, done)
    old = runs.get((spec.table, spec.row, spec.seed), {})
    now_acc, now_sha = final['test_accuracy'], final.get('params_sha256')
    same = (old.get('test_accuracy') == now_acc, old.get('params_sha256') == now_sha)
    differing += not all(same)
    old_acc = old.get('test_accuracy')
    lines.append(
        f"{spec.table}/{spec.row} seed {spec.seed}: test accuracy recorded "
        f"{'-' if old_acc is None else f'{100 * old_acc:.2f}'} %, now {100 * now_acc:.2f} % "
        f"({'same' if same[0] else 'DIFFERS'}); params_sha256 recorded "
        f"{(old.get('params_sha256') or '-')[:16]}, now {(now_sha or '-')[:16]} "
        f"({'same' if same[1] else 'DIFFERS'})")
  print('\n'.join(['', f'Verified against {recorded} (new runs in {verify_root}):', *lines]))
  return differing
