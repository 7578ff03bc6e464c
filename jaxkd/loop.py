"""The training loop shared by supervised training, distillation and fine-tuning."""
from __future__ import annotations

import json
import math
import os
import signal
import sys
import threading
import time
from typing import TYPE_CHECKING, Callable, Iterator

import jax
import numpy as np
import tqdm

from jaxkd import distributed, tensorboard
from jaxkd.parallel import Parallel
from jaxkd.state import TrainState
from jaxkd.steps import CHECKS, TOKENS, is_token_mean

if TYPE_CHECKING:  # orbax is slow to import; the loop only calls a Checkpointer it is given
  from jaxkd.checkpoint import Checkpointer

# batches(epoch, start_step_in_epoch) -> iterator over that epoch's remaining batches.
Batches = Callable[[int, int], Iterator[dict]]


class MetricWriter:
  """Appends one JSON object per line to `workdir/metrics.jsonl`, and the scalars to
  TensorBoard event files in `workdir/tensorboard` (written without TensorFlow)."""

  def __init__(self, workdir: str, *, enabled: bool = True):
    self.enabled = enabled  # False on every process but the main one: nothing is written
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    self._file = open(os.path.join(workdir, 'metrics.jsonl'), 'a')
    self._tensorboard = tensorboard.SummaryWriter(os.path.join(workdir, 'tensorboard'))

  def write(self, record: dict) -> None:
    if not self.enabled:
      return
    record = _jsonable(record)
    self._file.write(json.dumps(record) + '\n')
    self._file.flush()
    self._tensorboard.scalars(record.get('step', 0), record)

  def close(self) -> None:
    if not self.enabled:
      return
    self._file.close()
    self._tensorboard.close()


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


class Interrupted(SystemExit):
  """`fit` stopped on a signal (SIGTERM) after saving a checkpoint of step `step`.

  A `SystemExit` (so no handler swallows it, and an uncaught one ends the process without a
  traceback) with status 128 + the signal number, as a shell reports for a process ended by
  that signal. Rerunning the same command resumes from the checkpoint.
  """

  def __init__(self, step: int, signum: int):
    super().__init__(128 + signum)  # SystemExit's exit status
    self.step, self.signum = step, signum
    self.message = (f'{signal.Signals(signum).name} at step {step}: checkpoint saved; run the '
                    f'same command again to resume.')

  def __str__(self) -> str:
    return self.message


class _StopOnSignal:
  """Turns SIGTERM into a flag the loop checks between steps (main thread only), restoring
  the previous handler on exit."""

  def __init__(self, enabled: bool, signums=(signal.SIGTERM,)):
    self.enabled, self.signums, self.received, self._previous = enabled, signums, None, {}

  def __enter__(self):
    if self.enabled and threading.current_thread() is threading.main_thread():
      for signum in self.signums:
        self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    self.received = signum

  def __exit__(self, *exc):
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)


def truncate_metrics(workdir: str, step: int) -> int:
  """Drops `metrics.jsonl` records after `step` (and lines cut short by a kill).

  A resumed run logs those steps again, so the file never holds a step twice. Returns the
  number of records dropped; the file is replaced atomically.
  """
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(path):
    return 0
  kept, dropped = [], 0
  with open(path) as f:
    for line in f:
      try:
        record = json.loads(line)
      except json.JSONDecodeError:
        dropped += 1
        continue
      if record.get('step', 0) <= step:
        kept.append(line if line.endswith('\n') else line + '\n')
      else:
        dropped += 1
  if dropped:
    with open(path + '.tmp', 'w') as f:
      f.writelines(kept)
    os.replace(path + '.tmp', path)
  return dropped


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
    step_args: tuple = (),
    evaluate: Callable[[TrainState, int], dict] | None = None,
    log_every: int,
    desc: str = 'train',
    on_step: Callable[[TrainState, int], None] | None = None,
    checkpointer: 'Checkpointer | None' = None,
    checkpoint_every: int = 0,
    eval_every: int = 1,
    after_evaluate: Callable[[TrainState, dict], TrainState] | None = None,
) -> TrainState:
  """Runs `step_fn` from the state's step (or the newest checkpoint's) up to `num_steps`.

  `state` is placed for `parallel` already; `step_args` (teacher variables) are passed to
  every step untouched. Metrics are pulled to the host only on log steps, averaged over the steps
  since the last log, and written to `workdir/metrics.jsonl`; `evaluate(state, epoch)` runs
  at the end of every `eval_every`-th epoch (and of the last epoch) and its (flat) dict is
  logged too. A non-finite loss stops the run.
  `on_step(state, step)` runs after every step; `after_evaluate(state, record)` after each
  evaluation, its state replacing the run's before the checkpoint of that step (a schedule
  that reads validation metrics: `jaxkd.on_policy_replay`).

  With a `checkpointer`, the run resumes from its newest checkpoint (restored into `state`'s
  shapes and placement; `metrics.jsonl` records after that step are dropped) and saves the
  state every `checkpoint_every` steps, at each evaluation when it keeps the best
  checkpoints (ranked by the evaluation's metrics), and at `num_steps`. Saves are
  asynchronous and finished before `fit` returns. The data position saved is
  `{'epoch', 'step_in_epoch', 'steps_per_epoch'}` (in-memory batches are a function of the
  step). With a checkpointer, SIGTERM saves a checkpoint of the current step,
  then raises `Interrupted`. A run starting at step 0 (nothing to resume) drops all old
  records, as it logs every step again.
  """
  def position(step: int) -> dict:
    epoch, offset = divmod(step, steps_per_epoch)
    return {'epoch': epoch, 'step_in_epoch': offset, 'steps_per_epoch': steps_per_epoch}

  main = distributed.is_main()  # only the main process logs and prints
  if checkpointer is not None and checkpointer.latest_step() is not None:
    if checkpointer.latest_step() > num_steps:
      raise ValueError(
          f'num_steps={num_steps} is below the newest checkpoint (step '
          f'{checkpointer.latest_step()} in {checkpointer.directory}): the run is past it. '
          'Nothing was changed: give num_steps >= that step, or use a new workdir.')
    restored = checkpointer.restore(parallel.unreplicate(state))
    stored_steps = restored.data_state.get('steps_per_epoch', steps_per_epoch)
    if stored_steps != steps_per_epoch:
      raise ValueError(
          f'The checkpoint at step {restored.step} in {checkpointer.directory} was taken with '
          f'{stored_steps} steps per epoch, this run has {steps_per_epoch}: its batches would '
          f'differ. Resume with the same data and batch size, or use a new workdir.')
    state = parallel.replicate(restored.state)
    if main:
      print(f'{desc}: resumed from step {restored.step} of {checkpointer.directory}', flush=True)
  step = int(parallel.unreplicate(state.step))
  if main:
    truncate_metrics(workdir, step)
  writer = MetricWriter(workdir, enabled=main)
  interactive = sys.stderr.isatty() and main
  bar = tqdm.tqdm(total=num_steps, initial=step, desc=desc, unit='step', disable=not interactive,
                  dynamic_ncols=True)
  pending, window_start, window_steps = [], time.perf_counter(), 0
  stop = _StopOnSignal(enabled=checkpointer is not None)  # without one, SIGTERM just ends
  try:
    with stop:
      while step < num_steps:
        epoch, offset = divmod(step, steps_per_epoch)
        for batch in batches(epoch, offset):
          state, metrics = step_fn(state, parallel.shard_batch(batch), *step_args)
          step += 1
          window_steps += 1
          pending.append(metrics)
          if on_step is not None:
            on_step(state, step)
          if step % log_every == 0 or step == num_steps or step % steps_per_epoch == 0:
            record = check_numerics(
                _mean_metrics(parallel.unreplicate(jax.device_get(pending))), step)
            elapsed = time.perf_counter() - window_start
            record.update(step=step, epoch=step / steps_per_epoch,
                          examples_per_s=window_steps * batch_size / elapsed)
            if TOKENS in record:
              record['tokens_per_s'] = record[TOKENS] / elapsed
            writer.write(record)
            bar.set_postfix(loss=f'{record["loss"]:.4f}', acc=f'{record["accuracy"]:.3f}',
                            ex_s=f'{record["examples_per_s"]:.0f}')
            bar.update(window_steps)
            if not interactive and main:
              print(f'{desc} step {step}/{num_steps} loss {record["loss"]:.4f} '
                    f'acc {record["accuracy"]:.4f} {record["examples_per_s"]:.0f} ex/s',
                    flush=True)
            pending, window_start, window_steps = [], time.perf_counter(), 0
          eval_record = None
          epochs_done, into_epoch = divmod(step, steps_per_epoch)
          if (evaluate is not None and into_epoch == 0
              and (epochs_done % eval_every == 0 or step >= num_steps)):
            eval_record = evaluate(state, epochs_done)
            if after_evaluate is not None:
              state = after_evaluate(state, eval_record)
            writer.write({'step': step, 'epoch': step / steps_per_epoch, **eval_record})
            window_start = time.perf_counter()  # evaluation is not training throughput
          if checkpointer is not None and (
              (checkpoint_every and step % checkpoint_every == 0) or step == num_steps
              or (eval_record is not None and checkpointer.best_metric) or stop.received):
            if pending:  # never checkpoint a state the numerics checks have not seen
              check_numerics(_mean_metrics(parallel.unreplicate(jax.device_get(pending))), step)
            checkpointer.save(step, parallel.unreplicate(state), data_state=position(step),
                              metrics=eval_record)
          if stop.received:
            interrupted = Interrupted(step, stop.received)
            if main:
              print(f'{desc}: {interrupted}', file=sys.stderr, flush=True)
            raise interrupted
          if step >= num_steps:
            break
  finally:
    if checkpointer is not None:
      checkpointer.wait_until_finished()
    bar.close()
    writer.close()
  return state


def check_numerics(record: dict, step: int) -> dict:
  """`record` without its `check_*` entries, or FloatingPointError naming what went wrong
  first: non-finite inputs, labels out of range, the teacher, the loss, or the gradient
  (`steps.CHECKS`)."""
  checks = {k: record.pop(k) for k in [k for k in record if k.startswith('check_')]}
  for name, meaning in CHECKS.items():
    if checks.get(name, 0) > 0:
      raise FloatingPointError(f'Step {step}: {meaning}, in {checks[name]:.1%} of the examples '
                               'of the steps since the last log. The run stopped.')
  for name, remedy in (('loss', 'lower the learning rate or check the inputs'),
                       ('grad_norm', 'lower the learning rate, or clip gradients')):
    if name in record and not math.isfinite(record[name]):
      raise FloatingPointError(f'Step {step}: non-finite {name} ({record[name]}), while the '
                               f'labels and teacher outputs are sound; {remedy}. Metrics: {record}')
  return record


def _mean_metrics(metrics: list[dict]) -> dict:
  """Averages each scalar metric over steps (pmap: the stacked device axis is already gone).

  Sequence steps report their token count (`steps.TOKENS`): their per-token means are then
  averaged by tokens, `sum(value * mask) / sum(mask)` over every step of the window (each
  step's mean times its count is its `sum(value * mask)`), not as a mean of per-step means,
  which would weigh a token of a short batch above one of a long batch; `tokens` becomes
  the window's total."""
  values = {k: np.asarray([np.asarray(m[k], np.float64) for m in metrics]) for k in metrics[0]}
  if TOKENS not in values:
    return {k: float(np.mean(v)) for k, v in values.items()}
  counts = values[TOKENS]
  total = counts.sum()
  return {k: (float(np.sum(v * counts) / max(total, 1.0)) if is_token_mean(k)
              else float(total) if k == TOKENS else float(np.mean(v)))
          for k, v in values.items()}


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
