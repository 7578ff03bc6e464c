"""Reference tables: run a table's specs, then write its JSON, Markdown and plots.

The machinery is generic; what describes one table (its rows and their labels, the paired
tests, the published figures, how its Markdown reads and which plots it draws) lives in the
table's config module under `experiments/configs/`, which provides:

  NAME                                  file stem of the results ('<NAME>[_<profile>]')
  PROFILES, get_config(profile)         the profiles and their config
  run_specs(config, root)               every run, in order (`jaxkd.tables.sweep.RunSpec`)
  tabulate(records, config) -> dict     summaries and tests for the results JSON
  render(payload) -> str                the Markdown of the results JSON

and, for a table with plots,

  plot_files(name) -> {key: file}       the plots it may draw (PNG file names)
  plot(records, specs, *, config, root, paths)  draws the plots (`paths`: key -> path)
"""
from __future__ import annotations

import argparse
import fnmatch
import importlib
import os
import sys
from typing import Any, Callable, Sequence

import numpy as np

from jaxkd import recipes
from jaxkd.tables import sweep
from jaxkd.tables.sweep import RunSpec, pct


def load_table(path: str) -> Any:
  """The table description module at `path` (`experiments/configs/reproduce_<name>.py`).

  Its folder goes on `sys.path`, and stays: a description imports the configs beside it,
  some only when `get_config` is called."""
  folder = os.path.dirname(os.path.abspath(path))
  if folder not in sys.path:
    sys.path.insert(0, folder)
  return importlib.import_module(os.path.splitext(os.path.basename(path))[0])


def run_table(table: Any, specs: Sequence[RunSpec], *, config, profile: str, root: str,
              results_dir: str, collect_only: bool = False) -> dict:
  """Runs (or reads) `specs`, then writes `table`'s results JSON, Markdown and plots into
  `results_dir`; the JSON and Markdown are rewritten after every finished run."""
  name = table.NAME if profile == 'full' else f'{table.NAME}_{profile}'
  plots = table.plot_files(name) if hasattr(table, 'plot_files') else {}
  payload = {}

  def publish(records):
    payload.clear()
    payload.update(sweep.header(name, profile))
    payload.update(table.tabulate(records, config))
    payload['plots'] = [p for p in plots.values()
                        if os.path.exists(os.path.join(results_dir, p))]
    sweep.write_results(results_dir, name, payload, table.render(payload))

  records = sweep.execute(specs, root=root, on_result=publish, collect_only=collect_only)
  if plots:
    table.plot(records, specs, config=config, root=root,
               paths={key: os.path.join(results_dir, p) for key, p in plots.items()})
  publish(records)
  print(table.render(payload))
  print(f'Tables and plots: {os.path.abspath(results_dir)}/{name}.{{md,json}}'
        + ''.join(f', {p}' for p in payload['plots']))
  return payload


# --- Markdown ----------------------------------------------------------------------------------

def header(title: str, payload: dict) -> list[str]:
  """A table file's first lines: title, command, commit, date and machine of the collection,
  and the commits the runs themselves were made at (`commits_line`)."""
  machine = payload['machine']
  return [f'# {title}', '', f"Command: `{payload['command']}`  ",
          f"Collected at commit {payload['git_commit'][:10]}, {payload['date']}, "
          f"{machine['cpu_model']} ({machine['cores']} cores, {machine['device_kind']}).  ",
          commits_line(payload.get('runs', ())), '']


def commits_line(runs: Sequence[dict]) -> str:
  """Which commits made `runs` (their `provenance`): one, several (then said so, with the
  runs of each), or none recorded (runs from before provenance was recorded)."""
  counts: dict[str, int] = {}
  dirty = 0
  for run in runs:
    made = run.get('provenance') or {}
    commit = made['git_commit'][:10] if made.get('git_commit') else 'not recorded'
    counts[commit] = counts.get(commit, 0) + 1
    dirty += made.get('git_clean') is False
  changes = f'; {dirty} with uncommitted changes' if dirty else ''
  if not counts:
    return 'No runs yet.'
  if list(counts) == ['not recorded']:
    return ('The runs record no commit of their own (made before runs recorded their '
            'provenance): the commit above is the collection\'s, not necessarily theirs.')
  if len(counts) == 1:
    return f'Every run made at commit {next(iter(counts))}{changes}.'
  listed = ', '.join(f'{commit} ({n} run{"s" * (n > 1)})' for commit, n in counts.items())
  return f'Runs made at SEVERAL commits: {listed}{changes}.'


def versus(rows: dict, baseline: str, *, skip: Sequence[str] = ()) -> Callable[[dict], str]:
  """A table column: a row's mean test accuracy minus the `baseline` row's, in points (blank
  for the rows in `skip` and when either mean is missing)."""
  base = rows.get(baseline, {}).get('test_accuracy_mean')

  def column(row: dict) -> str:
    mean = row.get('test_accuracy_mean')
    if base is None or mean is None or row['row'] in skip:
      return ''
    return f'{100 * (mean - base):+.2f}'

  return column


def cell(row: dict, metric: str, *, count: bool = False) -> str:
  """`mean ± std` of a summary row's metric (percent, or a count); no std for one run."""
  mean, std = row.get(f'{metric}_mean'), row.get(f'{metric}_std') if row['n'] > 1 else None
  if not count or mean is None:
    return pct(mean, std)
  return f'{mean:.0f}' + ('' if std is None else f' ± {std:.0f}')


def reference(references: dict, row: str) -> str:
  """A published figure for `row` (`{'accuracy': ..}` or `{'errors': ..}`, and `source`)."""
  ref = references.get(row)
  if not ref:
    return ''
  value = pct(ref['accuracy']) + ' %' if 'accuracy' in ref else f"{ref['errors']} errors"
  return f"{value} ({ref['source']})"


def markdown_table(columns: Sequence[tuple[str, Callable[[Any], str]]],
                   items: Sequence[Any]) -> list[str]:
  """A Markdown table with a line per item: `columns` are (heading, item -> cell text)."""
  lines = ['| ' + ' | '.join(heading for heading, _ in columns) + ' |',
           '|' + '---|' * len(columns)]
  lines += ['| ' + ' | '.join(fn(item) for _, fn in columns) + ' |' for item in items]
  return lines


def paired_test_columns(*, first: Sequence[tuple[str, Callable]] = (), metric: bool = False,
                        t_statistic: bool = False) -> list[tuple[str, Callable]]:
  """The columns of a table of paired tests (rows of `jaxkd.tables.sweep.compare`): `first`, then
  treatment, control, [metric], seeds, mean difference, [t], the t-test and sign-flip p."""
  columns = [*first, ('treatment', lambda t: t['treatment']), ('control', lambda t: t['control'])]
  if metric:
    columns.append(('metric', lambda t: t['metric']))
  columns += [('seeds', lambda t: str(len(t['seeds']))),
              ('mean diff (points)', lambda t: f"{100 * t['mean_difference']:+.2f}")]
  if t_statistic:
    columns.append(('t', lambda t: f"{t['t']:.2f}"))
  return columns + [('p (t-test)', lambda t: f"{t['p_value']:.3g}"),
                    ('p (sign-flip, exact)', lambda t: f"{t['p_value_sign_flip']:.3g}")]


def selection_lines(payload: dict, how: str) -> list[str]:
  """What chose anything in the table (`how`, the table's own words), and every run that
  ranked its checkpoints on test data (refused unless its config allowed it)."""
  lines = ['', f'Model selection: {how}']
  on_test = [f"{r['table']}/{r['row']} seed {r['seed']}" for r in payload['runs']
             if r.get('test_selection')]
  if on_test:
    lines.append(f"Runs whose checkpoints were ranked on the TEST set (allow_test_selection): "
                 f"{', '.join(on_test)}.")
  return lines


def plots_line(payload: dict) -> list[str]:
  if not payload['plots']:
    return ['']
  return ['', 'Plots: ' + ', '.join(f'`{p}`' for p in payload['plots']), '']


# --- plots -------------------------------------------------------------------------------------

def workdirs_by_row(specs: Sequence[RunSpec], root: str, table: str) -> dict[str, list[str]]:
  """The run folders of each row of one table, in spec order."""
  by_row = {}
  for spec in specs:
    if spec.table == table:
      by_row.setdefault(spec.row, []).append(spec.workdir(root))
  return by_row


def plot_curves(path: str, by_row: dict[str, list[str]], labels: dict[str, str],
                rows: Sequence[str], title: str) -> None:
  """Test accuracy per epoch, the mean over each row's runs (those that logged any)."""
  series = {}
  for row in rows:
    curves = [c for c in (sweep.epoch_curves(workdir) for workdir in by_row.get(row, [])) if c]
    if not curves:
      continue
    length = min(len(c) for c in curves)
    epochs = [e for e, _ in curves[0][:length]]
    mean = np.mean([[v for _, v in c[:length]] for c in curves], 0)
    series[f'{labels.get(row, row)} (n={len(curves)})'] = list(zip(epochs, 100 * mean))
  if series:
    sweep.plot_lines(path, series, xlabel='epoch', ylabel='test accuracy %', title=title)


# --- command line ------------------------------------------------------------------------------

def command_line(doc: str, table: Any, *, default_root: str, full_results: str) -> None:
  """The reproduce scripts' shared command line: --profile, --root, --results, --seeds, --rows
  and --collect-only; builds `table`'s specs (its config module, see above) and runs them."""
  parser = argparse.ArgumentParser(description=doc.splitlines()[0])
  parser.add_argument('--profile', default='full', choices=sorted(table.PROFILES))
  parser.add_argument('--root', default=None,
                      help=f'folder for the runs (default {default_root}_PROFILE)')
  parser.add_argument('--results', default=None,
                      help='folder for the tables and plots (default: experiments/results for '
                           'the full profile, ROOT/results for the others)')
  parser.add_argument('--seeds', default='',
                      help='comma-separated subset of the profile\'s seeds, to split a sweep '
                           'over processes sharing --root (then rerun without it to collect)')
  parser.add_argument('--rows', default='',
                      help='comma-separated row patterns (fnmatch, e.g. "mlp_*") selecting the '
                           'runs to do; the others are left as they are')
  parser.add_argument('--collect-only', action='store_true',
                      help='tabulate the finished runs under --root; run nothing')
  parser.add_argument('--verify', default='', metavar='ROW',
                      help='rerun the runs of ROW (a pattern; --seeds S picks seeds) in a new '
                           'folder and print their recorded (results JSON) and new accuracy '
                           'and params_sha256; exit status 1 if any differs')
  args = parser.parse_args()
  recipes.enable_compilation_cache()
  config = table.get_config(args.profile)
  root = args.root or f'{default_root}_{args.profile}'
  results = args.results or (full_results if args.profile == 'full'
                             else os.path.join(root, 'results'))
  specs = table.run_specs(config, root)
  if args.verify:
    from jaxkd.tables import verify
    name = table.NAME if args.profile == 'full' else f'{table.NAME}_{args.profile}'
    seeds = {int(seed) for seed in args.seeds.split(',')} if args.seeds else None
    differing = verify.verify_rows(specs, row=args.verify, seeds=seeds, root=root,
                                   recorded=os.path.join(results, f'{name}.json'))
    raise SystemExit(1 if differing else 0)
  if args.seeds:
    seeds = {int(seed) for seed in args.seeds.split(',')}
    specs = [spec for spec in specs if spec.seed in seeds]
  if args.rows:
    patterns = args.rows.split(',')
    specs = [spec for spec in specs
             if any(fnmatch.fnmatchcase(spec.row, pattern) for pattern in patterns)]
    if not specs:
      parser.error(f'--rows={args.rows!r} matches no run of profile {args.profile!r}')
  run_table(table, specs, config=config, profile=args.profile, root=root, results_dir=results,
            collect_only=args.collect_only)


# --- costs -------------------------------------------------------------------------------------

def model_costs(models: dict[str, str], *, dataset: str = 'fashion_mnist',
                num_classes: int | None = None) -> list[dict]:
  """Parameters and inference FLOPs per example of each zoo model a table trains
  (`models`: what the table calls it -> zoo name), on `dataset`'s image shape."""
  from jaxkd import data
  from jaxkd.tables import compare
  from jaxkd import models as zoo
  from jaxkd.state import fresh_variables
  info = data.info(dataset)
  rows = []
  for label, name in models.items():
    model = zoo.build(name, num_classes=num_classes or info.num_classes)
    variables = fresh_variables(model, seed=0, input_shape=(1, *info.image_shape))
    rows.append({'label': label, 'model': name,
                 'parameters': zoo.param_count(variables['params']),
                 'flops_per_example': compare.model_flops(model, variables, info.image_shape)})
  return rows


def cost_lines(costs: Sequence[dict]) -> list[str]:
  """The Markdown of `model_costs`: one line per model."""
  if not costs:
    return []
  return ['', 'Model sizes (inference, one example):', ''] + markdown_table([
      ('model', lambda c: c['label']), ('zoo name', lambda c: f"`{c['model']}`"),
      ('parameters', lambda c: f"{c['parameters']:,}"),
      ('MFLOPs', lambda c: f"{c['flops_per_example'] / 1e6:.3g}")], costs)


# --- tests against one control -----------------------------------------------------------------

def tests_against(records: Sequence[dict], *, tables: dict[Any, str], rows: Sequence[str],
                  control: str, primary: Sequence[Any] = (),
                  metrics: Sequence[str] = ('test_accuracy', 'best_val_test_accuracy'),
                  key: str = 'labels_per_class') -> list[dict]:
  """Paired tests of every row against `control` in each of `tables` (`{key value: table}`,
  e.g. one table per number of labels); the test named by `primary` = (treatment, control,
  key value), on the first metric, is flagged `primary` (fixed before any seed ran)."""
  present = {r['table'] for r in records}
  tests = []
  for value, table in tables.items():
    if table not in present:
      continue
    for row in rows:
      if row == control:
        continue
      for metric in metrics:
        test = sweep.compare(records, table=table, treatment=row, control=control,
                             metric=metric)
        if test['seeds']:
          tests.append({**test, key: value,
                        'primary': (row, control, value) == tuple(primary)
                                   and metric == metrics[0]})
  return tests


def primary_lines(tests: Sequence[dict], primary: Sequence[Any], where: str) -> list[str]:
  """The primary test's sentence (`where`: e.g. 'at 10 labels per class')."""
  found = [t for t in tests if t.get('primary')]
  if not found:
    return []
  t = found[0]
  return ['', f"Primary test (fixed before any seed ran): {primary[0]} > {primary[1]} {where}: "
          f"{100 * t['mean_difference']:+.2f} points over {len(t['seeds'])} seeds, "
          f"p = {t['p_value']:.3g} (t-test), {t['p_value_sign_flip']:.3g} (sign-flip)."]


def grid_lines(summary: Sequence[dict], table: str, caption: str) -> list[str]:
  """A selection grid's runs (validation accuracy of the best epoch, and test accuracy); in
  a profile without them, where they are (the select profile's `<table>.md`)."""
  rows = [r for r in summary if r['table'] == table]
  if not rows:
    return ['', f'The selection grid that chose these settings: `{table}.md` '
            '(`--profile select`).']
  return ['', caption, ''] + markdown_table([
      ('run', lambda r: r['row']),
      ('val acc % (best epoch)', lambda r: cell(r, 'best_val_accuracy')),
      ('test acc % (last)', lambda r: cell(r, 'test_accuracy'))], rows)


def rows_by_table_lines(summary: Sequence[dict], rows: dict[str, str],
                        tables: dict[str, str]) -> list[str]:
  """A Markdown table of `rows` (`{row: what it is}`) with, for each of `tables`
  (`{column label: table}`), the mean ± std test accuracy at the last step and at the epoch
  of best validation accuracy."""
  cells = {(r['table'], r['row']): r for r in summary}

  def accuracy(row: str, table: str, metric: str) -> str:
    found = cells.get((table, row))
    return cell(found, metric) if found else '-'

  return markdown_table(
      [('row', lambda row: row), ('what', rows.get)] +
      [(f'{label}, {when}', lambda row, t=table, m=metric: accuracy(row, t, m))
       for label, table in tables.items()
       for when, metric in (('last', 'test_accuracy'), ('best val', 'best_val_test_accuracy'))],
      list(rows))


def against_lines(tests: Sequence[dict], control: str, key_label: str,
                  key: Callable[[dict], str]) -> list[str]:
  """The tests of `tests_against` as a Markdown table, headed as the secondary tests."""
  return ['', f'Every row against {control} (paired, one-sided, treatment > control; '
          'secondary tests, not corrected for multiplicity):', ''] + markdown_table(
              paired_test_columns(first=[(key_label, key)], metric=True), tests)


def row_curves(table: str, rows: dict[str, str], title: str) -> tuple[Callable, Callable]:
  """`(plot_files, plot)` for a table whose one plot is its rows' mean test accuracy per
  epoch (`<name>_curves.png`); a profile without seeds (a select grid) draws nothing."""

  def plot_files(name: str) -> dict:
    return {'curves': f'{name}_curves.png'}

  def plot(records, specs, *, config, root: str, paths: dict) -> None:
    del records
    if config.seeds:
      plot_curves(paths['curves'], workdirs_by_row(specs, root, table), rows, tuple(rows),
                  title)

  return plot_files, plot


def plot_against_labels(path: str, records: Sequence[dict], rows: dict[str, str], *,
                        all_labels: float = 0, **labels) -> None:
  """Mean test accuracy of each of `rows` against its table's labelled images per class
  (`labels_per_class`; 0 = all of them, drawn at `all_labels`), one line per row;
  `labels` are `sweep.plot_lines`' xlabel, ylabel and title."""
  series = {}
  for row in sweep.summarize(records, group=('table', 'row', 'labels_per_class')):
    if row['labels_per_class'] is not None and row['row'] in rows:
      series.setdefault(rows[row['row']], []).append(
          (row['labels_per_class'] or all_labels, 100 * row['test_accuracy_mean']))
  if any(len(points) > 1 for points in series.values()):
    sweep.plot_lines(path, {k: sorted(v) for k, v in series.items()}, logx=True, **labels)
