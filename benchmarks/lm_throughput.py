"""Language-model steps: tokens/s and model-FLOPs utilisation of the student step, online KD
(live teacher) and cached KD (teacher logits in the batch), direct or with the vocabulary in
chunks, timed in interleaved windows (each window runs every mode once, so load drifts
touch every mode alike).

  python benchmarks/lm_throughput.py                      # lm_student / lm_teacher, 8 x 256
  python benchmarks/lm_throughput.py --vocab-chunk 128 --json auto
  python benchmarks/lm_throughput.py --tiny               # seconds: a smoke run

MFU = model FLOPs per step / step time / the machine's matmul peak (`harness.measure_peak`,
a large jitted float32 matmul). Model FLOPs per token: 6 x (the student's parameters +
attention's 2 L D per layer) for its forward and backward, plus 2 x (the teacher's
parameters + 2 L D per layer) for a live teacher's forward; embeddings count once, as the
tied output layer's matmul.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import jax
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (load_average, measure_peak, results_path,  # noqa: E402
                     write_json)

from jaxkd import losses, models  # noqa: E402
from jaxkd.distill import make_distill_step  # noqa: E402
from jaxkd.parallel import Parallel  # noqa: E402
from jaxkd.state import create_train_state, init_variables  # noqa: E402
from jaxkd.steps import make_train_step  # noqa: E402

MODES = ('student', 'online_kd', 'cached_kd')


def flops_per_token(model, variables, length: int, *, backward: bool) -> float:
  """Matmul FLOPs per token of a forward (x 3 with the backward pass)."""
  params = sum(np.size(x) for x in jax.tree.leaves(variables['params']))
  attention = 2 * length * model.width * model.depth
  return (6 if backward else 2) * (params + attention)


def build(args):
  """`{mode: (step, state, batch, step_args)}` and the FLOPs per step of each mode."""
  vocab, length, batch_size = args.vocab, args.length, args.batch_size
  overrides = dict(max_len=length)
  student = models.build(args.student, num_classes=vocab, **overrides)
  teacher = models.build(args.teacher, num_classes=vocab, **overrides)
  teacher_vars = init_variables(teacher, key=jax.random.key(1), input_shape=(1, length))
  tx = optax.adamw(1e-3)
  parallel = Parallel('jit', num_devices=1)
  objective = losses.make_objective(hard_weight=0.5, soft_weight=0.5, temperature=1.0)
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, vocab, (batch_size, length + 1)).astype(np.int32)
  batch = {'tokens': tokens[:, :-1], 'label': tokens[:, 1:],
           'mask': np.ones((batch_size, length), np.float32)}
  chunk = args.vocab_chunk or None
  logits = np.asarray(jax.jit(teacher.apply)(teacher_vars, batch['tokens']))
  steps = {
      'student': (make_train_step(model=student, tx=tx, parallel=parallel, vocab_chunk=chunk),
                  batch, ()),
      'online_kd': (make_distill_step(student=student, teachers=teacher, tx=tx,
                                      objective=objective, parallel=parallel,
                                      vocab_chunk=chunk), batch, (teacher_vars,)),
      'cached_kd': (make_distill_step(student=student, teachers=None, tx=tx,
                                      objective=objective, parallel=parallel, cached=True),
                    {**batch, 'teacher_logits': logits}, ()),
  }
  state = create_train_state(student, tx, seed=0, input_shape=(1, length))
  tokens_per_step = batch_size * length
  student_flops = flops_per_token(student, {'params': state.params}, length, backward=True)
  teacher_flops = flops_per_token(teacher, teacher_vars, length, backward=False)
  flops = {'student': student_flops, 'online_kd': student_flops + teacher_flops,
           'cached_kd': student_flops}
  return ({mode: (*steps[mode], state) for mode in args.modes},
          {mode: flops[mode] * tokens_per_step for mode in args.modes}, tokens_per_step)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--student', default='lm_student')
  parser.add_argument('--teacher', default='lm_teacher')
  parser.add_argument('--vocab', type=int, default=2048)
  parser.add_argument('--length', type=int, default=256)
  parser.add_argument('--batch-size', type=int, default=8)
  parser.add_argument('--vocab-chunk', type=int, default=0)
  parser.add_argument('--modes', default=','.join(MODES))
  parser.add_argument('--windows', type=int, default=5)
  parser.add_argument('--steps', type=int, default=5, help='steps per window')
  parser.add_argument('--tiny', action='store_true', help='a seconds-long smoke run')
  parser.add_argument('--json', default='')
  args = parser.parse_args(argv)
  args.modes = [m for m in args.modes.split(',') if m]
  if args.tiny:
    args.vocab, args.length, args.batch_size, args.windows, args.steps = 64, 16, 2, 1, 1
    args.student = args.teacher = 'transformer'
  cases, flops, tokens_per_step = build(args)
  peak = measure_peak(np.float32, size=256 if args.tiny else None)
  states = {}
  for mode, (step, batch, step_args, state) in cases.items():
    # compile and warm up: the second call sees the step's own output placement
    states[mode] = jax.tree.map(np.copy, state)
    for _ in range(2):
      states[mode], _ = step(states[mode], batch, *step_args)
    jax.block_until_ready(states[mode])
  times = {mode: [] for mode in cases}
  for _ in range(args.windows):
    for mode, (step, batch, step_args, _) in cases.items():
      start = time.perf_counter()
      for _ in range(args.steps):
        states[mode], metrics = step(states[mode], batch, *step_args)
      jax.block_until_ready(metrics)
      times[mode].append((time.perf_counter() - start) / args.steps)
  rows = []
  for mode, window_times in times.items():
    step_s = statistics.median(window_times)
    rows.append({'mode': mode, 'step_s': step_s, 'tokens_per_s': tokens_per_step / step_s,
                 'model_flops_per_step': flops[mode], 'mfu': flops[mode] / step_s / peak})
    print(f"{mode:10s} {rows[-1]['tokens_per_s']:10.0f} tokens/s  "
          f"MFU {100 * rows[-1]['mfu']:.1f} %", flush=True)
  result = {'device': jax.devices()[0].device_kind, 'settings': vars(args),
            'matmul_peak_flops': peak, 'load_average': load_average(), 'rows': rows}
  write_json(results_path('lm-throughput') if args.json == 'auto' else args.json, result)
  return result


if __name__ == '__main__':
  main()
