"""Pieces that several table descriptions (`experiments/configs/reproduce_*.py`) share: the
run settings a recipe gives, the labels-per-class transfer tables' results and Markdown, and
the one-seed comparison tables' Markdown."""
from __future__ import annotations

from typing import Callable, Sequence

import ml_collections

from jaxkd.tables import reproduce, sweep

# --- run settings ------------------------------------------------------------------------------


def apply_recipe(run, recipe, *, epochs, seed: int, config, augment: bool = False):
  """`run` with `seed`, `epochs`, `recipe`'s batch size and optimizer (and augmentation when
  `augment`), and the table's step cap and validation size (`config`); logs every 200 steps."""
  run.seed = seed
  run.num_epochs = epochs
  run.num_steps = config.num_steps
  run.batch_size = recipe.batch_size
  run.optimizer = ml_collections.ConfigDict(recipe.optimizer.to_dict())
  if augment:
    run.augment = ml_collections.ConfigDict(recipe.augment.to_dict())
  run.validation_size = config.validation_size
  run.log_every = 200
  return run


# --- transfer tables over labelled examples per class -----------------------------------------

def target_run(run, *, seed: int, classes, per_class: int, config):
  """`run` on the target `classes` with `per_class` labelled images per class: batches of
  at most 50 (2.5 per class), `config.target_steps` steps, evaluated every
  `config.target.eval_every` epochs, no checkpoints."""
  run.seed = seed
  run.classes = classes
  run.train_per_class = per_class
  run.batch_size = min(50, 5 * per_class // 2)
  run.num_steps = config.target_steps
  run.eval_every = config.target.eval_every
  run.checkpoint_every = 0
  run.log_every = 50
  return run


def source_spec(name: str, run, *, seed: int, config, classes=None) -> sweep.RunSpec:
  """The spec of a transfer table's source run (table `name`_source): `run` for `seed`, on
  `classes` when given, for `config.source_epochs` (capped at `config.source_steps`)."""
  run.seed = seed
  if classes is not None:
    run.classes = classes
  run.num_epochs = config.source_epochs
  run.num_steps = config.source_steps
  run.log_every = 200
  return sweep.RunSpec(f'{name}_source', 'source', seed, 'train', run)


def transfer_specs(name: str, source_run: Callable[[], ml_collections.ConfigDict],
                   targets: Callable[[sweep.RunSpec, int, int], list[sweep.RunSpec]], *,
                   config, classes=None) -> list[sweep.RunSpec]:
  """Every run of a transfer table: for each of `config.seeds`, its source run
  (`source_spec` of a fresh `source_run()`), then `targets(source, seed, per_class)` for each
  of `config.labels_per_class`, so each source comes before the runs that start from it."""
  specs = []
  for seed in config.seeds:
    source = source_spec(name, source_run(), seed=seed, config=config, classes=classes)
    specs.append(source)
    for per_class in config.labels_per_class:
      specs += targets(source, seed, per_class)
  return specs


def tabulate_per_class(records, config, *, table: Callable[[int], str], rows: dict,
                       primary: Sequence, **extra) -> dict:
  """A labels-per-class table's results: summary, tests against 'scratch' in each table
  (`table(labels per class)`; the `primary` test fixed in advance) and the LeNet-5's costs;
  `extra` goes in as is."""
  tables = {n: table(n) for n in config.labels_per_class}
  return dict(runs=records, labels_per_class=list(config.labels_per_class), **extra,
              primary=list(primary), summary=sweep.summarize(records),
              tests=reproduce.tests_against(records, tables=tables, rows=rows,
                                            control='scratch', primary=primary),
              costs=reproduce.model_costs({'LeNet-5 (source and every target row)': 'lenet5'}))


def transfer_opening(payload: dict, *, title: str, name: str, trained_on: str,
                     caption: str) -> list[str]:
  """A transfer table's first lines: the header (`title` and the profile), the source
  model's test accuracy (table `name`_source) when the payload has it, and `caption`."""
  lines = reproduce.header(f"{title} ({payload['profile']} profile)", payload)
  source = [r for r in payload['summary'] if r['table'] == f'{name}_source']
  if source:
    lines += [f"Source LeNet-5 on {trained_on}: {reproduce.cell(source[0], 'test_accuracy')} % "
              f"test accuracy over {source[0]['n']} seeds.", '']
  return lines + [caption, '']


def per_class_markdown(lines: list[str], payload: dict, rows: dict, columns: dict, *,
                       primary_at: str, against: str, against_cell: Callable,
                       selection: str) -> str:
  """A labels-per-class table's Markdown: `lines` (its heading), then rows by table
  (`columns`: heading -> table), the primary test, the tests against 'scratch', costs, how
  results were selected and the plots."""
  lines = lines + reproduce.rows_by_table_lines(payload['summary'], rows, columns)
  lines += reproduce.primary_lines(payload['tests'], payload['primary'], primary_at)
  lines += reproduce.against_lines(payload['tests'], 'scratch', against, against_cell)
  lines += reproduce.cost_lines(payload['costs'])
  lines += reproduce.selection_lines(payload, selection)
  return '\n'.join(lines + reproduce.plots_line(payload))


# --- seeded tests and selection grids ----------------------------------------------------------

def tests_and_grid_lines(payload: dict, name: str, grid_caption: str) -> list[str]:
  """The paired tests of the rows run on several seeds, then the select profile's grid."""
  tests = [t for t in payload['tests'] if len(t['seeds']) > 1]
  lines = reproduce.tests_lines(
      tests, caption='Paired tests across seeds (one-sided, treatment > control):', metric=True)
  return lines + reproduce.grid_lines(payload['summary'], f'{name}_select', grid_caption)


# --- one-seed comparison tables ----------------------------------------------------------------

def tabulate_runs(records, config) -> dict:
  """A one-seed table's results: its runs and their summary."""
  del config
  return dict(runs=records, summary=sweep.summarize(records))


def one_seed_render(payload: dict, *, title: str, compared: str,
                    columns: Callable[[dict], list], selection: str) -> str:
  """The Markdown of a one-seed table: a line per row with `columns(rows)` (rows by name)
  between its name and its wall time, a note on comparing `compared` at once without a test,
  and how results were selected."""
  rows = {r['row']: r for r in payload['summary']}
  runs = {r['row']: r for r in payload['runs']}
  lines = reproduce.header(title, payload)
  lines += reproduce.markdown_table([
      ('row', lambda r: r['row']), *columns(rows),
      ('wall s', lambda r: f"{runs[r['row']]['wall_seconds']:.0f}"),
  ], list(rows.values()))
  lines += ['', 'Multiplicity: one seed, so no test; the "vs" columns compare '
            f'{len(rows) - 2} {compared} at once, and among that many differences of single '
            'runs some of several tenths of a point are expected by chance alone (the 5-seed '
            'tables have a std of 0.2-0.3 points per row). Not a ranking.']
  lines += reproduce.selection_lines(payload, selection)
  return '\n'.join(lines + reproduce.plots_line(payload))
