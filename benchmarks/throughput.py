"""Training and eval throughput of jaxkd's steps, with an optional eager-PyTorch peer.

    python benchmarks/throughput.py                       # all pairs and modes, table on stdout
    python benchmarks/throughput.py --quick               # MLP and LeNet, short windows (< 2 min)
    python benchmarks/throughput.py --peer torch --json auto   # benchmarks/results/cpu-<cpu>.json
    python benchmarks/throughput.py --pairs lenet --modes student,online_kd --batch-size 128
    python benchmarks/throughput.py --scaling --pairs lenet   # batch sweep, 1 vs 8 devices, cache
    python benchmarks/throughput.py --processes 2 --pairs mlp,lenet --modes student,online_kd

For each teacher -> student pair and each mode the script compiles the library's own step
(`make_train_step`, `make_distill_step`, `make_eval_step`, the transfer module's fine-tuning
step), runs it until warm, and times repeated windows of steps, each synchronized with
`block_until_ready`; a row reports the median window. FLOPs per step come from XLA's cost
analysis of the compiled step; MFU divides the achieved FLOP/s by a float32 (or `--dtype`)
matmul peak measured in the same run. With `--peer torch` the same models and steps run in
eager PyTorch, window by window interleaved with jaxkd's, so both see the same machine load.

Modes: `student` (supervised student step), `online_kd` (live teacher), `cached_kd` (teacher
logits in the batch), `finetune` (everything but `head` frozen), `eval` (eval step on the
student), `teacher_forward` (the teacher's inference forward pass alone).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys

from cases import METHOD_MODES, MODES, PAIRS
from harness import results_path, run
from report import render


def _parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--pairs', default=None,
                      help=f'comma-separated, from {sorted(PAIRS)} (default: all; --quick: '
                           'mlp,lenet)')
  parser.add_argument('--modes', default=','.join(MODES),
                      help=f'comma-separated, from {MODES}, or the distillation methods '
                           f'{METHOD_MODES} (online KD with that term; no PyTorch peer)')
  parser.add_argument('--batch-size', type=int, default=256, help='global batch size')
  parser.add_argument('--quick', action='store_true', help='few short windows (< 2 minutes)')
  parser.add_argument('--windows', type=int, default=None, help='timed windows per row')
  parser.add_argument('--steps', type=int, default=None,
                      help='steps per window (default: enough for ~1 s, 0.25 s with --quick)')
  parser.add_argument('--warmup', type=int, default=None, help='untimed steps after compiling')
  parser.add_argument('--peer', choices=['torch'], default=None,
                      help='also run the eager-PyTorch peer, interleaved')
  parser.add_argument('--dtype', choices=['float32', 'bfloat16'], default='float32',
                      help="the models' compute dtype (parameters stay float32)")
  parser.add_argument('--devices', type=int, default=None,
                      help='number of devices to use; on CPU, that many fake CPU devices')
  parser.add_argument('--compile-cache', default=None,
                      help="directory for JAX's persistent compilation cache")
  parser.add_argument('--scaling', action='store_true',
                      help='batch-size sweep, 1 vs 8 devices and compile-cache runs for '
                           '--scaling-pair (student step)')
  parser.add_argument('--scaling-pair', default='lenet', choices=sorted(PAIRS))
  parser.add_argument('--sweep-batch-sizes', default='64,128,256,512,1024')
  parser.add_argument('--baseline-layers', action='store_true',
                      help="also time jaxkd with XLA's native convolution and pooling "
                           "(framework 'jaxkd-xla-layers'), interleaved: before/after of "
                           'jaxkd.accel')
  parser.add_argument('--baseline-kernels', action='store_true',
                      help="also time jaxkd compiled for XLA:CPU's default YNNPACK "
                           "convolution kernels (framework 'jaxkd-ynnpack'), interleaved: "
                           "before/after of XLA's own kernels (jaxkd.accel.compile)")
  parser.add_argument('--json', default=None,
                      help="write the results here; 'auto': benchmarks/results/cpu-<cpu>.json "
                           '(processes-<cpu>.json with --processes, cpu-bfloat16-<cpu>.json '
                           'with --dtype bfloat16), <cpu> from the CPU model')
  parser.add_argument('--readme', default=None,
                      help='also write the tables into this Markdown file, between its '
                           '<!-- results|targets|machines|scaling:begin/end --> markers '
                           '(a bfloat16 run: results-bfloat16)')
  parser.add_argument('--from-json', default=None,
                      help='measure nothing: print (and with --readme, write) the tables of '
                           'this earlier --json file')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--processes', type=int, default=1,
                      help='> 1: also run as that many processes (jax.distributed over '
                           '127.0.0.1, gloo) sharing --devices (default 2), against one '
                           'process with all of them; on one host this measures overhead')
  parser.add_argument('--process-id', type=int, default=None, help=argparse.SUPPRESS)
  parser.add_argument('--coordinator', default='', help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.pairs is None:
    args.pairs = 'mlp,lenet' if args.quick else ','.join(PAIRS)
  args.pairs = _names(args.pairs, PAIRS, 'pair')
  args.modes = _names(args.modes, MODES + METHOD_MODES, 'mode')
  if args.windows is None:
    args.windows = 3 if args.quick else 7
  if args.warmup is None:
    args.warmup = 1 if args.quick else 3
  args.window_seconds = 0.25 if args.quick else 1.0
  return args


def _names(text: str, known, kind: str) -> list[str]:
  names = [n.strip() for n in text.split(',') if n.strip()]
  unknown = [n for n in names if n not in known]
  if unknown or not names:
    raise SystemExit(f'Unknown {kind}(s) {unknown}; choose from {sorted(known)}.')
  return names


def main(argv=None) -> dict:
  args = _parse_args(argv)
  if args.from_json:
    with open(args.from_json) as f:
      result = json.load(f)
    print(render(result, args.readme))
    return result
  command = ' '.join(shlex.quote(a) for a in [os.path.relpath(__file__)] +
                     list(sys.argv[1:] if argv is None else argv))
  if args.json == 'auto':
    kind = 'processes' if args.processes > 1 and args.process_id is None else 'cpu'
    args.json = results_path(kind if args.dtype == 'float32' else f'{kind}-{args.dtype}')
  if args.processes > 1 and args.process_id is None:
    from processes import run_processes
    result = run_processes(args, list(sys.argv[1:] if argv is None else argv), command=command)
    _wrote(args.json)
    return result
  result = run(args, command=command)
  if args.process_id:  # only process 0 reports
    return result
  print('\n' + render(result, args.readme))
  _wrote(args.json)
  return result


def _wrote(path: str | None) -> None:
  if path:
    print(f'wrote {os.path.relpath(path)}', file=sys.stderr)


if __name__ == '__main__':
  main()
