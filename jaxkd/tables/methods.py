"""The method table's numbers beyond accuracy, and its Markdown and plot: paired tests of
every row against the student alone and against plain KD (Holm across the methods), the
step time of each method relative to plain KD (from the benchmark's results), the trainable
parameters and the state (memory banks, an EMA copy) each row adds to the student.

`experiments/configs/reproduce_methods.py` describes the table; this module is what it
calls, kept apart from the generic machinery of `jaxkd.tables.reproduce`.
"""
from __future__ import annotations

import glob
import json
import os
from typing import Sequence

from jaxkd.tables import reproduce, stats, sweep
from jaxkd.tables.sweep import RunSpec

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), 'benchmarks', 'results')
CONTROLS = ('student', 'kd')  # every other row is tested against each
METRICS = ('test_accuracy', 'best_val_test_accuracy')
NOT_TESTED = ('teacher', *CONTROLS)


# --- costs -------------------------------------------------------------------------------------

def _size(tree) -> int:
  import jax
  import numpy as np
  return int(sum(np.prod(leaf.shape) for leaf in jax.tree.leaves(tree)))


def objective_sizes(run, *, teacher: str, batch: int = 8) -> tuple[int, int]:
  """(trainable parameters, state elements) that the terms of distillation config `run`
  add to its student (projectors, embedding heads; memory banks), from shapes alone."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from jaxkd import data, models
  from jaxkd.losses.terms import Outputs
  from jaxkd.models.features import features
  from jaxkd.recipes.distillation import build_objective
  from jaxkd.state import fresh_variables
  info = data.info(run.dataset)
  num_examples = info.splits['train'] - run.validation_size
  objective = build_objective(run, num_teachers=1, steps_per_epoch=1, num_examples=num_examples,
                              train_labels=np.arange(num_examples) % info.num_classes)
  if not objective.owns_variables:
    return 0, 0
  images = jnp.zeros((batch, *info.image_shape))

  def outputs(name, taps):
    model = models.build(name, num_classes=info.num_classes)
    variables = fresh_variables(model, seed=0, input_shape=(1, *info.image_shape))
    if not taps:
      return Outputs(model.apply(variables, images, train=False))
    logits, tapped = features(model, variables, images, taps)
    return Outputs(logits, tapped, variables=variables)

  params, state = jax.eval_shape(lambda: objective.init(
      jax.random.key(0), outputs(run.model, objective.student_taps),
      [outputs(teacher, objective.teacher_taps)]))
  return _size(params), _size(state)


def row_costs(specs: Sequence[RunSpec], *, teacher: str) -> dict[str, dict]:
  """Per row (its first spec): the trainable parameters and state it adds to the student
  while training. A cohort adds its peer, an EMA teacher a copy of the student (state),
  a chain nothing at a time (its cost is its extra runs)."""
  costs = {}
  for spec in specs:
    if spec.row in costs or spec.row == 'teacher':
      continue
    run = spec.config
    if spec.recipe == 'distill' and run.get('terms'):
      extra, state = objective_sizes(run, teacher=teacher)
    elif spec.recipe == 'mutual':  # every member trains: the peers are extra parameters
      members = run.cohort.split(',')
      extra, state = sum(_model_params(m) for m in members[1:]), 0
    elif spec.recipe == 'ema_teacher':  # the EMA of the student's variables: state
      extra, state = 0, _model_params(run.model)
    else:
      extra, state = 0, 0
    costs[spec.row] = {'extra_params': extra, 'state_elements': state, 'recipe': spec.recipe}
  return costs


def _model_params(name: str) -> int:
  from jaxkd import data, models
  from jaxkd.state import fresh_variables
  info = data.info('fashion_mnist')
  model = models.build(name, num_classes=info.num_classes)
  return models.param_count(fresh_variables(model, seed=0,
                                            input_shape=(1, *info.image_shape))['params'])


def step_times(pattern: str = os.path.join(BENCHMARKS, 'methods-*.json'), *,
               pair: str = 'lenet') -> dict:
  """Each method's step time over plain online KD's, from the newest benchmark results file
  holding `pair` (`benchmarks/throughput.py --pairs lenet --modes online_kd,...`), with its
  machine and date; {} where none is present (an installed package has none)."""
  found = []
  for path in glob.glob(pattern):
    with open(path) as f:
      result = json.load(f)
    rows = {r['mode']: r for r in result.get('rows', []) if r.get('pair') == pair
            and r.get('framework', 'jaxkd') == 'jaxkd'}
    if 'online_kd' in rows:
      found.append((result.get('date', ''), path, result, rows))
  if not found:
    return {}
  date, path, result, rows = max(found, key=lambda item: item[0])
  step = lambda r: r.get('step_ms_interleaved') or r['step_ms']  # noqa: E731
  base = step(rows['online_kd'])
  return {'file': os.path.basename(path), 'date': date, 'cpu_model': result.get('cpu_model'),
          'kd_step_ms': base,
          'ratios': {('kd' if mode == 'online_kd' else mode): step(r) / base
                     for mode, r in rows.items()}}


# --- results -----------------------------------------------------------------------------------

def tests(records: Sequence[dict], *, table: str) -> list[dict]:
  """Every row against each control, on both metrics; the t-test p Holm-adjusted across
  the rows tested against one control on one metric (`p_holm`)."""
  rows = list(dict.fromkeys(r['row'] for r in records if r['table'] == table))
  found = []
  for control in CONTROLS:
    for metric in METRICS:
      family = [sweep.compare(records, table=table, treatment=row, control=control,
                              metric=metric)
                for row in rows if row not in NOT_TESTED and row != control]
      family = [t for t in family if len(t['seeds']) > 1]
      if control == 'student' and 'kd' in rows:  # plain KD itself, against the student
        kd = sweep.compare(records, table=table, treatment='kd', control='student',
                           metric=metric)
        family = [kd, *family] if len(kd['seeds']) > 1 else family
      for test, p in zip(family, stats.holm([t['p_value'] for t in family])):
        found.append({**test, 'p_holm': p, 'family_size': len(family)})
  return found


def tabulate(records: Sequence[dict], *, table: str, select_table: str, costs: dict,
             kd: dict, top_rows: Sequence[str], epochs: int) -> dict:
  select = [r for r in sweep.summarize(records) if r['table'] == select_table]
  ranking = sorted((r for r in select if r['row'] not in NOT_TESTED
                    and 'best_val_accuracy_mean' in r),
                   key=lambda r: -r['best_val_accuracy_mean'])
  return dict(runs=list(records), summary=sweep.summarize(records),
              tests=tests(records, table=table), costs=costs, kd=kd, top_rows=list(top_rows),
              epochs=epochs,
              select_ranking=[r['row'] for r in ranking], step_times=step_times())


def _test_cell(tests: dict, row: str, control: str) -> str:
  t = tests.get((row, control))
  if not t:
    return ''
  return f"{100 * t['mean_difference']:+.2f} (p {t['p_value']:.2g}, Holm {t['p_holm']:.2g})"


def render(payload: dict, *, table: str, title: str, rows: dict, select_seed: int,
           published: dict) -> str:
  lines = reproduce.header(title, payload)
  summary = [r for r in payload['summary'] if r['table'] == table]
  last = {(t['treatment'], t['control']): t for t in payload['tests']
          if t['metric'] == 'test_accuracy'}
  ratios = payload['step_times'].get('ratios', {})
  costs = payload['costs']

  def count(row: str, key: str) -> str:
    value = costs.get(row, {}).get(key)
    return '' if value is None else f'{value:,}'

  kd = payload['kd']
  lines += [f"Plain KD: T = {kd['temperature']:g}, hard-label weight {kd['hard_weight']:g} "
            "(the headroom table's validated settings); every other method at its paper's "
            f"defaults; {payload['epochs']} epochs for every model.", '']
  lines += reproduce.markdown_table(reproduce.summary_columns(rows) + [
      ('vs student: points (p, Holm)', lambda r: _test_cell(last, r['row'], 'student')),
      ('vs KD: points (p, Holm)', lambda r: _test_cell(last, r['row'], 'kd')),
      ('step time / KD', lambda r: f"{ratios[r['row']]:.2f}x" if r['row'] in ratios else ''),
      ('extra params', lambda r: count(r['row'], 'extra_params')),
      ('state (memory bank) elements', lambda r: count(r['row'], 'state_elements')),
      ('CIFAR-100 r32x4 -> r8x4 (published)',
       lambda r: f"{published[r['row']]:.2f}" if r['row'] in published else ''),
  ], summary)
  families = {(t['control'], t['metric']): t['family_size'] for t in payload['tests']}
  if families:
    lines += ['', 'Tests: paired across seeds, one-sided (row > control), on the last epoch; '
              '"p" the t-test, "Holm" that p adjusted across the rows tested against the same '
              'control (' + ', '.join(f'{n} against {c}' for (c, m), n in families.items()
                                      if m == 'test_accuracy') + '). The best-validation-epoch '
              'tests are in the JSON (`tests`, metric `best_val_test_accuracy`).']
  times = payload['step_times']
  if times:
    lines += ['', f"Step time: over plain online KD's ({times['kd_step_ms']:.1f} ms), batch 256, "
              f"from `benchmarks/results/{times['file']}` ({times['cpu_model']}, "
              f"{times['date'][:10]}): the benchmark's LeNet-5 -> LeNet-5-Half pair, not this "
              "table's teacher; blank where the benchmark has no such mode."]
  lines += ['', 'Extra params: trainable parameters a row adds to the student while training '
            '(projectors, embedding heads; a cohort\'s peer); state: what it keeps without '
            'training it (memory banks; an EMA teacher\'s copy). Chains add whole runs instead.']
  ranking = payload['select_ranking']
  if ranking:
    lines += ['', f"Validation ranking of the select profile (seed {select_seed}): "
              + ', '.join(ranking) + f". Rows with 5 seeds besides the student and KD: "
              f"{', '.join(payload['top_rows']) or 'not committed yet (TOP_ROWS)'}."]
  lines += reproduce.grid_lines(payload['summary'], f'{table}_select',
                                f'Select profile (seed {select_seed}, the seed-0 teacher):')
  lines += reproduce.selection_lines(
      payload, 'nothing is tuned: every method runs its paper\'s defaults and plain KD the '
      'headroom table\'s validated settings; the validation accuracy of seed '
      f'{select_seed} chose the rows that get five seeds; the "best val epoch" column reads '
      'the validation split; the test set is only reported.')
  return '\n'.join(lines + reproduce.plots_line(payload))


def plot_accuracy_vs_cost(path: str, records: Sequence[dict], *, table: str,
                          step_times: dict) -> None:
  """Mean test accuracy (std bars) of each row against its step time over plain KD's."""
  ratios = step_times.get('ratios', {})
  points = [r for r in sweep.summarize(records) if r['table'] == table and r['row'] in ratios]
  if len(points) < 2:
    return
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6.5, 4.5), dpi=110)
  for r in points:
    x, y = ratios[r['row']], 100 * r['test_accuracy_mean']
    ax.errorbar(x, y, yerr=100 * r['test_accuracy_std'] if r['n'] > 1 else None, fmt='o',
                capsize=3, markersize=4)
    ax.annotate(r['row'], (x, y), fontsize=7, xytext=(3, 3), textcoords='offset points')
  ax.set_xscale('log')
  ax.set(xlabel='step time / plain KD (benchmark, LeNet pair)',
         ylabel='test accuracy % (last epoch, mean ± std)',
         title='ConvNet-BN -> LeNet-5-Half: accuracy against step time')
  ax.grid(alpha=0.3)
  fig.tight_layout()
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  fig.savefig(path)
  plt.close(fig)
