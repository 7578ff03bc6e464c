"""Generation throughput of `jaxkd.generate`: new tokens/s of a batch of prompts (prefill and
cached decode, one jitted call), greedy, sampled at temperature 1, the same with top-p 0.95
(a sort of the vocabulary per step) and beam search (4 beams), timed in interleaved windows
as `lm_throughput.py` times its steps.

  python benchmarks/lm_generate.py                 # lm_teacher, batch 8, prompt 64, 128 new
  python benchmarks/lm_generate.py --model lm_student --json auto
  python benchmarks/lm_generate.py --tiny          # seconds: a smoke run

No stop token, so every row generates `--new-tokens`: tokens/s = batch x new tokens / the
call's time (the prefill's time included). Random weights decode as fast as trained ones.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import load_average, results_path, write_json  # noqa: E402

from jaxkd import generate, models  # noqa: E402
from jaxkd.state import init_variables  # noqa: E402

MODES = ('greedy', 'sampled', 'top_p', 'beam4')


def build(args):
  """`{mode: call() -> Generation}` over one batch of random prompts."""
  total = args.prompt_len + args.new_tokens
  model = models.build(args.model, num_classes=args.vocab, max_len=total)
  variables = init_variables(model, key=jax.random.key(0), input_shape=(1, total))
  prompts = np.random.default_rng(0).integers(0, args.vocab, (args.batch_size, args.prompt_len))
  common = dict(max_new_tokens=args.new_tokens)
  calls = {
      'greedy': lambda: generate.greedy(model, variables, prompts, **common),
      'sampled': lambda: generate.sample(model, variables, prompts, key=jax.random.key(1),
                                         temperature=1.0, **common),
      'top_p': lambda: generate.sample(model, variables, prompts, key=jax.random.key(1),
                                       temperature=1.0, top_p=0.95, **common),
      'beam4': lambda: generate.beam_search(model, variables, prompts, num_beams=4, **common),
  }
  return {mode: calls[mode] for mode in args.modes}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--model', default='lm_teacher')
  parser.add_argument('--vocab', type=int, default=2048)
  parser.add_argument('--prompt-len', type=int, default=64)
  parser.add_argument('--new-tokens', type=int, default=128)
  parser.add_argument('--batch-size', type=int, default=8)
  parser.add_argument('--modes', default=','.join(MODES))
  parser.add_argument('--windows', type=int, default=3)
  parser.add_argument('--tiny', action='store_true', help='a seconds-long smoke run')
  parser.add_argument('--json', default='')
  args = parser.parse_args(argv)
  args.modes = [m for m in args.modes.split(',') if m]
  if args.tiny:
    args.vocab, args.prompt_len, args.new_tokens, args.windows = 64, 8, 8, 1
    args.model = 'transformer'
  calls = build(args)
  for call in calls.values():  # compile
    jax.block_until_ready(call())
  times = {mode: [] for mode in calls}
  for _ in range(args.windows):
    for mode, call in calls.items():
      start = time.perf_counter()
      jax.block_until_ready(call())
      times[mode].append(time.perf_counter() - start)
  rows = []
  new_tokens = args.batch_size * args.new_tokens
  for mode, window_times in times.items():
    seconds = statistics.median(window_times)
    rows.append({'mode': mode, 'seconds': seconds, 'new_tokens': new_tokens,
                 'tokens_per_s': new_tokens / seconds})
    print(f"{mode:8s} {rows[-1]['tokens_per_s']:10.0f} new tokens/s  ({seconds:.3f} s per "
          f'batch of {args.batch_size} x {args.new_tokens})', flush=True)
  result = {'device': jax.devices()[0].device_kind, 'settings': vars(args),
            'load_average': load_average(), 'rows': rows}
  write_json(results_path('lm-generate') if args.json == 'auto' else args.json, result)
  return result


if __name__ == '__main__':
  main()
