"""Training and eval throughput of jaxkd's steps, with an optional eager-PyTorch peer.

    python benchmarks/throughput.py                       # all pairs and modes, table on stdout
    python benchmarks/throughput.py --quick               # MLP and LeNet, short windows (< 2 min)
    python benchmarks/throughput.py --peer torch --json benchmarks/results/cpu.json
    python benchmarks/throughput.py --pairs lenet --modes student,online_kd --batch-size 128
    python benchmarks/throughput.py --scaling --pairs lenet   # batch sweep, 1 vs 8 devices, cache

For each teacher -> student pair and each mode the script compiles the library's own step
(`make_train_step`, `make_distill_step`, `make_eval_step`, the transfer module's fine-tuning
step), runs it until warm, and times repeated windows of steps, each synchronised with
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
import dataclasses
import datetime
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

import numpy as np


@dataclasses.dataclass(frozen=True)
class Pair:
  teacher: str
  student: str
  input_shape: tuple[int, int, int]


PAIRS = {
    'mlp': Pair('mlp_1200', 'mlp_800', (28, 28, 1)),
    'lenet': Pair('lenet5', 'lenet5_half', (28, 28, 1)),
    'resnet': Pair('resnet56', 'resnet20', (32, 32, 3)),
}
MODES = ('student', 'online_kd', 'cached_kd', 'finetune', 'eval', 'teacher_forward')
NUM_CLASSES = 10
LEARNING_RATE = 0.05
# The peer's objective is written out in torch_peer.py with the same constants.
HARD_WEIGHT, SOFT_WEIGHT, TEMPERATURE = 0.5, 0.5, 4.0


def _parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--pairs', default=None,
                      help=f'comma-separated, from {sorted(PAIRS)} (default: all; --quick: '
                           'mlp,lenet)')
  parser.add_argument('--modes', default=','.join(MODES), help=f'comma-separated, from {MODES}')
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
                           'jaxkd.models.fastconv')
  parser.add_argument('--json', default=None, help='write the results here')
  parser.add_argument('--readme', default=None,
                      help='also write the tables into this Markdown file, between its '
                           '<!-- results|targets|scaling:begin/end --> markers')
  parser.add_argument('--from-json', default=None,
                      help='measure nothing: print (and with --readme, write) the tables of '
                           'this earlier --json file')
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args(argv)
  if args.pairs is None:
    args.pairs = 'mlp,lenet' if args.quick else ','.join(PAIRS)
  args.pairs = _names(args.pairs, PAIRS, 'pair')
  args.modes = _names(args.modes, MODES, 'mode')
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


# --- jaxkd cases ---------------------------------------------------------------------------

@dataclasses.dataclass
class JaxCase:
  """A compiled step and its arguments; the donated state is threaded through calls."""

  compiled: Callable
  args: list
  donate: bool
  compile_s: float
  flops: float
  param_count: int
  note: str = ''

  def run(self):
    out = self.compiled(*self.args)
    if self.donate:
      self.args[0] = out[0]
    return out

  def window(self, steps: int) -> float:
    import jax
    start = time.perf_counter()
    out = None
    for _ in range(steps):
      out = self.run()
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / steps


def _flops(compiled) -> float:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return float((cost or {}).get('flops', float('nan')))


def _finetune_step(student, tx_base, params, batch_stats, input_shape, parallel):
  """The frozen-backbone step of `jaxkd.transfer`: only `head` trains."""
  from jaxkd import transfer
  rules = dict(order=transfer.layer_order(student, input_shape=input_shape),
               trainable=transfer.METHODS['lp'])
  tx = transfer.partition_optimizer(lambda: tx_base, params, **rules)
  step = transfer.make_finetune_step(
      model=student, tx=tx, param_starts=transfer.unfreeze_steps(params, **rules),
      stats_starts=transfer.unfreeze_steps(batch_stats, **rules), parallel=parallel)
  return tx, step, 'jaxkd.transfer'


def make_jax_case(pair: Pair, mode: str, data: dict, *, dtype, parallel) -> JaxCase:
  """Builds, places and AOT-compiles the library step for (pair, mode)."""
  import jax
  import optax
  from jaxkd import losses, models
  from jaxkd.distill import make_distill_step
  from jaxkd.state import create_train_state, init_variables, model_variables
  from jaxkd.steps import make_eval_step, make_train_step

  overrides = {} if dtype is None else {'dtype': dtype}
  student = models.build(pair.student, num_classes=NUM_CLASSES, **overrides)
  teacher = models.build(pair.teacher, num_classes=NUM_CLASSES, **overrides)
  input_shape = (1,) + pair.input_shape
  tx = optax.sgd(LEARNING_RATE, momentum=0.9)
  batch = {'image': data['image'], 'label': data['label']}
  objective = losses.make_objective(hard_weight=HARD_WEIGHT, soft_weight=SOFT_WEIGHT,
                                    temperature=TEMPERATURE)
  donate = True
  note = ''
  if mode in ('online_kd', 'teacher_forward'):
    teacher_variables = init_variables(teacher, key=jax.random.key(1), input_shape=input_shape)
    teacher_variables = parallel.place_teacher(teacher_variables)
  if mode == 'teacher_forward':
    def forward(variables, batch, axis_name=None):
      del axis_name
      return teacher.apply(variables, batch['image'], train=False)
    step = parallel.compile(forward, donate=False)
    args = [teacher_variables, parallel.shard_batch(batch)]
    donate = False
    counted = teacher_variables['params']
  else:
    if mode == 'finetune':
      init = init_variables(student, key=jax.random.key(0), input_shape=input_shape)
      tx, step, note = _finetune_step(student, tx, init['params'],
                                      init.get('batch_stats', {}), input_shape, parallel)
    state = create_train_state(student, tx, seed=0, input_shape=input_shape)
    counted = state.params
    if mode == 'eval':
      step = make_eval_step(model=student, num_classes=NUM_CLASSES, parallel=parallel)
      args = [parallel.replicate(model_variables(state.params, state.batch_stats)),
              parallel.shard_batch(batch)]
      donate = False
    elif mode in ('student', 'finetune'):
      if mode == 'student':
        step = make_train_step(model=student, tx=tx, parallel=parallel)
      args = [parallel.replicate(state), parallel.shard_batch(batch)]
    elif mode == 'online_kd':
      step = make_distill_step(student=student, teachers=teacher, tx=tx, objective=objective,
                               parallel=parallel)
      args = [parallel.replicate(state), parallel.shard_batch(batch), teacher_variables]
    elif mode == 'cached_kd':
      step = make_distill_step(student=student, teachers=None, tx=tx, objective=objective,
                               parallel=parallel, cached=True)
      cached = dict(batch, teacher_logits=data['teacher_logits'])
      args = [parallel.replicate(state), parallel.shard_batch(cached), ()]
    else:
      raise ValueError(f'Unknown mode {mode!r}; choose one of {MODES}.')
  start = time.perf_counter()
  compiled = step.lower(*args).compile()
  compile_s = time.perf_counter() - start
  return JaxCase(compiled=compiled, args=args, donate=donate, compile_s=compile_s,
                 flops=_flops(compiled) * parallel.size,  # cost analysis is per device
                 param_count=models.param_count(counted), note=note)


# --- the PyTorch peer ----------------------------------------------------------------------

@dataclasses.dataclass
class TorchCase:
  peer: Any
  param_count: int

  def window(self, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
      self.peer.run()
    self.peer.sync()
    return (time.perf_counter() - start) / steps


def load_peer():
  """The torch_peer module, or None (with a message) when PyTorch is not installed.

  Unless set already, OMP_WAIT_POLICY=PASSIVE: PyTorch's OpenMP threads otherwise spin for
  200 ms after each parallel region, which takes the cores from jaxkd's next window in
  this interleaved run, and makes PyTorch itself ~10x slower whenever another process
  wants a core (measured here: MLP step 14 ms idle, 245 ms at load average 7; 26 ms with
  PASSIVE).
  """
  os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')
  try:
    import torch  # noqa: F401
  except ImportError:
    print('PyTorch is not installed; skipping the peer rows '
          '(pip install "jaxkd[bench]" to add them).', file=sys.stderr)
    return None
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  import torch_peer
  return torch_peer


def make_torch_case(torch_peer, pair: Pair, mode: str, data: dict, *, device: str) -> TorchCase:
  peer = torch_peer.Peer(teacher=pair.teacher, student=pair.student, mode=mode,
                         images_nhwc=data['image'], labels=data['label'],
                         teacher_logits=data['teacher_logits'], learning_rate=LEARNING_RATE,
                         device=device)
  return TorchCase(peer=peer, param_count=peer.param_count)


# --- measuring -----------------------------------------------------------------------------

def make_data(pair: Pair, batch_size: int, seed: int) -> dict:
  rng = np.random.default_rng(seed)
  return {
      'image': rng.normal(size=(batch_size,) + pair.input_shape).astype(np.float32),
      'label': rng.integers(0, NUM_CLASSES, batch_size).astype(np.int32),
      'teacher_logits': rng.normal(size=(batch_size, NUM_CLASSES)).astype(np.float32),
  }


def _steps_per_window(case, args) -> int:
  if args.steps:
    return args.steps
  estimate = min(case.window(1) for _ in range(2))
  return int(np.clip(round(args.window_seconds / max(estimate, 1e-6)), 1, 200))


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
    data = make_data(pair, batch_size, args.seed)
    related, related_rows = {}, {}
    for mode in modes:
      cases = {'jaxkd': make_jax_case(pair, mode, data, dtype=dtype, parallel=parallel)}
      if mode in RELATED_MODES:
        related[mode] = cases['jaxkd']
      if args.baseline_layers and pair_name != 'mlp':
        cases[BASELINE] = _with_xla_layers(
            lambda: make_jax_case(pair, mode, data, dtype=dtype, parallel=parallel))
      if peer_module is not None:
        cases['pytorch'] = make_torch_case(peer_module, pair, mode, data, device=torch_device)
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
      if BASELINE in new:
        new['jaxkd']['vs_xla_layers'] = (new['jaxkd']['examples_per_s'] /
                                         new[BASELINE]['examples_per_s'])
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
RELATED_MODES = ('student', 'online_kd', 'cached_kd', 'teacher_forward')


BASELINE = 'jaxkd-xla-layers'


def _with_xla_layers(build: Callable):
  """Builds (and so traces) a case with XLA's native convolution and pooling."""
  from jaxkd.models import layers
  saved = layers.CONV_IMPL, layers.POOL_IMPL
  layers.CONV_IMPL, layers.POOL_IMPL = 'xla', 'xla'
  try:
    return build()
  finally:
    layers.CONV_IMPL, layers.POOL_IMPL = saved


def _progress(rows) -> str:
  parts = [f'{r["framework"]} {r["examples_per_s"]:.0f} ex/s ({r["step_ms"]:.1f} ms)' for r in rows]
  return f'  {rows[0]["pair"]:7s} {rows[0]["mode"]:16s} ' + ', '.join(parts)


# --- targets and tables --------------------------------------------------------------------

def check_targets(rows: list[dict]) -> list[dict]:
  """The issue's targets, each with the figure reached."""
  jax_rows = {(r['pair'], r['mode']): r for r in rows if r['framework'] == 'jaxkd'}
  checks = []
  for (pair, mode), row in jax_rows.items():
    if 'vs_pytorch' in row and mode != 'teacher_forward':
      goal = 1.5 if pair == 'mlp' else 1.0
      checks.append({'target': f'{pair}/{mode}: jaxkd >= {goal}x PyTorch',
                     'value': row['vs_pytorch'], 'goal': goal,
                     'passed': row['vs_pytorch'] >= goal})
  for pair in {p for p, _ in jax_rows}:
    student = jax_rows.get((pair, 'student'))
    cached = jax_rows.get((pair, 'cached_kd'))
    online = jax_rows.get((pair, 'online_kd'))
    teacher = jax_rows.get((pair, 'teacher_forward'))
    ms = lambda row: row.get('step_ms_interleaved', row['step_ms'])
    if student and cached:
      ratio = ms(cached) / ms(student)
      checks.append({'target': f'{pair}: cached_kd step <= 1.05x student step',
                     'value': ratio, 'goal': 1.05, 'passed': ratio <= 1.05})
    if student and online and teacher:
      ratio = ms(online) / (ms(student) + ms(teacher))
      checks.append({'target': f'{pair}: online_kd step <= 1.05x (student + teacher forward)',
                     'value': ratio, 'goal': 1.05, 'passed': ratio <= 1.05})
  return checks


def markdown_table(rows: list[dict]) -> str:
  jax_rows = [r for r in rows if r['framework'] == 'jaxkd']
  by_key = {(r['framework'], r['pair'], r['mode'], r['batch_size']): r for r in rows}
  baseline = any(r['framework'] == BASELINE for r in rows)
  header = ('| pair | mode | batch | jaxkd ex/s | jaxkd ms | PyTorch ex/s | jaxkd/PyTorch | '
            'GFLOP/step | MFU jaxkd | MFU PyTorch | compile s |')
  rule = '|---|---|---|---|---|---|---|---|---|---|---|'
  if baseline:
    header += ' XLA layers ex/s | fastconv speed-up |'
    rule += '---|---|'
  lines = [header, rule]
  for r in jax_rows:
    key = (r['pair'], r['mode'], r['batch_size'])
    t = by_key.get(('pytorch',) + key)
    line = (
        f"| {r['pair']} ({r['teacher']} -> {r['student']}) | {r['mode']} | {r['batch_size']} "
        f"| {r['examples_per_s']:,.0f} | {r['step_ms']:.2f} "
        f"| {'' if t is None else format(t['examples_per_s'], ',.0f')} "
        f"| {'' if t is None else format(r['vs_pytorch'], '.2f') + 'x'} "
        f"| {r['flops_per_step'] / 1e9:.2f} | {100 * r['mfu']:.1f} % "
        f"| {'' if t is None else format(100 * t['mfu'], '.1f') + ' %'} "
        f"| {r['compile_s']:.1f} |")
    if baseline:
      b = by_key.get((BASELINE,) + key)
      line += (f" {'' if b is None else format(b['examples_per_s'], ',.0f')} "
               f"| {'' if b is None else format(r['vs_xla_layers'], '.2f') + 'x'} |")
    lines.append(line)
  return '\n'.join(lines)


def checks_table(checks: list[dict]) -> str:
  lines = ['| target | reached | met |', '|---|---|---|']
  for c in checks:
    lines.append(f"| {c['target']} | {c['value']:.3f} | {'yes' if c['passed'] else 'NO'} |")
  return '\n'.join(lines)


# --- scaling and start-up ------------------------------------------------------------------

def _subprocess_rows(extra: list[str], json_path: str, *, attempts: int = 2) -> dict:
  """Runs this script in a fresh process; its JSON, or {'error': ...} after `attempts`.

  A fresh process because the device count and the compilation cache are fixed when JAX's
  backend starts. Retried once: with 8 fake devices on 2 cores, XLA:CPU's all-reduce can
  miss its 40 s rendezvous deadline when the threads are starved, and aborts.
  """
  command = [sys.executable, os.path.abspath(__file__), *extra, '--json', json_path]
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


def scaling_tables(scaling: dict) -> str:
  lines = [f"Batch sweep ({scaling['pair']}, student step):", '',
           '| batch | jaxkd ex/s | XLA layers ex/s | PyTorch ex/s | jaxkd/PyTorch | MFU jaxkd |',
           '|---|---|---|---|---|---|']
  sweep = {(r['framework'], r['batch_size']): r for r in scaling['batch_sweep']}
  for r in scaling['batch_sweep']:
    if r['framework'] != 'jaxkd':
      continue
    t = sweep.get(('pytorch', r['batch_size']))
    b = sweep.get((BASELINE, r['batch_size']))
    lines.append(f"| {r['batch_size']} | {r['examples_per_s']:,.0f} | "
                 f"{'' if b is None else format(b['examples_per_s'], ',.0f')} | "
                 f"{'' if t is None else format(t['examples_per_s'], ',.0f')} | "
                 f"{'' if t is None else format(r['vs_pytorch'], '.2f') + 'x'} | "
                 f"{100 * r['mfu']:.1f} % |")
  lines += ['', 'Devices (same global batch):', '', '| devices | step ms | ex/s | compile s |',
            '|---|---|---|---|']
  for d in scaling['devices']:
    if 'error' in d:
      lines.append(f"| {d['devices']} | failed: {d['error']} | | |")
      continue
    lines.append(f"| {d['devices']} | {d['step_ms']:.2f} | {d['examples_per_s']:,.0f} | "
                 f"{d['compile_s']:.2f} |")
  lines += ['', 'Persistent compilation cache (two fresh processes):', '',
            '| cache | compile s per mode | process wall s |', '|---|---|---|']
  for run in scaling['compile_cache']:
    if 'error' in run:
      lines.append(f"| {run['cache']} | failed: {run['error']} | |")
      continue
    modes = ', '.join(f'{m} {s:.2f}' for m, s in run['compile_s'].items())
    lines.append(f"| {run['cache']} | {modes} | {run['process_wall_s']:.1f} |")
  return '\n'.join(lines)


# --- main ----------------------------------------------------------------------------------

def summary_line(result: dict) -> str:
  return (f"`{result['command']}`  \n{result['date']}, {result['cpu_model']}, "
          f"{result['cores']} cores, jax {result['jax_version']}"
          + (f", torch {result['torch_version']}" if result.get('torch_version') else '')
          + f", peak {result['peak_flops_per_s'] / 1e9:.1f} GFLOP/s, conv "
          f"{result['conv_impl']}, pool {result['pool_impl']}, load average "
          f"{result['load_average_before']:.2f} before, "
          f"{result.get('load_average_after', float('nan')):.2f} after.")


def replace_blocks(path: str, blocks: dict[str, str]) -> None:
  """Writes each block's text between `<!-- NAME:begin -->` and `<!-- NAME:end -->` lines of
  the Markdown file `path`; the file is left untouched if any marker pair is missing."""
  with open(path) as f:
    text = f.read()
  for name, body in blocks.items():
    pattern = re.compile(rf'(<!-- {name}:begin -->\n)(?:.*?\n)?(<!-- {name}:end -->)', re.S)
    if not pattern.search(text):
      raise ValueError(f'{path} has no <!-- {name}:begin --> ... <!-- {name}:end --> '
                       f'block; add one where the {name} table belongs.')
    text = pattern.sub(lambda m, body=body: m.group(1) + body + '\n' + m.group(2), text)
  with open(path, 'w') as f:
    f.write(text)


def render(result: dict, readme: str | None = None) -> str:
  """The run's tables as Markdown; with `readme`, also written between its markers."""
  blocks = {'results': summary_line(result) + '\n\n' + markdown_table(result['rows']),
            'targets': checks_table(result['targets']) if result['targets'] else '(none)'}
  if result.get('scaling'):
    blocks['scaling'] = scaling_tables(result['scaling'])
  if readme:
    replace_blocks(readme, blocks)
  return '\n\n'.join(blocks.values())


def main(argv=None) -> dict:
  args = _parse_args(argv)
  if args.from_json:
    with open(args.from_json) as f:
      result = json.load(f)
    print(render(result, args.readme))
    return result
  load_before = load_average()
  import jax
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
  from jaxkd.models import layers
  from jaxkd.parallel import Parallel

  parallel = Parallel(num_devices=args.devices)
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
  checks = check_targets(rows)
  from jaxkd.sweep import cpu_model  # pylint: disable=g-import-not-at-top
  result = {
      'command': ' '.join(shlex.quote(a) for a in [os.path.relpath(__file__)] +
                          list(sys.argv[1:] if argv is None else argv)),
      'date': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
      'cpu_model': cpu_model(),
      'cores': os.cpu_count(),
      'device': jax_device,
      'backend': jax.default_backend(),
      'num_devices': parallel.size,
      'jax_version': jax.__version__,
      'torch_version': None,
      'python': platform.python_version(),
      'dtype': args.dtype,
      'peak_flops_per_s': peak,
      'conv_impl': layers.conv_impl(),
      'pool_impl': layers.pool_impl(),
      'load_average_before': load_before,
      'rows': rows,
      'targets': checks,
  }
  if peer_module is not None:
    import torch
    result['torch_version'] = torch.__version__
    result['torch_threads'] = torch.get_num_threads()
    result['omp_wait_policy'] = os.environ.get('OMP_WAIT_POLICY')
  if args.scaling:
    write_json(args.json, result)  # the rows are safe even if a scaling run fails
    result['scaling'] = run_scaling(args, peer_module=peer_module, peak=peak, parallel=parallel,
                                    jax_device=jax_device, torch_device=torch_device)
  result['load_average_after'] = load_average()
  write_json(args.json, result)
  print('\n' + render(result, args.readme))
  return result


def write_json(path: str | None, result: dict) -> None:
  if not path:
    return
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, 'w') as f:
    json.dump(result, f, indent=1)
    f.write('\n')


if __name__ == '__main__':
  main()
