"""Loop and input overhead: one in-memory epoch of `jaxkd.loop.fit` vs its steps alone.

    python benchmarks/epoch_overhead.py --json auto --readme benchmarks/README.md

For each pair's student (SGD with momentum, batch 256) on 60,000 generated 28x28 uint8
images held on device by `jaxkd.data.InMemoryDataset` (the experiments' path: a shuffled
permutation per epoch, each batch gathered and normalized on device), it times one epoch of
`jaxkd.loop.fit` (metrics pulled to the host every 50 steps, no evaluation, no checkpoints)
against steps_per_epoch x the median step time of the same compiled step called back to
back on one fixed batch. Target: epoch wall time <= 1.1x the sum of its step times.
"""
from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import tempfile
import time

import numpy as np

from cases import LEARNING_RATE, NUM_CLASSES, PAIRS
from harness import load_average, results_path, write_json
from report import isa_suffix, replace_blocks

NUM_EXAMPLES = 60_000
TARGET = 1.1


def measure_pair(name: str, *, batch_size: int, repeats: int, examples: int) -> dict:
  import jax
  import optax
  from jaxkd import data, models
  from jaxkd.loop import fit
  from jaxkd.parallel import Parallel
  from jaxkd.state import create_train_state
  from jaxkd.steps import make_train_step

  pair = PAIRS[name]
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (examples,) + pair.input_shape, dtype=np.uint8)
  labels = rng.integers(0, NUM_CLASSES, examples)
  parallel = Parallel()
  dataset = data.InMemoryDataset(images, labels, batch_size=batch_size, mean=0.5, std=0.25,
                                 batch_sharding=parallel.batch_sharding(),  # as recipes do
                                 num_classes=NUM_CLASSES)
  steps = dataset.steps_per_epoch
  model = models.build(pair.student, num_classes=NUM_CLASSES)
  tx = optax.sgd(LEARNING_RATE, momentum=0.9)
  step = make_train_step(model=model, tx=tx, parallel=parallel)
  fresh = lambda: parallel.replicate(
      create_train_state(model, tx, seed=0, input_shape=(1,) + pair.input_shape))

  def run_epoch(workdir: str, num_steps: int) -> float:
    state = fresh()
    jax.block_until_ready(state)
    start = time.perf_counter()
    state = fit(state=state, step_fn=step, batches=lambda e, s: dataset.epoch(e, start_step=s),
                steps_per_epoch=steps, num_steps=num_steps, batch_size=batch_size,
                workdir=workdir, parallel=parallel, log_every=50, desc=f'{name} epoch')
    jax.block_until_ready(state)
    return time.perf_counter() - start

  def run_steps(num_steps: int) -> float:
    state, batch = fresh(), dataset.batch(0, 0)
    jax.block_until_ready((state, batch))
    start = time.perf_counter()
    for _ in range(num_steps):
      state, metrics = step(state, batch)
    jax.block_until_ready((state, metrics))
    return (time.perf_counter() - start) / num_steps

  with tempfile.TemporaryDirectory() as tmp:
    run_epoch(os.path.join(tmp, 'warmup'), 3)  # compiles the step and the batch functions
    run_steps(3)
    epochs, step_s = [], []
    for i in range(repeats):  # interleaved, so machine load hits both alike
      epochs.append(run_epoch(os.path.join(tmp, f'epoch{i}'), steps))
      step_s.append(run_steps(steps))
  epoch_s, median_step_s = statistics.median(epochs), statistics.median(step_s)
  return {'pair': name, 'model': pair.student, 'batch_size': batch_size,
          'steps_per_epoch': steps, 'epoch_s': epoch_s, 'epoch_s_all': epochs,
          'step_ms': 1e3 * median_step_s, 'sum_of_steps_s': steps * median_step_s,
          'ratio': epoch_s / (steps * median_step_s)}


def table(result: dict) -> str:
  lines = [f"`{result['command']}`  ", f"{result['date']}, {result['cpu_model']}"
           f"{isa_suffix(result)}, {result['cores']} cores, load average "
           f"{result['load_average_before']:.2f}.", '',
           '| pair (student) | batch | steps/epoch | step ms | sum of steps s | epoch s | '
           f'epoch / steps (target <= {TARGET}) |', '|---|---|---|---|---|---|---|']
  for r in result['rows']:
    lines.append(f"| {r['pair']} ({r['model']}) | {r['batch_size']} | {r['steps_per_epoch']} | "
                 f"{r['step_ms']:.2f} | {r['sum_of_steps_s']:.2f} | {r['epoch_s']:.2f} | "
                 f"{r['ratio']:.3f} ({'met' if r['ratio'] <= TARGET else 'NOT met'}) |")
  return '\n'.join(lines)


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--pairs', default='mlp,lenet', help='comma-separated, from '
                      "['lenet', 'mlp'] (28x28 inputs)")
  parser.add_argument('--batch-size', type=int, default=256)
  parser.add_argument('--repeats', type=int, default=5, help='epochs (and step runs) per pair')
  parser.add_argument('--examples', type=int, default=NUM_EXAMPLES, help='images per epoch')
  parser.add_argument('--json', default=None,
                      help="write the results here; 'auto': benchmarks/results/epoch-<cpu>.json, "
                           '<cpu> from the CPU model')
  parser.add_argument('--readme', default=None,
                      help='also write the table between <!-- epoch:begin/end --> in this file')
  args = parser.parse_args(argv)
  pairs = [p for p in args.pairs.split(',') if p]
  unknown = [p for p in pairs if PAIRS.get(p) is None or PAIRS[p].input_shape != (28, 28, 1)]
  if unknown:
    parser.error(f"unknown or non-28x28 pair(s) {unknown}; choose from ['lenet', 'mlp'].")
  from jaxkd.recipes.provenance import cpu_isa, cpu_model
  if args.json == 'auto':
    args.json = results_path('epoch')
  result = {'command': ' '.join([os.path.relpath(__file__)] + list(argv or sys.argv[1:])),
            'date': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
            'cpu_model': cpu_model(), 'cpu_isa': cpu_isa(), 'cores': os.cpu_count(),
            'load_average_before': load_average(), 'target': TARGET, 'rows': []}
  for name in pairs:
    result['rows'].append(measure_pair(name, batch_size=args.batch_size, repeats=args.repeats,
                                       examples=args.examples))
  result['load_average_after'] = load_average()
  write_json(args.json, result)
  text = table(result)
  if args.readme:
    replace_blocks(args.readme, {'epoch': text})
  print(text)
  if args.json:
    print(f'wrote {os.path.relpath(args.json)}', file=sys.stderr)
  return result


if __name__ == '__main__':
  main()
