"""The tables of a `throughput.py` result: the targets checked, the rows, the scaling runs,
as Markdown, printed or written between a README's markers."""
from __future__ import annotations

import glob
import json
import os
import re

from cases import BASELINE, BASELINES, METHOD_MODES


# --- targets and tables --------------------------------------------------------------------

def check_targets(rows: list[dict]) -> list[dict]:
  """The issue's targets, each with the figure reached."""
  jax_rows = {(r['pair'], r['mode']): r for r in rows if r['framework'] == 'jaxkd'}
  checks = []
  for (pair, mode), row in jax_rows.items():
    if 'vs_pytorch' in row and mode != 'teacher_forward':
      goal = 1.0  # issue 19: every pair at least as fast as eager PyTorch
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
    for mode in METHOD_MODES:  # a method's step over plain online KD's
      method = jax_rows.get((pair, mode))
      if online and method:
        # Logit terms add little to the step; feature and relation terms (taps, projectors,
        # memory banks) may add up to 1.2x (fitnet, at) or 1.3x (the feature family).
        goal = (1.05 if mode in ('dkd', 'dist', 'ctkd') else
                1.2 if mode in ('fitnet', 'at') else 1.3)
        ratio = ms(method) / ms(online)
        checks.append({'target': f'{pair}: {mode} step <= {goal}x online_kd step',
                       'value': ratio, 'goal': goal, 'passed': ratio <= goal})
  return checks


def markdown_table(rows: list[dict]) -> str:
  jax_rows = [r for r in rows if r['framework'] == 'jaxkd']
  by_key = {(r['framework'], r['pair'], r['mode'], r['batch_size']): r for r in rows}
  present = {r['framework'] for r in rows}
  baselines = [(framework, *spec[1:]) for framework, spec in BASELINES.items()
               if framework in present]
  header = ('| pair | mode | batch | jaxkd ex/s | jaxkd ms | PyTorch ex/s | jaxkd/PyTorch | '
            'GFLOP/step | MFU jaxkd | MFU PyTorch | compile s |')
  rule = '|---|---|---|---|---|---|---|---|---|---|---|'
  for _, _, throughput, speed_up in baselines:
    header += f' {throughput} | {speed_up} |'
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
    for framework, ratio, _, _ in baselines:
      b = by_key.get((framework,) + key)
      line += (f" {'' if b is None else format(b['examples_per_s'], ',.0f')} "
               f"| {'' if b is None else format(r[ratio], '.2f') + 'x'} |")
    lines.append(line)
  return '\n'.join(lines)


def checks_table(checks: list[dict]) -> str:
  lines = ['| target | reached | met |', '|---|---|---|']
  for c in checks:
    lines.append(f"| {c['target']} | {c['value']:.3f} | {'yes' if c['passed'] else 'NO'} |")
  return '\n'.join(lines)


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


def machines_table(results_dir: str) -> str:
  """jaxkd/PyTorch per row on every machine with a float32 run (`cpu-<machine>.json`)."""
  runs = []
  for path in sorted(glob.glob(os.path.join(results_dir, 'cpu-*.json'))):
    with open(path) as f:
      result = json.load(f)
    if result.get('dtype', 'float32') == 'float32' and result.get('torch_version'):
      runs.append((os.path.basename(path), result))
  if not runs:
    return '(no float32 run with the PyTorch peer)'
  ratios = [{(r['pair'], r['mode']): r['vs_pytorch'] for r in result['rows']
             if r['framework'] == 'jaxkd' and 'vs_pytorch' in r} for _, result in runs]
  keys = dict.fromkeys(key for run in ratios for key in run)  # first-seen order
  lines = ['| pair | mode | ' + ' | '.join(
               f"{result['cpu_model']}{isa_suffix(result)}, {result['date'][:10]} "
               f"(`{name}`)" for name, result in runs) + ' |',
           '|---|---|' + '---|' * len(runs)]
  for pair, mode in keys:
    cells = [f'{r[(pair, mode)]:.2f}x' if (pair, mode) in r else '' for r in ratios]
    lines.append(f'| {pair} | {mode} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


# --- rendering -----------------------------------------------------------------------------

def isa_suffix(result: dict) -> str:
  """', ISA' (e.g. ', AVX-512') where the result records the CPU's instruction set."""
  return f", {result['cpu_isa']['isa']}" if result.get('cpu_isa') else ''


def _torch(result: dict) -> str:
  """', torch VERSION', with its build where recorded: '(CPU build, cpu capability AVX512)'."""
  if not result.get('torch_version'):
    return ''
  build = result.get('torch_build')
  if not build:
    return f", torch {result['torch_version']}"
  kind = f"CUDA {build['cuda']} build" if build.get('cuda') else 'CPU build'
  capability = (f", cpu capability {build['cpu_capability']}" if build.get('cpu_capability')
                else '')
  return f", torch {build['version'].split('+')[0]} ({kind}{capability})"


def summary_line(result: dict) -> str:
  return (f"`{result['command']}`  \n{result['date']}, {result['cpu_model']}{isa_suffix(result)}, "
          f"{result['cores']} cores, jax {result['jax_version']}" + _torch(result)
          + f", peak {result['peak_flops_per_s'] / 1e9:.1f} GFLOP/s, conv "
          f"{result['conv_impl']}, pool {result['pool_impl']}" + _memory(result)
          + f", load average {result['load_average_before']:.2f} before, "
          f"{result.get('load_average_after', float('nan')):.2f} after.")


def _memory(result: dict) -> str:
  """', malloc tcmalloc' / ', huge pages on', where the run recorded them (jaxkd.accel.hostmem)."""
  if result.get('malloc', 'glibc') != 'glibc':
    return f", malloc {result['malloc']}"
  return f", huge pages {result['huge_pages'].split(' (')[0]}" if 'huge_pages' in result else ''


def _has_block(path: str, name: str) -> bool:
  with open(path) as f:
    return f'<!-- {name}:begin -->' in f.read()


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
  """The run's tables as Markdown; with `readme`, also written between its markers.

  A float32 run fills the `results` and `targets` blocks; another dtype's run (reported,
  not targeted) fills its own block, e.g. `results-bfloat16`, and leaves those alone."""
  table = summary_line(result) + '\n\n' + markdown_table(result['rows'])
  if result.get('dtype', 'float32') != 'float32':
    blocks = {f"results-{result['dtype']}": table}
  else:
    blocks = {'results': table,
              'targets': checks_table(result['targets']) if result['targets'] else '(none)'}
    if readme and _has_block(readme, 'machines'):  # every machine's ratios, from the
      # result files beside this README
      blocks['machines'] = machines_table(os.path.join(os.path.dirname(readme), 'results'))
  if result.get('scaling'):
    blocks['scaling'] = scaling_tables(result['scaling'])
  if readme:
    replace_blocks(readme, blocks)
  return '\n\n'.join(blocks.values())
