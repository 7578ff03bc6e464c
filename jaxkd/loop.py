"""The training loop shared by supervised training, distillation and fine-tuning."""
from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any, Callable, Iterator

import jax
import numpy as np
import tqdm

from jaxkd.parallel import Parallel
from jaxkd.state import TrainState

# batches(epoch, start_step_in_epoch) -> iterator over that epoch's remaining batches.
Batches = Callable[[int, int], Iterator[dict]]


class MetricWriter:
  """Appends one JSON object per line to `workdir/metrics.jsonl`."""

  def __init__(self, workdir: str):
    os.makedirs(workdir, exist_ok=True)
    self._file = open(os.path.join(workdir, 'metrics.jsonl'), 'a')

  def write(self, record: dict) -> None:
    self._file.write(json.dumps(_jsonable(record)) + '\n')
    self._file.flush()

  def close(self) -> None:
    self._file.close()


def _jsonable(value):
  if isinstance(value, dict):
    return {k: _jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  if isinstance(value, (np.ndarray, jax.Array)):
    return _jsonable(np.asarray(value).tolist())
  if isinstance(value, np.generic):
    return value.item()
  return value


def fit(
    *,
    state: TrainState,
    step_fn: Callable,
    batches: Batches,
    steps_per_epoch: int,
    num_steps: int,
    batch_size: int,
    workdir: str,
    parallel: Parallel = Parallel(),
    extras: tuple = (),
    evaluate: Callable[[TrainState, int], dict] | None = None,
    log_every: int = 50,
    desc: str = 'train',
    on_step: Callable[[TrainState, int], None] | None = None,
) -> TrainState:
  """Runs `step_fn` from the state's step up to `num_steps`.

  `state` is placed for `parallel` already; `extras` (teacher variables) are passed to every
  step untouched. Metrics are pulled to the host only on log steps, averaged over the steps
  since the last log, and written to `workdir/metrics.jsonl`; `evaluate(state, epoch)` runs
  at each epoch end and its (flat) dict is logged too. A non-finite loss stops the run.
  `on_step(state, step)` runs after every step (checkpointing hooks in here).
  """
  writer = MetricWriter(workdir)
  step = int(parallel.unreplicate(state.step))
  interactive = sys.stderr.isatty()
  bar = tqdm.tqdm(total=num_steps, initial=step, desc=desc, unit='step', disable=not interactive,
                  dynamic_ncols=True)
  pending, window_start, window_steps = [], time.perf_counter(), 0
  try:
    while step < num_steps:
      epoch, offset = divmod(step, steps_per_epoch)
      for batch in batches(epoch, offset):
        state, metrics = step_fn(state, parallel.shard_batch(batch), *extras)
        step += 1
        window_steps += 1
        pending.append(metrics)
        if on_step is not None:
          on_step(state, step)
        if step % log_every == 0 or step == num_steps or step % steps_per_epoch == 0:
          record = _mean_metrics(parallel.unreplicate(jax.device_get(pending)))
          elapsed = time.perf_counter() - window_start
          record.update(step=step, epoch=step / steps_per_epoch,
                        examples_per_s=window_steps * batch_size / elapsed)
          if not math.isfinite(record['loss']):
            raise FloatingPointError(
                f'Non-finite loss {record["loss"]} at step {step} (epoch {epoch}); lower the '
                f'learning rate or check the inputs. Metrics: {record}')
          writer.write(record)
          bar.set_postfix(loss=f'{record["loss"]:.4f}', acc=f'{record["accuracy"]:.3f}',
                          ex_s=f'{record["examples_per_s"]:.0f}')
          bar.update(window_steps)
          if not interactive:
            print(f'{desc} step {step}/{num_steps} loss {record["loss"]:.4f} '
                  f'acc {record["accuracy"]:.4f} {record["examples_per_s"]:.0f} ex/s',
                  flush=True)
          pending, window_start, window_steps = [], time.perf_counter(), 0
        if step % steps_per_epoch == 0 and evaluate is not None:
          eval_record = evaluate(state, step // steps_per_epoch)
          writer.write({'step': step, 'epoch': step / steps_per_epoch, **eval_record})
          window_start = time.perf_counter()  # evaluation is not training throughput
        if step >= num_steps:
          break
  finally:
    bar.close()
    writer.close()
  return state


def _mean_metrics(metrics: list[dict]) -> dict:
  """Averages each scalar metric over steps (pmap: the stacked device axis is already gone)."""
  return {k: float(np.mean([np.asarray(m[k]) for m in metrics])) for k in metrics[0]}


def eval_batches(images: np.ndarray, labels: np.ndarray, *, batch_size: int,
                 normalize: Callable[[np.ndarray], np.ndarray]) -> Iterator[dict]:
  """Every example exactly once; the last batch is zero-padded with `mask` 0 on padding."""
  for start in range(0, len(labels), batch_size):
    image, label = images[start:start + batch_size], labels[start:start + batch_size]
    pad = batch_size - len(label)
    mask = np.concatenate([np.ones(len(label), np.float32), np.zeros(pad, np.float32)])
    if pad:
      image = np.concatenate([image, np.zeros((pad,) + image.shape[1:], image.dtype)])
      label = np.concatenate([label, np.zeros(pad, label.dtype)])
    yield {'image': normalize(image), 'label': label.astype(np.int32), 'mask': mask}
