"""`throughput.py --processes N`: the same steps as N processes on one host against one
process with the same devices, side by side.

The N processes join through `jax.distributed` over 127.0.0.1 (gloo CPU collectives), each
with `--devices / N` fake CPU devices, and run one program over all of them on the same
global batch; the reference is one process with `--devices` devices. Both are fresh
processes, run one after the other. On one CPU host the processes share the same cores and
exchange every gradient through loopback TCP, so the ratio measures the multi-process
overhead, not a speed-up (that needs several hosts).
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time

from report import isa_suffix, render

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'throughput.py')


def _without(argv: list[str], names: tuple[str, ...]) -> list[str]:
  """`argv` without the options in `names` (as `--name value` or `--name=value`)."""
  kept, skip = [], False
  for arg in argv:
    if skip:
      skip = False
      continue
    if arg in names:
      skip = True
      continue
    if arg.split('=', 1)[0] in names:
      continue
    kept.append(arg)
  return kept


def _port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _launch(argv: list[str], json_path: str, *, processes: int, devices: int) -> dict:
  """Runs throughput.py as `processes` processes of `devices / processes` devices each."""
  base = [sys.executable, SCRIPT, *argv, '--json', json_path]
  if processes == 1:
    commands = [base + ['--devices', str(devices)]]
  else:
    port = _port()
    commands = [base + ['--devices', str(devices // processes), '--processes', str(processes),
                        '--process-id', str(i), '--coordinator', f'127.0.0.1:{port}']
                for i in range(processes)]
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  start = time.perf_counter()
  procs = [subprocess.Popen(c, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True) for c in commands]
  errors = [p.communicate(timeout=3600)[1] for p in procs]
  for proc, err in zip(procs, errors):
    if proc.returncode:
      raise SystemExit(f'{processes}-process run failed (exit {proc.returncode}): '
                       f'{err.strip().splitlines()[-1][-400:]}')
  with open(json_path) as f:
    result = json.load(f)
  result['process_wall_s'] = time.perf_counter() - start
  return result


def run_processes(args, argv: list[str], *, command: str) -> dict:
  """The `--processes N` comparison; its result (also written to `args.json`)."""
  devices = args.devices or 2
  if devices % args.processes:
    raise SystemExit(f'--devices {devices} does not split over {args.processes} processes.')
  argv = _without(argv, ('--processes', '--devices', '--json', '--readme'))
  with tempfile.TemporaryDirectory() as tmp:
    print(f'1 process x {devices} devices ...', file=sys.stderr, flush=True)
    single = _launch(argv, os.path.join(tmp, 'single.json'), processes=1, devices=devices)
    print(f'{args.processes} processes x {devices // args.processes} devices ...',
          file=sys.stderr, flush=True)
    multi = _launch(argv, os.path.join(tmp, 'multi.json'), processes=args.processes,
                    devices=devices)
  reference = {(r['pair'], r['mode']): r for r in single['rows'] if r['framework'] == 'jaxkd'}
  comparison = []
  for row in multi['rows']:
    if row['framework'] != 'jaxkd':
      continue
    one = reference[(row['pair'], row['mode'])]
    comparison.append({'pair': row['pair'], 'mode': row['mode'], 'batch_size': row['batch_size'],
                       'devices': devices, 'processes': args.processes,
                       'step_ms_1_process': one['step_ms'], 'step_ms_processes': row['step_ms'],
                       'overhead': row['step_ms'] / one['step_ms']})
  result = {'command': command, 'cpu_model': single['cpu_model'],
            'cpu_isa': single.get('cpu_isa'), 'cores': single['cores'],
            'jax_version': single['jax_version'], 'devices': devices,
            'processes': args.processes, 'comparison': comparison,
            'single': single, 'multi': multi,
            'note': 'one host: the processes share its cores and talk over loopback TCP '
                    '(gloo); the ratio is overhead, not speed-up'}
  print(render(single, None))
  print(f'\n{args.processes} processes x {devices // args.processes} devices vs 1 process x '
        f'{devices} devices, same global batch ({result["cpu_model"]}{isa_suffix(result)}, '
        f'{result["cores"]} cores; one host: overhead, not speed-up):\n')
  print('| pair | mode | batch | step ms, 1 process | step ms, '
        f'{args.processes} processes | ratio |\n|---|---|--:|--:|--:|--:|')
  for c in comparison:
    print(f'| {c["pair"]} | {c["mode"]} | {c["batch_size"]} | {c["step_ms_1_process"]:.2f} | '
          f'{c["step_ms_processes"]:.2f} | {c["overhead"]:.2f}x |')
  if args.json:
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, 'w') as f:
      json.dump(result, f, indent=2)
  return result
