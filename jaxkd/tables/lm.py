"""Language-model tables: run a table's specs with the `language_model` recipe, gate the
distillation rows on the teacher's headroom, and write `<name>.json` (`runs`, `summary`,
`tests`), `<name>.md` and a curves plot. Everything is rebuilt from the run outputs.

A table's config module (`experiments/configs/reproduce_<name>.py`) provides `NAME`,
`ROWS` (row -> what it is), `PROFILES`, `get_config(profile)`, `run_specs(config, root)` and
`CONTROL` (the row the others are tested against), optionally `ALONE` (the student trained
alone, default `CONTROL`); `config.min_headroom` is the margin in nats per token by which the
teacher must beat `ALONE` on validation before any distillation row runs. Runs may belong to
another table (a shared teacher: `RunSpec.table` names where it lives); rows are one table.
"""
from __future__ import annotations

import argparse
import json
import os
from typing import Any, Sequence

from jaxkd import recipes
from jaxkd.tables import reproduce, stats, sweep
from jaxkd.tables.sweep import RunSpec

METRICS = ('test_bits_per_byte', 'test_loss', 'valid_bits_per_byte', 'valid_loss',
           'test_accuracy', 'test_agreement', 'test_ece')


def run_record(spec: RunSpec, final: dict) -> dict:
  """The results JSON's row of one finished run."""
  record = {'table': spec.table, 'row': spec.row, 'seed': spec.seed, **spec.info,
            'steps': final.get('steps'), 'seconds': final.get('seconds'),
            'params_sha256': final.get('params_sha256')}
  for split in ('valid', 'test'):
    for key, value in final[split].items():
      record[f'{split}_{key}'] = value
  return record


def headroom(records: Sequence[dict], control: str) -> float | None:
  """Validation nats per token by which the teacher beats the mean of `control`'s runs."""
  teacher = [r['valid_loss'] for r in records if r['row'] == 'teacher']
  students = [r['valid_loss'] for r in records if r['row'] == control]
  if not teacher or not students:
    return None
  return stats.mean_std(students)[0] - teacher[0]


def execute(table: Any, specs: Sequence[RunSpec], *, config, root: str,
            on_result=None, collect_only: bool = False) -> list[dict]:
  """Runs each spec in order (finished runs are read); refuses the distillation rows (those
  with a teacher) while the teacher's headroom over the student alone is below
  `config.min_headroom`."""
  alone = getattr(table, 'ALONE', table.CONTROL)
  records = []
  for index, spec in enumerate(specs):
    workdir = spec.workdir(root)
    final_path = os.path.join(workdir, 'final_metrics.json')
    sweep.check_run_config(spec, workdir, write=not collect_only)
    where = f'[{index + 1}/{len(specs)}] {spec.table}/{spec.row} seed {spec.seed}'
    if os.path.exists(final_path):
      with open(final_path) as f:
        final = json.load(f)
    elif collect_only:
      print(f'{where}: not run', flush=True)
      continue
    else:
      if spec.config.get('teacher_dir'):
        margin = headroom(records, alone)
        if margin is None or margin < config.min_headroom:
          raise RuntimeError(
              f'{where}: the teacher beats {alone} by {margin} nats/token on '
              f'validation, below the {config.min_headroom} the table needs before any '
              'distillation row runs; train a stronger teacher (more steps) first.')
      print(where, flush=True)
      final = recipes.RECIPES[spec.recipe](spec.config, workdir)
    records.append(run_record(spec, final))
    print(f"{where}: test bits/byte {final['test']['bits_per_byte']:.4f}", flush=True)
    if on_result is not None:
      on_result(records)
  return records


def summarize(records: Sequence[dict], rows: Sequence[str]) -> list[dict]:
  """Mean +- std of `METRICS` per row, in `rows` order, then any other row (a selection
  grid's) in the order first seen."""
  out = []
  for row in dict.fromkeys([*rows, *(r['row'] for r in records)]):
    runs = [r for r in records if r['row'] == row]
    if not runs:
      continue
    summary = {'row': row, 'seeds': [r['seed'] for r in runs], 'n': len(runs)}
    for metric in METRICS:
      values = [r[metric] for r in runs if r.get(metric) is not None]
      if values:
        summary[f'{metric}_mean'], summary[f'{metric}_std'] = stats.mean_std(values)
    out.append(summary)
  return out


def tests(records: Sequence[dict], rows: Sequence[str], control: str,
          metric: str = 'test_bits_per_byte') -> list[dict]:
  """Paired one-sided tests that each row has lower `metric` than `control` (same seeds)."""
  found = []
  table = next((r['table'] for r in records if r['row'] == control), records[0]['table'])
  for row in rows:
    if row in (control, 'teacher'):
      continue
    # lower is better: the control's value minus the row's is the gain; a row's runs may
    # live in another table's folder (shared), the rows are still one table
    test = sweep.compare([{**r, 'table': table, metric: -r[metric]}
                          for r in records if metric in r],
                         table=table, treatment=row, control=control, metric=metric)
    if test['seeds']:
      found.append(test)
  for test, p in zip(found, stats.holm([t['p_value'] for t in found])):
    test['p_holm'] = p
  return found


def render(payload: dict, rows: dict[str, str], title: str) -> str:
  """The Markdown of a language-model table."""
  lines = reproduce.header(title, payload)
  cell = lambda r, m: ('-' if f'{m}_mean' not in r else  # noqa: E731
                       f"{r[f'{m}_mean']:.4f}" + (f" ± {r[f'{m}_std']:.4f}" if r['n'] > 1 else ''))
  lines += reproduce.markdown_table([
      ('row', lambda r: r['row']), ('what', lambda r: rows.get(r['row'], '')),
      ('seeds', lambda r: str(r['n'])),
      ('test bits/byte', lambda r: cell(r, 'test_bits_per_byte')),
      ('test nats/token', lambda r: cell(r, 'test_loss')),
      ('valid bits/byte', lambda r: cell(r, 'valid_bits_per_byte')),
      ('test agreement', lambda r: cell(r, 'test_agreement')),
      ('test ECE', lambda r: cell(r, 'test_ece'))], payload['summary'])
  if payload.get('headroom') is not None:
    lines += ['', f"Teacher headroom over the student alone on validation: "
              f"{payload['headroom']:.3f} nats/token."]
  if payload['tests']:
    lines += ['', 'Paired one-sided tests, lower test bits per byte than the control (mean '
              "difference in bits per byte; Holm's correction across the rows tested):", '']
    lines += reproduce.markdown_table([
        ('treatment', lambda t: t['treatment']), ('control', lambda t: t['control']),
        ('seeds', lambda t: str(len(t['seeds']))),
        ('gain (bits/byte)', lambda t: f"{t['mean_difference']:+.4f}"),
        ('p (t-test)', lambda t: f"{t['p_value']:.3g}"),
        ('p (Holm)', lambda t: f"{t['p_holm']:.3g}"),
        ('p (sign-flip)', lambda t: f"{t['p_value_sign_flip']:.3g}")], payload['tests'])
  return '\n'.join(lines + reproduce.plots_line(payload))


def plot_curves(path: str, specs: Sequence[RunSpec], root: str, rows: dict[str, str]) -> bool:
  """Validation bits per byte against the step, the mean over each row's runs."""
  series = {}
  for row, label in rows.items():
    curves = []
    for spec in specs:
      if spec.row == row:
        metrics = os.path.join(spec.workdir(root), 'metrics.jsonl')
        if os.path.exists(metrics):
          with open(metrics) as f:
            points = [json.loads(line) for line in f]
          curve = [(p['step'], p['valid_bits_per_byte']) for p in points
                   if 'valid_bits_per_byte' in p]
          if curve:
            curves.append(curve)
    if curves:
      length = min(len(c) for c in curves)
      series[f'{label} (n={len(curves)})'] = [
          (curves[0][i][0], sum(c[i][1] for c in curves) / len(curves)) for i in range(length)]
  if series:
    sweep.plot_lines(path, series, xlabel='step', ylabel='validation bits per byte',
                     title='Language-model distillation')
  return bool(series)


def run_table(table: Any, specs: Sequence[RunSpec], *, config, profile: str, root: str,
              results_dir: str, collect_only: bool = False) -> dict:
  """Runs (or reads) `specs`; writes the results JSON and Markdown after every run, and
  the curves plot at the end."""
  name = table.NAME if profile == 'full' else f'{table.NAME}_{profile}'
  plot_name = f'{name}_curves.png'
  payload: dict = {}

  def publish(records):
    payload.clear()
    payload.update(sweep.header(name, profile))
    payload.update(runs=records, summary=summarize(records, list(table.ROWS)),
                   tests=tests(records, list(table.ROWS), table.CONTROL) if records else [],
                   headroom=headroom(records, getattr(table, 'ALONE', table.CONTROL)),
                   selection=table.SELECTION_NOTE,
                   plots=[plot_name] if os.path.exists(os.path.join(results_dir, plot_name))
                   else [])
    sweep.write_results(results_dir, name, payload, render(payload, table.ROWS, table.TITLE))

  records = execute(table, specs, config=config, root=root, on_result=publish,
                    collect_only=collect_only)
  plot_curves(os.path.join(results_dir, plot_name), specs, root, table.ROWS)
  publish(records)
  return payload


def command_line(doc: str, table: Any, *, default_root: str, full_results: str,
                 argv=None) -> dict:
  """--profile, --root, --results, --collect-only; builds the specs and runs them."""
  parser = argparse.ArgumentParser(description=doc.splitlines()[0])
  parser.add_argument('--profile', default='full', choices=sorted(table.PROFILES))
  parser.add_argument('--root', default=None)
  parser.add_argument('--results', default=None)
  parser.add_argument('--collect-only', action='store_true')
  args = parser.parse_args(argv)
  recipes.enable_compilation_cache()
  config = table.get_config(args.profile)
  root = args.root or f'{default_root}_{args.profile}'
  results = args.results or (full_results if args.profile == 'full'
                             else os.path.join(root, 'results'))
  return run_table(table, table.run_specs(config, root), config=config, profile=args.profile,
                   root=root, results_dir=results, collect_only=args.collect_only)
