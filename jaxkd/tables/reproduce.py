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
import json
import os
import sys
from typing import Any, Callable, Sequence


from jaxkd import recipes
from jaxkd.tables import stats, sweep
from jaxkd.tables.sweep import RunSpec, pct
from jaxkd.tables.plots import (plot_against_labels, plot_curves, row_curves,  # noqa: F401
                                workdirs_by_row)  # re-exported: the configs call reproduce.*


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


def summary_columns(labels: dict, *, what: str = 'what') -> list[tuple[str, Callable]]:
  """A summary table's first columns: row, what it is (`labels`), seeds, and the mean ± std
  test accuracy at the last epoch and at the epoch of best validation accuracy."""
  return [('row', lambda r: r['row']), (what, lambda r: labels.get(r['row'], r['row'])),
          ('seeds', lambda r: str(r['n'])),
          ('test acc % (last epoch)', lambda r: cell(r, 'test_accuracy')),
          ('test acc % (best val epoch)', lambda r: cell(r, 'best_val_test_accuracy'))]


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


def tests_lines(tests: Sequence[dict], *, caption: str, **columns) -> list[str]:
  """A table of paired tests (`paired_test_columns(**columns)`) under `caption`; with
  several tests, a column of the t-test p-values Holm-adjusted over all of them but the
  primary test (`stats.holm`; a test flagged `primary` was fixed alone in advance), and a
  sentence that says so."""
  if not tests:
    return []
  family = [t for t in tests if not t.get('primary')]
  if len(family) < 2:
    return ['', caption, ''] + markdown_table(paired_test_columns(**columns), tests)
  adjusted = iter(stats.holm([t['p_value'] for t in family]))
  tests = [{**t, 'p_holm': None if t.get('primary') else next(adjusted)} for t in tests]
  table = paired_test_columns(**columns) + [
      ('p (t-test, Holm)', lambda t: 'primary' if t['p_holm'] is None else f"{t['p_holm']:.3g}")]
  return ['', f'{caption[:-1]}; {len(family)} {"secondary " * (len(family) < len(tests))}tests, '
          f'so the last column is the t-test p Holm-adjusted over all {len(family)} '
          '(family-wise error); the others are per test:', ''] + markdown_table(table, tests)


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


# --- command line ------------------------------------------------------------------------------

def command_line(doc: str, table: Any, *, default_root: str, full_results: str) -> None:
  """The reproduce scripts' shared command line: --profile, --root, --results, --seeds, --rows,
  --collect-only, --verify and --render-only; builds `table`'s specs (its config module, see
  above) and runs them."""
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
  parser.add_argument('--render-only', action='store_true',
                      help='rewrite the Markdown from the results JSON (after a renderer '
                           'changed); run and read no run')
  args = parser.parse_args()
  name = table.NAME if args.profile == 'full' else f'{table.NAME}_{args.profile}'
  root = args.root or f'{default_root}_{args.profile}'
  results = args.results or (full_results if args.profile == 'full'
                             else os.path.join(root, 'results'))
  if args.render_only:
    with open(os.path.join(results, f'{name}.json')) as f:
      payload = json.load(f)
    sweep.write_results(results, name, payload, table.render(payload))
    return
  recipes.enable_compilation_cache()
  config = table.get_config(args.profile)
  specs = table.run_specs(config, root)
  seeds = {int(seed) for seed in args.seeds.split(',')} if args.seeds else None
  if args.verify:
    from jaxkd.tables import verify
    differing = verify.verify_rows(specs, row=args.verify, seeds=seeds, root=root,
                                   recorded=os.path.join(results, f'{name}.json'))
    raise SystemExit(1 if differing else 0)
  if seeds:
    specs = [spec for spec in specs if spec.seed in seeds]
  if args.rows:
    patterns = args.rows.split(',')
    specs = [spec for spec in specs
             if any(fnmatch.fnmatchcase(spec.row, pattern) for pattern in patterns)]
    if not specs:
      parser.error(f'--rows={args.rows!r} matches no run of profile {args.profile!r}')
  run_table(table, specs, config=config, profile=args.profile, root=root, results_dir=results,
            collect_only=args.collect_only)


def main(script: str, doc: str, *, root_name: str | None = None) -> None:
  """The body of `experiments/reproduce_<name>.py` (`script`, its `__file__`): runs the table
  described in `configs/reproduce_<name>.py` beside it (`command_line`), with runs under
  `workdirs/<root_name or name>_PROFILE` and the full profile's results in `results/`."""
  here = os.path.dirname(os.path.abspath(script))
  base = os.path.basename(script)
  table = load_table(os.path.join(here, 'configs', base))
  root_name = root_name or os.path.splitext(base)[0].removeprefix('reproduce_')
  command_line(doc, table, default_root=os.path.join('workdirs', root_name),
               full_results=os.path.join(here, 'results'))


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
  """A selection grid's runs (validation accuracy of the best epoch, not test accuracy); in
  a profile without them, where they are (the select profile's `<table>.md`)."""
  rows = [r for r in summary if r['table'] == table]
  if not rows:
    return ['', f'The selection grid that chose these settings: `{table}.md` '
            '(`--profile select`).']
  # Validation alone: a grid that chooses shows what it chose on, not the test set.
  return ['', caption, ''] + markdown_table([
      ('run', lambda r: r['row']),
      ('val acc % (best epoch)', lambda r: cell(r, 'best_val_accuracy'))], rows)


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
  return tests_lines(tests, caption=f'Every row against {control} (paired, one-sided, '
                     'treatment > control; the primary test above, the rest secondary):',
                     first=[(key_label, key)], metric=True)
