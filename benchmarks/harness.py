"""How `throughput.py` measures: the machine's matmul peak and load, interleaved timing
windows, one row per (pair, mode, framework), the scaling runs in fresh processes, and the
whole run's result dict and JSON."""
from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from cases import (BASELINE, BASELINES, KERNELS_BASELINE, METHOD_MODES, MODES, PAIRS, load_peer,
                   make_data, make_jax_case, make_torch_case, with_baseline)
from report import check_targets

from jaxkd.accel import hostmem

# The entry point the scaling runs start afresh.
SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'throughput.py')
# Where `--json auto` writes, one file per kind and machine.
RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'results')


# --- the machine ---------------------------------------------------------------------------

def load_average() -> float:
  try:
    return os.getloadavg()[0]
  except OSError:
    return float('nan')


def measure_peak(dtype, *, size: int | None = None, repeats: int = 10) -> float:
  """Best FLOP/s of a large jitted matmul (the MFU denominator); the run measures it before
  and after the rows and keeps the better one."""
  import jax
  import jax.numpy as jnp
  if size is None:
    size = 2048 if jax.default_backend() == 'cpu' else 8192
  a = jnp.ones((size, size), dtype)
  b = jnp.ones((size, size), dtype)
  matmul = jax.jit(lambda a, b: a @ b)
  matmul(a, b).block_until_ready()
  best = float('inf')
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(a, b).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2 * size ** 3 / best


# --- measuring -----------------------------------------------------------------------------

def _steps_per_window(case, args) -> int:
  if args.steps:
    return args.steps
  estimate = min(case.window(1) for _ in range(2))
  steps = int(np.clip(round(args.window_seconds / max(estimate, 1e-6)), 1, 200))
  import jax
  if jax.process_count() > 1:  # every process must run the same steps (collectives)
    from jax.experimental import multihost_utils
    steps = int(multihost_utils.broadcast_one_to_all(np.int32(steps)))
  return steps


def measure(cases: dict, args) -> dict[str, list[float]]:
  """Warms every case up, then times `args.windows` windows of each, interleaved."""
  steps = {}
  for name, case in cases.items():
    for _ in range(args.warmup):
      case.window(1)
    steps[name] = _steps_per_window(case, args)
  times = {name: [] for name in cases}
  for _ in range(args.windows):
    for name, case in cases.items():
      times[name].append(case.window(steps[name]))
  return {name: (times[name], steps[name]) for name in cases}


def _row(*, pair_name, pair, mode, framework, batch_size, window_times, steps, flops, peak,
         device, num_devices, dtype, compile_s, param_count) -> dict:
  step_s = statistics.median(window_times)
  achieved = flops / step_s if flops == flops else float('nan')
  return {
      'pair': pair_name,
      'teacher': pair.teacher,
      'student': pair.student,
      'mode': mode,
      'framework': framework,
      'batch_size': batch_size,
      'examples_per_s': batch_size / step_s,
      'step_ms': step_s * 1e3,
      'step_ms_min': min(window_times) * 1e3,
      'step_ms_max': max(window_times) * 1e3,
      'windows': len(window_times),
      'steps_per_window': steps,
      'compile_s': compile_s,
      'flops_per_step': flops,
      'achieved_flops_per_s': achieved,
      'mfu': achieved / peak,
      'param_count': param_count,
      'device': device,
      'num_devices': num_devices,
      'dtype': dtype,
  }


def run_rows(args, *, pairs, modes, batch_size, peer_module, peak, parallel, jax_device,
             torch_device) -> list[dict]:
  import jax.numpy as jnp
  dtype = jnp.bfloat16 if args.dtype == 'bfloat16' else None
  rows = []
  for pair_name in pairs:
    pair = PAIRS[pair_name]
    import jax
    data = make_data(pair, batch_size // jax.process_count(), args.seed)  # this process's share
    related, related_rows = {}, {}
    for mode in modes:
      cases = {'jaxkd': make_jax_case(pair, mode, data, dtype=dtype, parallel=parallel)}
      if mode in RELATED_MODES:
        related[mode] = cases['jaxkd']
      wanted = {BASELINE: args.baseline_layers, KERNELS_BASELINE: args.baseline_kernels}
      for framework in BASELINES:
        if wanted[framework] and pair_name != 'mlp':  # (the MLP has no convolution)
          cases[framework] = with_baseline(framework, lambda: make_jax_case(
              pair, mode, data, dtype=dtype, parallel=parallel))
      if peer_module is not None and mode in MODES:
        cases['pytorch'] = make_torch_case(peer_module, pair, mode, data, device=torch_device,
                                           dtype=args.dtype)
        if cases['pytorch'].param_count != cases['jaxkd'].param_count:
          raise SystemExit(f'{pair_name}/{mode}: parameter counts differ (jaxkd '
                           f'{cases["jaxkd"].param_count}, PyTorch '
                           f'{cases["pytorch"].param_count}).')
      results = measure(cases, args)
      flops = cases['jaxkd'].flops
      new = {}
      for framework, (window_times, steps) in results.items():
        case = cases[framework]
        is_jax = framework != 'pytorch'
        new[framework] = _row(
            pair_name=pair_name, pair=pair, mode=mode, framework=framework,
            batch_size=batch_size, window_times=window_times, steps=steps, flops=flops,
            peak=peak, device=jax_device if is_jax else torch_device,
            num_devices=parallel.size if is_jax else 1, dtype=args.dtype,
            compile_s=case.compile_s if is_jax else None, param_count=case.param_count)
      if cases['jaxkd'].note:
        new['jaxkd']['freeze'] = cases['jaxkd'].note
      if 'pytorch' in new:
        new['jaxkd']['vs_pytorch'] = (new['jaxkd']['examples_per_s'] /
                                      new['pytorch']['examples_per_s'])
      for framework, (_, ratio, _, _) in BASELINES.items():
        if framework in new:
          new['jaxkd'][ratio] = (new['jaxkd']['examples_per_s'] /
                                 new[framework]['examples_per_s'])
      rows += new.values()
      related_rows[mode] = new['jaxkd']
      print(_progress(list(new.values())), file=sys.stderr, flush=True)
    if len(related) > 1:
      # The step-time targets compare modes with each other: time those side by side, so
      # a drift in machine load between rows does not enter the ratios.
      for mode, (window_times, _) in measure(related, args).items():
        related_rows[mode]['step_ms_interleaved'] = statistics.median(window_times) * 1e3
  return rows


# Modes whose step times the targets compare with each other (jaxkd only).
RELATED_MODES = ('student', 'online_kd', 'cached_kd', 'teacher_forward', *METHOD_MODES)


def _progress(rows) -> str:
  parts = [f'{r["framework"]} {r["examples_per_s"]:.0f} ex/s ({r["step_ms"]:.1f} ms)' for r in rows]
  return f'  {rows[0]["pair"]:7s} {rows[0]["mode"]:16s} ' + ', '.join(parts)


# --- scaling and start-up ------------------------------------------------------------------

def _subprocess_rows(extra: list[str], json_path: str, *, attempts: int = 2) -> dict:
  """Runs `throughput.py` in a fresh process; its JSON, or {'error': ...} after `attempts`.

  A fresh process because the device count and the compilation cache are fixed when JAX's
  backend starts. Retried once: with 8 fake devices on 2 cores, XLA:CPU's all-reduce can
  miss its 40 s rendezvous deadline when the threads are starved, and aborts.
  """
  command = [sys.executable, SCRIPT, *extra, '--json', json_path]
  error = ''
  for _ in range(attempts):
    start = time.perf_counter()
    proc = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True, timeout=1800)
    wall = time.perf_counter() - start
    if proc.returncode == 0:
      with open(json_path) as f:
        result = json.load(f)
      result['process_wall_s'] = wall
      return result
    error = f'exit {proc.returncode}: ' + proc.stderr.strip().splitlines()[-1][-300:]
    print(f'  {" ".join(extra)} failed ({error})', file=sys.stderr)
  return {'error': error}


def run_scaling(args, *, peer_module, peak, parallel, jax_device, torch_device) -> dict:
  """Examples/s vs batch size, 1 vs 8 devices, compile time with a cold and warm cache."""
  pair = args.scaling_pair
  sizes = [int(b) for b in args.sweep_batch_sizes.split(',')]
  print(f'scaling: batch sweep {sizes} on {pair}/student', file=sys.stderr)
  sweep = []
  for batch_size in sizes:
    sweep += run_rows(args, pairs=[pair], modes=['student'], batch_size=batch_size,
                      peer_module=peer_module, peak=peak, parallel=parallel,
                      jax_device=jax_device, torch_device=torch_device)
  # Few, fixed steps: every 8-device step is one more chance for the rendezvous abort.
  common = ['--pairs', pair, '--modes', 'student', '--batch-size', str(args.batch_size),
            '--windows', str(args.windows), '--warmup', str(args.warmup),
            '--steps', str(args.steps or 10)]
  devices = []
  with tempfile.TemporaryDirectory() as tmp:
    for count in (1, 8):
      print(f'scaling: {count} device(s), global batch {args.batch_size}', file=sys.stderr)
      result = _subprocess_rows(common + ['--devices', str(count)],
                                os.path.join(tmp, f'devices{count}.json'))
      if 'error' in result:
        devices.append({'devices': count, 'error': result['error']})
        continue
      row = result['rows'][0]
      devices.append({'devices': count, 'step_ms': row['step_ms'],
                      'examples_per_s': row['examples_per_s'], 'compile_s': row['compile_s']})
    cache_dir = os.path.join(tmp, 'jax_cache')
    runs = []
    for attempt in ('cold', 'warm'):
      print(f'scaling: compile with a {attempt} persistent cache', file=sys.stderr)
      result = _subprocess_rows(
          ['--pairs', pair, '--modes', 'student,online_kd', '--windows', '1', '--steps', '1',
           '--warmup', '1', '--compile-cache', cache_dir],
          os.path.join(tmp, f'cache_{attempt}.json'))
      if 'error' in result:
        runs.append({'cache': attempt, 'error': result['error']})
        continue
      runs.append({'cache': attempt, 'process_wall_s': result['process_wall_s'],
                   'compile_s': {r['mode']: r['compile_s'] for r in result['rows']
                                 if r['framework'] == 'jaxkd'}})
  return {'pair': pair, 'mode': 'student', 'batch_sweep': sweep, 'devices': devices,
          'compile_cache': runs}


# --- the run -------------------------------------------------------------------------------

def run(args, *, command: str) -> dict:
  """Measures what `args` asks for; the result dict, also written to `args.json`.

  `command` is the command line recorded in the result."""
  load_before = load_average()
  import jax
  if args.process_id is not None:  # one of several processes (benchmarks/processes.py)
    from jaxkd import distributed
    distributed.initialize(args.coordinator, args.processes, args.process_id)
  if args.devices:
    # Must precede the backend's start (nothing above touches a device); CPU only.
    jax.config.update('jax_num_cpu_devices', args.devices)
    if args.devices > 1:
      # With many fake devices on few cores and steps queued asynchronously, XLA:CPU's
      # all-reduce can miss its rendezvous deadline and abort; dispatch one step at a time.
      jax.config.update('jax_cpu_enable_async_dispatch', False)
  if args.compile_cache:
    jax.config.update('jax_compilation_cache_dir', args.compile_cache)
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
    jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
  import jax.numpy as jnp
  from jaxkd import ops
  from jaxkd.parallel import Parallel

  # Several processes: the mesh spans every process's devices (`--devices` is per process).
  parallel = Parallel(num_devices=None if jax.process_count() > 1 else args.devices)
  jax_device = jax.devices()[0].device_kind
  peer_module = load_peer() if args.peer == 'torch' else None
  torch_device = 'cpu'
  if peer_module is not None:
    import torch
    if jax.default_backend() == 'gpu' and torch.cuda.is_available():
      torch_device = 'cuda'
    peer_module.set_threads()
  peak_dtype = jnp.bfloat16 if args.dtype == 'bfloat16' else jnp.float32
  peak = measure_peak(peak_dtype, repeats=3 if args.quick else 10)
  print(f'{jax_device}: {args.dtype} matmul peak {peak / 1e9:.1f} GFLOP/s; '
        f'load average {load_before:.2f}', file=sys.stderr)

  rows = run_rows(args, pairs=args.pairs, modes=args.modes, batch_size=args.batch_size,
                  peer_module=peer_module, peak=peak, parallel=parallel,
                  jax_device=jax_device, torch_device=torch_device)
  peak_after = measure_peak(peak_dtype, repeats=3 if args.quick else 10)
  if peak_after > peak:  # rows were divided by the lower figure; rescale their MFU
    for row in rows:
      row['mfu'] *= peak / peak_after
    peak = peak_after
  # The speed targets are float32's; bfloat16 rows are reported beside them, not targeted.
  checks = check_targets(rows) if args.dtype == 'float32' else []
  from jaxkd.recipes.provenance import cpu_isa, cpu_model  # pylint: disable=g-import-not-at-top
  result = {
      'command': command,
      'date': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
      'cpu_model': cpu_model(),
      'cpu_isa': cpu_isa(),
      'cores': os.cpu_count(),
      'device': jax_device,
      'backend': jax.default_backend(),
      'num_devices': parallel.size,
      'processes': jax.process_count(),
      'jax_version': jax.__version__,
      'torch_version': None,
      'python': platform.python_version(),
      'dtype': args.dtype,
      'peak_flops_per_s': peak,
      'conv_impl': ops.default().conv_impl,
      'pool_impl': ops.default().pool_impl,
      'load_average_before': load_before,
      'huge_pages': hostmem.huge_pages(),  # malloc's large blocks (jaxkd.accel.hostmem)
      'malloc': hostmem.malloc(),  # glibc, or a preloaded tcmalloc/jemalloc
      'rows': rows,
      'targets': checks,
  }
  if peer_module is not None:
    import torch
    result['torch_version'] = torch.__version__
    result['torch_threads'] = torch.get_num_threads()
    result['torch_build'] = torch_build()
    result['omp_wait_policy'] = os.environ.get('OMP_WAIT_POLICY')
  if args.scaling:
    write_json(args.json, result)  # the rows are safe even if a scaling run fails
    result['scaling'] = run_scaling(args, peer_module=peer_module, peak=peak, parallel=parallel,
                                    jax_device=jax_device, torch_device=torch_device)
  result['load_average_after'] = load_average()
  write_json(args.json, result)
  return result


def torch_build() -> dict:
  """PyTorch's version, CUDA version (None on a CPU build), CPU kernel capability, oneDNN
  availability and thread count."""
  import torch
  try:
    import torch.backends.cpu  # pylint: disable=g-import-not-at-top
    capability = getattr(torch.backends.cpu, 'get_cpu_capability', lambda: None)()
  except Exception:  # pylint: disable=broad-except
    capability = None
  try:
    import torch.backends.mkldnn  # pylint: disable=g-import-not-at-top
    mkldnn = bool(torch.backends.mkldnn.is_available())
  except Exception:  # pylint: disable=broad-except
    mkldnn = None
  return {'version': torch.__version__, 'cuda': torch.version.cuda,
          'cpu_capability': capability, 'mkldnn': mkldnn, 'threads': torch.get_num_threads()}


def results_path(kind: str) -> str:
  """Where `--json auto` writes: benchmarks/results/<kind>-<machine slug>.json."""
  from jaxkd.recipes.provenance import machine_slug  # pylint: disable=g-import-not-at-top
  return os.path.join(RESULTS_DIR, f'{kind}-{machine_slug()}.json')


def write_json(path: str | None, result: dict) -> None:
  import jax
  if not path or jax.process_index() != 0:
    return
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, 'w') as f:
    json.dump(result, f, indent=1)
    f.write('\n')
