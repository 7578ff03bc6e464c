"""Seed sweeps that produce reference tables: run (or skip finished runs), aggregate, test,
and write `<name>.json`, `<name>.md` and plots. Everything is rebuilt from run outputs."""
from __future__ import annotations

import dataclasses
import datetime
import json
import os
import sys
import time
from typing import Any, Callable, Sequence

from jaxkd import paths, recipes
from jaxkd.tables import stats
from jaxkd.recipes.environment import git_commit
from jaxkd.recipes.provenance import cpu_model


@dataclasses.dataclass
class RunSpec:
  """One run of a table: `recipe` names one of `jaxkd.recipes.RECIPES`."""

  table: str
  row: str
  seed: int
  recipe: str
  config: Any
  info: dict = dataclasses.field(default_factory=dict)  # e.g. {'temperature': 4.0}

  def workdir(self, root: str) -> str:
    return os.path.join(root, self.table, self.row, f'seed{self.seed}')


def machine() -> dict:
  return {**recipes.machine(), 'cpu_model': cpu_model()}


RUN_CONFIG = 'run_config.json'  # the spec's config, written when a run starts


def _plain(config: Any) -> Any:
  """The config as plain JSON values (tuples become lists), for storing and comparing."""
  value = config.to_dict() if hasattr(config, 'to_dict') else config
  return json.loads(json.dumps(value, sort_keys=True, default=str))


def check_run_config(spec: RunSpec, workdir: str, *, write: bool = True) -> None:
  """Refuses a workdir holding (part of) a run of another config, before anything is read
  into a table or resumed; with `write`, stores the config of a run not finished yet.
  Workdirs from before configs were stored are taken as they are."""
  path = os.path.join(workdir, RUN_CONFIG)
  current = _plain(spec.config)
  if os.path.exists(path):
    with open(path) as f:
      differences = [f'{key}: {a!r} -> {b!r}'
                     for key, (a, b) in paths.differences(json.load(f), current).items()]
    if differences:
      raise ValueError(
          f'{workdir} holds a run of {spec.table}/{spec.row} seed {spec.seed} with another '
          f'config ({"; ".join(differences[:5])}{"; ..." if len(differences) > 5 else ""}). '
          'Move that folder away (or pass another --root) to run the current config, or '
          'restore the config that made it.')
  elif write and not os.path.exists(os.path.join(workdir, 'final_metrics.json')):
    os.makedirs(workdir, exist_ok=True)
    recipes.write_json(path, current)


def run_record(spec: RunSpec, final: dict) -> dict:
  """The row of the results JSON for one finished run."""
  test_count = final.get('test_count', 0)
  return {
      'table': spec.table, 'row': spec.row, 'seed': spec.seed, **spec.info,
      'test_accuracy': final['test_accuracy'],
      'test_errors': round((1 - final['test_accuracy']) * test_count),
      'best_val_test_accuracy': final.get('best_val_test_accuracy'),
      'best_val_accuracy': final.get('best_val_accuracy'),
      'best_epoch': final.get('best_epoch'),
      'epochs': final.get('epochs'),
      'wall_seconds': final.get('wall_seconds'),
      'params_sha256': final.get('params_sha256'),
      # checkpoints ranked on test data (refused unless a config allowed it; then shown)
      'test_selection': bool((final.get('selection') or {}).get('test_selection')),
      # what made this run (commit, versions, dataset, CPU); absent in runs from before
      **({'provenance': final['provenance']} if final.get('provenance') else {}),
  }


def execute(specs: Sequence[RunSpec], *, root: str,
            on_result: Callable[[list[dict]], None] | None = None,
            collect_only: bool = False) -> list[dict]:
  """Runs each spec in order in `root/table/row/seedN`; finished runs are read, not re-run
  (a crashed run resumes from its own checkpoint). Calls `on_result(records)` after each.
  `collect_only` reads the finished runs and runs nothing. A workdir whose stored config
  (`run_config.json`) differs from its spec's is refused with the differences listed."""
  records = []
  for index, spec in enumerate(specs):
    workdir = spec.workdir(root)
    final_path = os.path.join(workdir, 'final_metrics.json')
    check_run_config(spec, workdir, write=not collect_only)
    if os.path.exists(final_path):
      with open(final_path) as f:
        final = json.load(f)
      status = 'done before'
    elif collect_only:
      print(f'[{index + 1}/{len(specs)}] {spec.table}/{spec.row} seed {spec.seed}: not run',
            flush=True)
      continue
    else:
      start = time.perf_counter()
      print(f'[{index + 1}/{len(specs)}] {spec.table}/{spec.row} seed {spec.seed}', flush=True)
      final = recipes.RECIPES[spec.recipe](spec.config, workdir)
      status = f'{time.perf_counter() - start:.0f} s'
    records.append(run_record(spec, final))
    print(f'[{index + 1}/{len(specs)}] {spec.table}/{spec.row} seed {spec.seed}: test accuracy '
          f'{100 * final["test_accuracy"]:.2f} % ({status})', flush=True)
    if on_result is not None:
      on_result(records)
  return records


def summarize(records: Sequence[dict], *, group=('table', 'row')) -> list[dict]:
  """Mean +- std per group of runs, in first-seen order."""
  groups: dict[tuple, list[dict]] = {}
  for record in records:
    groups.setdefault(tuple(record.get(k) for k in group), []).append(record)
  rows = []
  for key, runs in groups.items():
    row = dict(zip(group, key), seeds=[r['seed'] for r in runs], n=len(runs))
    for metric in ('test_accuracy', 'test_errors', 'best_val_test_accuracy',
                   'best_val_accuracy'):
      values = [r[metric] for r in runs if r.get(metric) is not None]
      if values:
        row[f'{metric}_mean'], row[f'{metric}_std'] = stats.mean_std(values)
    rows.append(row)
  return rows


def compare(records: Sequence[dict], *, table: str, treatment: str, control: str,
            metric: str = 'test_accuracy') -> dict:
  """Paired test across seeds that `treatment` beats `control` on `metric`."""
  by_seed = lambda row: {r['seed']: r[metric] for r in records
                         if r['table'] == table and r['row'] == row and r.get(metric) is not None}
  a, b = by_seed(treatment), by_seed(control)
  seeds = sorted(set(a) & set(b))
  return {'table': table, 'treatment': treatment, 'control': control, 'metric': metric,
          'seeds': seeds, **stats.paired_test([a[s] for s in seeds], [b[s] for s in seeds])}


def write_results(directory: str, name: str, payload: dict, markdown: str) -> None:
  os.makedirs(directory, exist_ok=True)
  recipes.write_json(os.path.join(directory, f'{name}.json'), payload)
  with open(os.path.join(directory, f'{name}.md'), 'w') as f:
    f.write(markdown)


def header(name: str, profile: str) -> dict:
  # `python path/relative/to/cwd ...`, runnable again from where it was run
  argv = [os.path.relpath(sys.argv[0])] + sys.argv[1:] if sys.argv and sys.argv[0] else sys.argv
  return {'name': name, 'profile': profile, 'command': ' '.join(['python'] + argv),
          'git_commit': git_commit(), 'machine': machine(),
          'date': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}


def pct(mean: float | None, std: float | None = None) -> str:
  if mean is None:
    return '-'
  return f'{100 * mean:.2f}' + ('' if std is None else f' ± {100 * std:.2f}')


def epoch_curves(workdir: str, metric: str = 'test_accuracy') -> list[tuple[float, float]]:
  """(epoch, value) pairs of an evaluated metric from a run's metrics.jsonl."""
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(path):
    return []
  points = {}
  with open(path) as f:
    for line in f:
      record = json.loads(line)
      if metric in record:
        points[record['epoch']] = record[metric]
  return sorted(points.items())


def plot_lines(path: str, series: dict[str, list[tuple[float, float]]], *, xlabel: str,
               ylabel: str, title: str, logx: bool = False, refs: dict | None = None) -> None:
  """One PNG with a line per series (matplotlib, headless)."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
  for label, points in series.items():
    if points:
      xs, ys = zip(*points)
      ax.plot(xs, ys, marker='o', markersize=3, label=label)
  for label, value in (refs or {}).items():
    ax.axhline(value, linestyle='--', linewidth=0.8, color='gray')
    ax.annotate(label, (ax.get_xlim()[0], value), fontsize=7, color='gray',
                xytext=(2, 2), textcoords='offset points')
  if logx:  # ticks at the measured points (temperatures, labels per class), not powers of 2
    ax.set_xscale('log', base=2)
    xs = sorted({x for points in series.values() for x, _ in points})
    ax.set_xticks(xs, [f'{x:g}' for x in xs])
    ax.minorticks_off()
  ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fig.savefig(path)
  plt.close(fig)
