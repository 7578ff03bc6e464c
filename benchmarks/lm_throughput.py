"""Language-model steps: tokens/s and model-FLOPs utilisation of the student step, online KD
(live teacher) and cached KD (teacher logits in the batch), direct or with the vocabulary in
chunks, beside the same models and steps in PyTorch (`--peer torch`: eager, and with
`--torch-compile` also `torch.compile`d), timed in interleaved windows (each window runs
every case once, so load drifts touch every case alike; `harness.measure`).

  python benchmarks/lm_throughput.py                      # lm_student / lm_teacher, 8 x 256
  python benchmarks/lm_throughput.py --peer torch --torch-compile --json auto \
      --readme benchmarks/README.md
  python benchmarks/lm_throughput.py --vocab-chunk 128 --json auto
  python benchmarks/lm_throughput.py --tiny               # seconds: a smoke run

MFU = model FLOPs per step / step time / the machine's matmul peak (`harness.measure_peak`,
a large jitted float32 matmul). Model FLOPs per token: 6 x (the student's parameters +
attention's 2 L D per layer) for its forward and backward, plus 2 x (the teacher's
parameters + 2 L D per layer) for a live teacher's forward; embeddings count once, as the
tied output layer's matmul. The PyTorch rows are credited with the same model FLOPs.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys

import jax
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cases import JaxCase, TorchCase, compile_case, load_peer  # noqa: E402
from harness import (load_average, measure, measure_peak, results_path,  # noqa: E402
                     torch_build, write_json)
from report import replace_blocks  # noqa: E402

from jaxkd import losses, models  # noqa: E402
from jaxkd.distill import make_distill_step  # noqa: E402
from jaxkd.parallel import Parallel  # noqa: E402
from jaxkd.state import create_train_state, init_variables  # noqa: E402
from jaxkd.steps import make_train_step  # noqa: E402

MODES = ('student', 'online_kd', 'cached_kd')
LEARNING_RATE = 1e-3
PEERS = {'pytorch': False, 'pytorch-compile': True}  # framework -> torch.compile


def flops_per_token(model, variables, length: int, *, backward: bool) -> float:
  """Matmul FLOPs per token of a forward (x 3 with the backward pass)."""
  params = sum(np.size(x) for x in jax.tree.leaves(variables['params']))
  attention = 2 * length * model.width * model.depth
  return (6 if backward else 2) * (params + attention)


def make_batch(args, teacher, teacher_vars) -> dict:
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, args.vocab, (args.batch_size, args.length + 1)).astype(np.int32)
  batch = {'tokens': tokens[:, :-1], 'label': tokens[:, 1:],
           'mask': np.ones((args.batch_size, args.length), np.float32)}
  batch['teacher_logits'] = np.asarray(jax.jit(teacher.apply)(teacher_vars, batch['tokens']))
  return batch


def build(args):
  """`({name: case}, {mode: model FLOPs per step})`: jaxkd's compiled steps and, with a
  peer, PyTorch's, named `framework/mode`."""
  vocab, length = args.vocab, args.length
  student = models.build(args.student, num_classes=vocab, max_len=length)
  teacher = models.build(args.teacher, num_classes=vocab, max_len=length)
  teacher_vars = init_variables(teacher, key=jax.random.key(1), input_shape=(1, length))
  tx = optax.adamw(LEARNING_RATE)
  parallel = Parallel('jit', num_devices=1)
  objective = losses.make_objective(hard_weight=0.5, soft_weight=0.5, temperature=1.0)
  batch = make_batch(args, teacher, teacher_vars)
  plain = {k: v for k, v in batch.items() if k != 'teacher_logits'}
  chunk = args.vocab_chunk or None
  steps = {
      'student': (make_train_step(model=student, tx=tx, parallel=parallel, vocab_chunk=chunk),
                  plain, ()),
      'online_kd': (make_distill_step(student=student, teachers=teacher, tx=tx,
                                      objective=objective, parallel=parallel,
                                      vocab_chunk=chunk),
                    plain, (parallel.place_teacher(teacher_vars),)),
      'cached_kd': (make_distill_step(student=student, teachers=None, tx=tx,
                                      objective=objective, parallel=parallel, cached=True),
                    batch, ((),)),
  }
  state = create_train_state(student, tx, seed=0, input_shape=(1, length))
  student_params = models.param_count(state.params)
  tokens_per_step = args.batch_size * length
  student_flops = flops_per_token(student, {'params': state.params}, length, backward=True)
  teacher_flops = flops_per_token(teacher, teacher_vars, length, backward=False)
  flops = {'student': student_flops, 'online_kd': student_flops + teacher_flops,
           'cached_kd': student_flops}
  peer = load_peer('torch_lm_peer') if args.peer == 'torch' else None
  if peer is not None:
    peer.set_threads()
  cases = {}
  for mode in args.modes:
    step, step_batch, step_args = steps[mode]
    cases[f'jaxkd/{mode}'] = compile_case(
        step, [parallel.replicate(jax.tree.map(np.copy, state)),
               parallel.shard_batch(step_batch), *step_args],
        donate=True, parallel=parallel, param_count=student_params)
    for framework, compiled in PEERS.items():
      if peer is None or (compiled and not args.torch_compile):
        continue
      torch_case = peer.Peer(student=args.student, teacher=args.teacher, mode=mode,
                             vocab=vocab, batch=batch, learning_rate=LEARNING_RATE,
                             compile=compiled)
      if torch_case.param_count != student_params:
        raise SystemExit(f'{mode}: parameter counts differ (jaxkd {student_params}, '
                         f'PyTorch {torch_case.param_count}).')
      cases[f'{framework}/{mode}'] = TorchCase(peer=torch_case, param_count=student_params)
  return cases, {mode: flops[mode] * tokens_per_step for mode in args.modes}, tokens_per_step


def _warm_up(cases: dict) -> dict[str, float]:
  """Seconds of each case's first step (jaxkd's are compiled already; torch.compile's
  compile then); the rest of the warm-up is `harness.measure`'s."""
  return {name: case.window(1) for name, case in cases.items()}


def rows_of(cases, results, first_s, flops, tokens_per_step, peak) -> list[dict]:
  rows = []
  for name, (window_times, steps) in results.items():
    framework, mode = name.split('/')
    step_s = statistics.median(window_times)
    case = cases[name]
    rows.append({
        'mode': mode, 'framework': framework, 'step_s': step_s,
        'step_s_min': min(window_times), 'step_s_max': max(window_times),
        'windows': len(window_times), 'steps_per_window': steps,
        'tokens_per_s': tokens_per_step / step_s, 'model_flops_per_step': flops[mode],
        'mfu': flops[mode] / step_s / peak, 'first_step_s': first_s[name],
        'compile_s': case.compile_s if isinstance(case, JaxCase) else None,
    })
  by_name = {(r['framework'], r['mode']): r for r in rows}
  for row in rows:
    if row['framework'] == 'jaxkd':
      for framework in PEERS:
        if (framework, row['mode']) in by_name:
          row[f'vs_{framework.replace("-", "_")}'] = (
              row['tokens_per_s'] / by_name[framework, row['mode']]['tokens_per_s'])
  return rows


def markdown(result: dict) -> str:
  """The run's summary line and table (the README's `lm` block)."""
  torch = result.get('torch_build') or {}
  line = (f"`{result['command']}`  \n{result['date']}, {result['cpu_model']}, "
          f"{result['cpu_isa']['isa']}, {result['cores']} cores, jax {result['jax_version']}"
          + (f", torch {torch['version']} ({torch['threads']} threads)" if torch else '')
          + f", peak {result['matmul_peak_flops'] / 1e9:.1f} GFLOP/s, load average "
          f"{result['load_average']:.2f} before, {result['load_average_after']:.2f} after.")
  peers = [f for f in PEERS if any(r['framework'] == f for r in result['rows'])]
  head = ['mode', 'jaxkd tokens/s', 'jaxkd ms', 'MFU jaxkd']
  for framework in peers:
    head += [f'{framework} tokens/s', f'jaxkd/{framework}']
  lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  rows = {(r['framework'], r['mode']): r for r in result['rows']}
  for mode in result['settings']['modes']:
    jax_row = rows['jaxkd', mode]
    cells = [mode, f"{jax_row['tokens_per_s']:,.0f}", f"{jax_row['step_s'] * 1e3:.1f}",
             f"{100 * jax_row['mfu']:.1f} %"]
    for framework in peers:
      cells += [f"{rows[framework, mode]['tokens_per_s']:,.0f}",
                f"{jax_row['vs_' + framework.replace('-', '_')]:.2f}x"]
    lines.append('| ' + ' | '.join(cells) + ' |')
  return line + '\n\n' + '\n'.join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--student', default='lm_student')
  parser.add_argument('--teacher', default='lm_teacher')
  parser.add_argument('--vocab', type=int, default=2048)
  parser.add_argument('--length', type=int, default=256)
  parser.add_argument('--batch-size', type=int, default=8)
  parser.add_argument('--vocab-chunk', type=int, default=0)
  parser.add_argument('--modes', default=','.join(MODES))
  parser.add_argument('--peer', choices=['none', 'torch'], default='none')
  parser.add_argument('--torch-compile', action='store_true',
                      help='with --peer torch: also time the torch.compile\'d model')
  parser.add_argument('--windows', type=int, default=5)
  parser.add_argument('--steps', type=int, default=5, help='steps per window')
  parser.add_argument('--warmup', type=int, default=2, help='untimed steps after the first')
  parser.add_argument('--tiny', action='store_true', help='a seconds-long smoke run')
  parser.add_argument('--json', default='')
  parser.add_argument('--readme', default='', help="write the table into this file's lm block")
  args = parser.parse_args(argv)
  command = 'benchmarks/lm_throughput.py ' + ' '.join(sys.argv[1:] if argv is None else argv)
  args.modes = [m for m in args.modes.split(',') if m]
  args.window_seconds = 1.0
  if args.tiny:
    args.vocab, args.length, args.batch_size, args.windows, args.steps = 64, 16, 2, 1, 1
    args.student = args.teacher = 'transformer'
  load_before = load_average()
  cases, flops, tokens_per_step = build(args)
  peak = measure_peak(np.float32, size=256 if args.tiny else None)
  first_s = _warm_up(cases)
  results = measure(cases, args)
  rows = rows_of(cases, results, first_s, flops, tokens_per_step, peak)
  for row in rows:
    ratios = ', '.join(f'{k} {v:.2f}x' for k, v in row.items() if k.startswith('vs_'))
    print(f"{row['framework']:16s} {row['mode']:10s} {row['tokens_per_s']:10.0f} tokens/s  "
          f"MFU {100 * row['mfu']:.1f} %  {ratios}", flush=True)
  from jaxkd.recipes.provenance import cpu_isa, cpu_model  # pylint: disable=g-import-not-at-top
  result = {'command': command,
            'date': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
            'device': jax.devices()[0].device_kind, 'cpu_model': cpu_model(),
            'cpu_isa': cpu_isa(), 'cores': os.cpu_count(), 'jax_version': jax.__version__,
            'python': platform.python_version(), 'settings': vars(args),
            'matmul_peak_flops': peak, 'load_average': load_before,
            'load_average_after': load_average(), 'rows': rows}
  if args.peer == 'torch' and any(r['framework'] != 'jaxkd' for r in rows):
    result.update(torch_build=torch_build(), omp_wait_policy=os.environ.get('OMP_WAIT_POLICY'))
  write_json(results_path('lm-throughput') if args.json == 'auto' else args.json, result)
  if args.readme:
    replace_blocks(args.readme, {'lm': markdown(result)})
  return result


if __name__ == '__main__':
  main()
