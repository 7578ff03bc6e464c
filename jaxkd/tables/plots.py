"""The plots of the reference tables: accuracy per epoch, against labels, against cost."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from jaxkd.tables import sweep
from jaxkd.tables.sweep import RunSpec


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
