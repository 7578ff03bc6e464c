"""Reference tables: run a table's specs, then write its JSON, Markdown and plots."""
from __future__ import annotations

import argparse
import os
from typing import Sequence

import numpy as np

from jaxkd import recipes, sweep
from jaxkd.sweep import RunSpec, pct

ROW_MODELS = {'teacher': 'LeNet-5', 'student': 'LeNet-5-Half alone', 'kd': 'LeNet-5-Half + KD',
              'mlp_teacher': 'MLP 1200-1200 (dropout, jitter)', 'mlp_student': 'MLP 800-800 alone',
              'mlp_kd': 'MLP 800-800 + KD (T=20)'}


def _reference(references: dict, row: str) -> str:
  ref = references.get(row)
  if not ref:
    return ''
  value = pct(ref['accuracy']) + ' %' if 'accuracy' in ref else f"{ref['errors']} errors"
  return f"{value} ({ref['source']})"


def _header(title: str, payload: dict) -> list[str]:
  """A table file's first lines: title, command, commit, date and machine."""
  machine = payload['machine']
  return [f'# {title}', '', f"Command: `{payload['command']}`  ",
          f"Commit {payload['git_commit'][:10]}, {payload['date']}, {machine['cpu_model']} "
          f"({machine['cores']} cores, {machine['device_kind']}).", '']


def _cell(row: dict, metric: str, *, count: bool = False) -> str:
  """`mean ± std` of a summary row's metric (percent, or a count); no std for one run."""
  mean, std = row.get(f'{metric}_mean'), row.get(f'{metric}_std') if row['n'] > 1 else None
  if not count or mean is None:
    return pct(mean, std)
  return f'{mean:.0f}' + ('' if std is None else f' ± {std:.0f}')


def _render_kd(payload: dict, references: dict) -> str:
  lines = [*_header(f"Fashion-MNIST distillation ({payload['profile']} profile)", payload),
           '| row | model | seeds | test acc % (last epoch) | test errors / 10k | '
           'test acc % (best val epoch) | published |',
           '|---|---|---|---|---|---|---|']
  for row in payload['summary']:
    if row['table'] != 'fashion_mnist_kd':
      continue
    lines.append(
        f"| {row['row']} | {ROW_MODELS.get(row['row'], row['row'])} | {row['n']} | "
        f"{_cell(row, 'test_accuracy')} | {_cell(row, 'test_errors', count=True)} | "
        f"{_cell(row, 'best_val_test_accuracy')} | {_reference(references, row['row'])} |")
  tests = [t for t in payload['tests'] if len(t['seeds']) > 1]
  lines += ['', 'Paired tests across seeds (one-sided, treatment > control):', '',
            '| treatment | control | metric | seeds | mean diff (points) | t | p (t-test) | '
            'p (sign-flip, exact) |', '|---|---|---|---|---|---|---|---|']
  if not tests:
    lines[-5:] = ['', '(Paired tests need two seeds or more; the full profile runs five.)']
  for test in tests:
    lines.append(f"| {test['treatment']} | {test['control']} | {test['metric']} | "
                 f"{len(test['seeds'])} | {100 * test['mean_difference']:+.2f} | "
                 f"{test['t']:.2f} | {test['p_value']:.3g} | {test['p_value_sign_flip']:.3g} |")
  if payload['temperature_sweep']:
    lines += ['', 'Temperature sweep, LeNet-5 -> LeNet-5-Half (the validation accuracy chooses T; '
              'std only over several seeds):', '',
              '| T | seeds | val acc % (best epoch) | test acc % (last) | '
              'test acc % (best val epoch) |', '|---|---|---|---|---|']
    for row in payload['temperature_sweep']:
      lines.append(f"| {row['temperature']:g} | {row['n']} | {_cell(row, 'best_val_accuracy')} | "
                   f"{_cell(row, 'test_accuracy')} | {_cell(row, 'best_val_test_accuracy')} |")
  lines += ['', 'Plots: ' + ', '.join(f'`{p}`' for p in payload['plots']), '']
  return '\n'.join(lines)


def _sweep_rows(records: Sequence[dict], sweep_seeds) -> list[dict]:
  """Accuracy per temperature over the sweep seeds (the kd row supplies its own T)."""
  points = [dict(r, table='sweep', row=None) for r in records
            if r['table'] == 'temperature_sweep' or
            (r['row'] == 'kd' and r['seed'] in sweep_seeds)]
  rows = sweep.summarize(points, group=('temperature',))
  return sorted(rows, key=lambda r: r['temperature'])


def fashion_mnist_kd(specs: Sequence[RunSpec], *, profile: str, references: dict, root: str,
                     results_dir: str, sweep_seeds=(), collect_only: bool = False) -> dict:
  """Runs the distillation table and writes `fashion_mnist_kd[_profile].{json,md,png}`."""
  name = 'fashion_mnist_kd' if profile == 'full' else f'fashion_mnist_kd_{profile}'
  plots = {'curves': f'{name}_curves.png', 'mlp_curves': f'{name}_mlp_curves.png',
           'temperature': f'{name}_temperature.png'}
  payload = {}

  def publish(records):
    rows_present = {r['row'] for r in records}
    payload.clear()
    payload.update(sweep.header(name, profile))
    payload.update(
        runs=records, references=references,
        summary=sweep.summarize(records),
        tests=[sweep.compare(records, table='fashion_mnist_kd', treatment=t, control=c, metric=m)
               for t, c in (('kd', 'student'), ('mlp_kd', 'mlp_student'))
               if {t, c} <= rows_present
               for m in ('test_accuracy', 'best_val_test_accuracy')],
        temperature_sweep=_sweep_rows(records, sweep_seeds),
        plots=[p for p in plots.values() if os.path.exists(os.path.join(results_dir, p))])
    sweep.write_results(results_dir, name, payload, _render_kd(payload, references))

  records = sweep.execute(specs, root=root, on_result=publish, collect_only=collect_only)
  by_row = {}
  for spec in specs:
    if spec.table == 'fashion_mnist_kd':
      by_row.setdefault(spec.row, []).append(spec.workdir(root))
  _plot_curves(os.path.join(results_dir, plots['curves']), by_row, ('teacher', 'student', 'kd'),
               'LeNet-5 -> LeNet-5-Half on Fashion-MNIST')
  if 'mlp_kd' in by_row:
    _plot_curves(os.path.join(results_dir, plots['mlp_curves']), by_row,
                 ('mlp_teacher', 'mlp_student', 'mlp_kd'), 'MLP 1200 -> 800 on Fashion-MNIST')
  sweep_rows = _sweep_rows(records, sweep_seeds)
  if len(sweep_rows) > 1:
    sweep.plot_lines(os.path.join(results_dir, plots['temperature']),
                     {'KD student, test (last epoch)':
                      [(r['temperature'], 100 * r['test_accuracy_mean']) for r in sweep_rows],
                      'KD student, validation (best epoch)':
                      [(r['temperature'], 100 * r['best_val_accuracy_mean']) for r in sweep_rows
                       if 'best_val_accuracy_mean' in r]},
                     xlabel='temperature T', ylabel='test accuracy %', logx=True,
                     title='LeNet-5-Half distilled from LeNet-5: accuracy vs T')
  publish(records)
  print(_render_kd(payload, references))
  print(f'Tables and plots: {os.path.abspath(results_dir)}/{name}.{{md,json}}, '
        + ', '.join(payload['plots']))
  return payload


def _plot_curves(path: str, by_row: dict, rows: Sequence[str], title: str) -> None:
  series = {}
  for row in rows:
    curves = [sweep.epoch_curves(workdir) for workdir in by_row.get(row, [])]
    curves = [c for c in curves if c]
    if not curves:
      continue
    length = min(len(c) for c in curves)
    epochs = [e for e, _ in curves[0][:length]]
    mean = np.mean([[v for _, v in c[:length]] for c in curves], 0)
    series[f'{ROW_MODELS.get(row, row)} (n={len(curves)})'] = list(zip(epochs, 100 * mean))
  if series:
    sweep.plot_lines(path, series, xlabel='epoch', ylabel='test accuracy %', title=title)


TRANSFER_ROWS = {'scratch': 'LeNet-5 from scratch', 'lp': 'linear probe (head only)',
                 'ft': 'full fine-tune', 'lp_ft': 'LP, then full fine-tune',
                 'frozen_half': 'fine-tune, conv1-conv2 frozen',
                 'ft_convs': 'fine-tune, only conv1-conv2 carried over (post hoc)',
                 'student': 'LeNet-5-Half alone', 'kd': 'LeNet-5-Half + KD from LP-FT'}
TRANSFER_TESTS = (('ft', 'scratch'), ('lp_ft', 'scratch'), ('lp_ft', 'ft'),
                  ('ft_convs', 'scratch'), ('kd', 'student'))


def _render_transfer(payload: dict) -> str:
  per_class = payload['labels_per_class']
  lines = _header(f"Fashion-MNIST transfer, classes 0-4 -> 5-9 ({payload['profile']} profile)",
                  payload)
  source = [r for r in payload['summary'] if r['table'] == 'transfer_source']
  if source:
    lines += [f"Source LeNet-5 on classes 0-4 (all their training images): "
              f"{_cell(source[0], 'test_accuracy')} % "
              f"test accuracy over {source[0]['n']} seeds.", '']
  lines += ['Target test accuracy % (classes 5-9, mean ± std over seeds, last step):', '',
            '| row | what | ' + ' | '.join(f'{n} labels / class' for n in per_class) + ' |',
            '|---|---|' + '---|' * len(per_class)]
  cells = {(r['table'], r['row']): r for r in payload['summary']}
  for row, what in TRANSFER_ROWS.items():
    values = []
    for n in per_class:
      r = cells.get((f'transfer_{n}_per_class', row))
      values.append(f"{_cell(r, 'test_accuracy')} (n={r['n']})" if r else '-')
    lines.append(f'| {row} | {what} | ' + ' | '.join(values) + ' |')
  lines += ['', 'Paired tests across seeds (one-sided, treatment > control, test accuracy):', '',
            '| labels / class | treatment | control | seeds | mean diff (points) | p (t-test) | '
            'p (sign-flip, exact) |', '|---|---|---|---|---|---|---|']
  for test in payload['tests']:
    lines.append(f"| {test['labels_per_class']} | {test['treatment']} | {test['control']} | "
                 f"{len(test['seeds'])} | {100 * test['mean_difference']:+.2f} | "
                 f"{test['p_value']:.3g} | {test['p_value_sign_flip']:.3g} |")
  lines += ['', 'Plots: ' + ', '.join(f'`{p}`' for p in payload['plots']), '']
  return '\n'.join(lines)


def transfer(specs: Sequence[RunSpec], *, profile: str, root: str, results_dir: str,
             labels_per_class: Sequence[int], collect_only: bool = False) -> dict:
  """Runs the transfer table and writes `transfer[_profile].{json,md}` and its plot."""
  name = 'transfer' if profile == 'full' else f'transfer_{profile}'
  plot = f'{name}_labels.png'
  payload = {}

  def publish(records):
    payload.clear()
    payload.update(sweep.header(name, profile))
    tables = {r['table'] for r in records}
    payload.update(
        runs=records, labels_per_class=list(labels_per_class),
        summary=sweep.summarize(records),
        tests=[{**sweep.compare(records, table=f'transfer_{n}_per_class', treatment=t,
                                control=c), 'labels_per_class': n}
               for n in labels_per_class if f'transfer_{n}_per_class' in tables
               for t, c in TRANSFER_TESTS],
        plots=[plot] if os.path.exists(os.path.join(results_dir, plot)) else [])
    payload['tests'] = [t for t in payload['tests'] if t['seeds']]
    sweep.write_results(results_dir, name, payload, _render_transfer(payload))

  records = sweep.execute(specs, root=root, on_result=publish, collect_only=collect_only)
  series = {}
  for row in sweep.summarize(records, group=('table', 'row', 'labels_per_class')):
    if row['labels_per_class'] is not None and row['row'] in TRANSFER_ROWS:
      series.setdefault(TRANSFER_ROWS[row['row']], []).append(
          (row['labels_per_class'], 100 * row['test_accuracy_mean']))
  if any(len(points) > 1 for points in series.values()):
    sweep.plot_lines(os.path.join(results_dir, plot),
                     {k: sorted(v) for k, v in series.items()}, logx=True,
                     xlabel='labelled training images per class (target task)',
                     ylabel='target test accuracy %',
                     title='Fashion-MNIST 0-4 -> 5-9: transfer vs labels')
  publish(records)
  print(_render_transfer(payload))
  print(f'Tables and plots: {os.path.abspath(results_dir)}/{name}.{{md,json}}'
        + ''.join(f', {p}' for p in payload['plots']))
  return payload


def command_line(doc: str, table_config, *, run_table, default_root: str,
                 full_results: str) -> None:
  """The reproduce scripts' shared command line: --profile, --root, --results, --seeds and
  --collect-only; builds `table_config`'s specs and calls `run_table(specs, config=,
  profile=, root=, results_dir=, collect_only=)`."""
  parser = argparse.ArgumentParser(description=doc.splitlines()[0])
  parser.add_argument('--profile', default='full', choices=sorted(table_config.PROFILES))
  parser.add_argument('--root', default=None,
                      help=f'folder for the runs (default {default_root}_PROFILE)')
  parser.add_argument('--results', default=None,
                      help='folder for the tables and plots (default: experiments/results for '
                           'the full profile, ROOT/results for the others)')
  parser.add_argument('--seeds', default='',
                      help='comma-separated subset of the profile\'s seeds, to split a sweep '
                           'over processes sharing --root (then rerun without it to collect)')
  parser.add_argument('--collect-only', action='store_true',
                      help='tabulate the finished runs under --root; run nothing')
  args = parser.parse_args()
  recipes.enable_compilation_cache()
  config = table_config.get_config(args.profile)
  root = args.root or f'{default_root}_{args.profile}'
  results = args.results or (full_results if args.profile == 'full'
                             else os.path.join(root, 'results'))
  specs = table_config.run_specs(config, root)
  if args.seeds:
    seeds = {int(seed) for seed in args.seeds.split(',')}
    specs = [spec for spec in specs if spec.seed in seeds]
  run_table(specs, config=config, profile=args.profile, root=root, results_dir=results,
            collect_only=args.collect_only)
