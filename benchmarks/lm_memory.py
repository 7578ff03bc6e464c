"""Token KD + CE from last hidden states: the direct form (both models' `[B, L, V]` logits)
beside the chunked ones (`jaxkd.losses.chunked`: `apply_in_chunks`, rematerialised, and
`weighted_sum_in_chunks`, the gradient formed in the forward scan), memory from XLA's
compiled memory analysis and step time (value and gradient w.r.t. the student's hidden
states and embedding).

  python benchmarks/lm_memory.py                       # V = 32,768, L = 1,024, B = 1
  python benchmarks/lm_memory.py --time 3 --json auto  # and time 3 steps of each

Peak = arguments + outputs + temporaries of the compiled program (XLA's own accounting; no
allocator is measured)."""
from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import results_path, write_json  # noqa: E402

from jaxkd.losses import Context, Outputs, build_objective  # noqa: E402
from jaxkd.losses.chunked import Hidden, apply_in_chunks, weighted_sum_in_chunks  # noqa: E402


def programs(objective, chunk):
  """`{form: value_and_grad(loss)(student, teacher, labels)}`, the direct and chunked."""

  def direct(student, teacher, labels):
    total, _, _ = objective.apply(Context(
        Outputs(student.logits()), [Outputs(jax.lax.stop_gradient(teacher.logits()))],
        {'label': labels}))
    return jnp.mean(total)

  def chunked(student, teacher, labels):
    return jnp.mean(apply_in_chunks(objective, student, [teacher], {'label': labels},
                                    chunk=chunk)[0])

  def fused(student, teacher, labels):
    weights = jnp.full(labels.shape, 1.0 / labels.size)
    return weighted_sum_in_chunks(objective, student, [teacher], {'label': labels}, weights,
                                  chunk=chunk)[0]

  return {'direct': jax.jit(jax.value_and_grad(direct)),
          'chunked': jax.jit(jax.value_and_grad(chunked)),
          'fused': jax.jit(jax.value_and_grad(fused))}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--vocab', type=int, default=32_768)
  parser.add_argument('--length', type=int, default=1_024)
  parser.add_argument('--batch', type=int, default=1)
  parser.add_argument('--student-width', type=int, default=128)
  parser.add_argument('--teacher-width', type=int, default=192)
  parser.add_argument('--chunk', type=int, default=128)
  parser.add_argument('--time', type=int, default=0, help='timed steps per form (0: none)')
  parser.add_argument('--json', default='', help="output file ('auto': benchmarks/results)")
  args = parser.parse_args(argv)
  key = jax.random.key(0)
  b, length, vocab = args.batch, args.length, args.vocab
  student = Hidden(jax.random.normal(key, (b, length, args.student_width)),
                   jax.random.normal(key, (vocab, args.student_width)) * 0.02)
  teacher = Hidden(jax.random.normal(key, (b, length, args.teacher_width)),
                   jax.random.normal(key, (vocab, args.teacher_width)) * 0.02)
  labels = jax.random.randint(key, (b, length), 0, vocab)
  objective = build_objective({'ce': {'weight': 0.5},
                               'kd': {'weight': 0.5, 'temperature': 1.0}})
  result = {'device': jax.devices()[0].device_kind, 'shape': vars(args), 'forms': {}}
  for form, fn in programs(objective, args.chunk).items():
    compiled = fn.lower(student, teacher, labels).compile()
    memory = compiled.memory_analysis()
    row = {'temp_bytes': memory.temp_size_in_bytes,
           'argument_bytes': memory.argument_size_in_bytes,
           'output_bytes': memory.output_size_in_bytes}
    row['peak_bytes'] = row['temp_bytes'] + row['argument_bytes'] + row['output_bytes']
    if args.time:
      jax.block_until_ready(compiled(student, teacher, labels))
      times = []
      for _ in range(args.time):
        start = time.perf_counter()
        jax.block_until_ready(compiled(student, teacher, labels))
        times.append(time.perf_counter() - start)
      row['step_s'] = sorted(times)[len(times) // 2]
    result['forms'][form] = row
    print(form, {k: (f'{v / 2**20:.1f} MiB' if k.endswith('bytes') else f'{v:.3f}')
                 for k, v in row.items()}, flush=True)
  direct = result['forms']['direct']
  for form in ('chunked', 'fused'):
    row = result['forms'][form]
    result[f'{form}_peak_ratio'] = row['peak_bytes'] / direct['peak_bytes']
    if args.time:
      result[f'{form}_time_ratio'] = row['step_s'] / direct['step_s']
  print({k: round(v, 3) for k, v in result.items() if k.endswith('ratio')})
  write_json(results_path('lm-memory') if args.json == 'auto' else args.json, result)


if __name__ == '__main__':
  main()
