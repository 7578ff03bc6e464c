"""The throughput harness runs end to end and writes the documented JSON (peer optional)."""
import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest

from jaxkd.recipes.provenance import cpu_isa, machine_slug

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, 'benchmarks', 'throughput.py')
ROW_TYPES = {'pair': str, 'mode': str, 'framework': str, 'batch_size': int,
             'examples_per_s': float, 'step_ms': float, 'flops_per_step': float,
             'mfu': float, 'device': str}
ISAS = {'AMX', 'AVX-512', 'AVX2', 'SSE4.2', 'baseline', 'unknown'}
TOP_TYPES = {'command': str, 'date': str, 'cpu_model': str, 'cores': int, 'jax_version': str,
             'peak_flops_per_s': float, 'rows': list, 'targets': list, 'huge_pages': str,
             'malloc': str}


def _env():
  env = dict(os.environ)
  # One CPU device, as a user would run it; compiled at XLA's level 0 like the rest of the
  # suite (conftest.py): these tests check what is measured and written, not the speed.
  env['XLA_FLAGS'] = '--xla_backend_optimization_level=0'
  env['JAX_PLATFORMS'] = 'cpu'
  return env


def _positive(value):
  return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def _check_rows(result, modes, batch_size):
  for key, kind in TOP_TYPES.items():
    assert isinstance(result[key], kind), key
  assert result['peak_flops_per_s'] > 1e8
  rows = result['rows']
  jax_rows = [r for r in rows if r['framework'] == 'jaxkd']
  assert [r['mode'] for r in jax_rows] == modes
  for row in rows:
    for key, kind in ROW_TYPES.items():
      assert isinstance(row[key], kind), (key, row[key])
    assert row['batch_size'] == batch_size
    for key in ('examples_per_s', 'step_ms', 'flops_per_step', 'mfu'):
      assert _positive(row[key]), (key, row[key])
    # examples/s and step time describe the same median window
    assert row['examples_per_s'] == pytest.approx(1e3 * batch_size / row['step_ms'])
    assert row['mfu'] == pytest.approx(
        row['flops_per_step'] / (row['step_ms'] / 1e3) / result['peak_flops_per_s'])
  for row in jax_rows:
    assert _positive(row['compile_s'])
    assert row['param_count'] == 1_276_810  # mlp_800: 784*800+800 + 800*800+800 + 800*10+10
  torch_rows = [r for r in rows if r['framework'] == 'pytorch']
  if torch_rows:
    assert [r['mode'] for r in torch_rows] == modes
    for jax_row, torch_row in zip(jax_rows, torch_rows):
      assert jax_row['vs_pytorch'] == pytest.approx(
          jax_row['examples_per_s'] / torch_row['examples_per_s'])
      assert torch_row['flops_per_step'] == jax_row['flops_per_step']


@pytest.mark.slow
def test_quick_run_writes_the_json_schema(tmp_path):
  out = tmp_path / 'bench.json'
  modes = ['student', 'cached_kd', 'eval']
  proc = subprocess.run(
      [sys.executable, SCRIPT, '--quick', '--pairs', 'mlp', '--modes', ','.join(modes),
       '--batch-size', '32', '--windows', '2', '--steps', '2', '--warmup', '1',
       '--peer', 'torch', '--json', str(out)],
      cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(out.read_text())
  _check_rows(result, modes, 32)
  assert '| mlp (mlp_1200 -> mlp_800) | student | 32 |' in proc.stdout
  targets = {t['target'] for t in result['targets']}
  assert 'mlp: cached_kd step <= 1.05x student step' in targets
  # --from-json re-renders the tables into a README's marked blocks, measuring nothing
  readme = tmp_path / 'README.md'
  readme.write_text('intro\n<!-- results:begin -->\nold\n<!-- results:end -->\nmiddle\n'
                    '<!-- targets:begin -->\n<!-- targets:end -->\nend\n')
  proc = subprocess.run([sys.executable, SCRIPT, '--from-json', str(out), '--readme',
                         str(readme)], cwd=ROOT, env=_env(), capture_output=True, text=True,
                        timeout=60)
  assert proc.returncode == 0, proc.stderr[-3000:]
  text = readme.read_text()
  assert 'old' not in text and text.startswith('intro\n') and text.endswith('\nend\n')
  results = text.split('<!-- results:begin -->\n')[1].split('\n<!-- results:end -->')[0]
  assert result['command'] in results
  assert '| mlp (mlp_1200 -> mlp_800) | student | 32 |' in results
  assert 'mlp: cached_kd step <= 1.05x student step' in text.split('<!-- targets:begin -->')[1]
  readme.write_text('no markers\n')
  proc = subprocess.run([sys.executable, SCRIPT, '--from-json', str(out), '--readme',
                         str(readme)], cwd=ROOT, env=_env(), capture_output=True, text=True,
                        timeout=60)
  assert proc.returncode != 0 and 'no <!-- results:begin -->' in proc.stderr
  assert readme.read_text() == 'no markers\n'  # left as it was


@pytest.mark.slow
def test_gpu_script_tiny_mode_runs_on_cpu(tmp_path):
  env = _env()
  env['JAXKD_BENCH_OUT'] = str(tmp_path)
  env['PYTHON'] = sys.executable
  proc = subprocess.run(['bash', os.path.join(ROOT, 'benchmarks', 'gpu.sh'), '--tiny'],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-3000:]
  # on a CPU, named per machine as `throughput.py --dtype bfloat16 --json auto` names it
  result = json.loads((tmp_path / f'cpu-bfloat16-{machine_slug()}.json').read_text())
  _check_rows(result, ['student', 'cached_kd', 'eval'], 64)
  assert result['backend'] == 'cpu' and result['dtype'] == 'bfloat16'
  assert result['cpu_isa']['isa'] in ISAS and isinstance(result['cpu_isa']['flags'], list)


def test_machine_slug_names_the_cpu_for_a_file():
  assert machine_slug('AMD EPYC') == 'amd-epyc'
  assert machine_slug('Intel(R) Xeon(R) Processor') == 'intel-xeon'
  assert machine_slug('Intel(R) Xeon(R) Platinum 8488C') == 'intel-xeon-platinum-8488c'
  assert machine_slug('Intel(R) Core(TM) i7-8700 CPU @ 3.20GHz') == 'intel-core-i7-8700'


def test_cpu_isa_reads_the_flags_line():
  def info(flags):
    return f'processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: {flags}\nbugs\t\t: spectre\n'
  sapphire = info('fpu sse4_2 avx avx2 fma avx512f avx512bw avx512vl avx512_vnni avx512_bf16 '
                  'avx512_fp16 amx_bf16 amx_tile amx_int8 avx512dq')
  assert cpu_isa(sapphire) == {
      'isa': 'AMX', 'flags': ['amx_bf16', 'amx_int8', 'amx_tile', 'avx2', 'avx512_bf16',
                              'avx512_fp16', 'avx512_vnni', 'avx512bw', 'avx512f', 'avx512vl',
                              'fma']}
  assert cpu_isa(info('sse4_2 avx avx2 fma avx512f avx512bw'))['isa'] == 'AVX-512'
  assert cpu_isa(info('sse4_2 avx avx2 fma')) == {'isa': 'AVX2', 'flags': ['avx2', 'fma']}
  assert cpu_isa(info('sse4_1 sse4_2')) == {'isa': 'SSE4.2', 'flags': []}
  assert cpu_isa(info('fpu sse2')) == {'isa': 'baseline', 'flags': []}
  assert cpu_isa('Features\t: fp asimd\n') == {'isa': 'unknown', 'flags': []}  # e.g. arm64
  assert cpu_isa('') == {'isa': 'unknown', 'flags': []}
  assert cpu_isa()['isa'] in ISAS  # this machine's


def _report(monkeypatch):
  monkeypatch.syspath_prepend(os.path.join(ROOT, 'benchmarks'))  # report.py imports cases
  spec = importlib.util.spec_from_file_location(
      'bench_report', os.path.join(ROOT, 'benchmarks', 'report.py'))
  report = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(report)
  return report


def test_summary_line_names_the_isa_and_torch_build_where_recorded(monkeypatch):
  report = _report(monkeypatch)
  with open(os.path.join(ROOT, 'benchmarks', 'results', 'cpu-amd-epyc.json')) as f:
    recorded = json.load(f)
  # a record from before cpu_isa and torch_build were kept: nothing extra
  old = {k: v for k, v in recorded.items() if k not in ('cpu_isa', 'torch_build')}
  line = report.summary_line(old)
  assert ', AMD EPYC, 2 cores, jax ' in line and f", torch {old['torch_version']}, " in line
  new = dict(old, cpu_isa={'isa': 'AVX-512', 'flags': ['avx2', 'avx512f']},
             torch_build={'version': '2.13.0+cpu', 'cuda': None, 'cpu_capability': 'AVX512',
                          'mkldnn': True, 'threads': 2})
  line = report.summary_line(new)
  assert ', AMD EPYC, AVX-512, 2 cores, ' in line
  assert ', torch 2.13.0 (CPU build, cpu capability AVX512), ' in line
  new['torch_build'] = dict(new['torch_build'], cuda='12.8', cpu_capability=None)
  assert ', torch 2.13.0 (CUDA 12.8 build), ' in report.summary_line(new)
  # the allocator (jaxkd.accel.hostmem): a preloaded one by name, glibc by its huge pages
  assert ', malloc tcmalloc, load average ' in report.summary_line(dict(new, malloc='tcmalloc'))
  glibc = dict(new, malloc='glibc', huge_pages='off (GLIBC_TUNABLES lacks x)')
  assert ', huge pages off, load average ' in report.summary_line(glibc)
  del glibc['malloc'], glibc['huge_pages']
  assert ', pool reshape, load average ' in report.summary_line(glibc)


def _row(pair, mode, framework, examples_per_s, **extra):
  return dict(pair=pair, mode=mode, framework=framework, examples_per_s=examples_per_s,
              **extra)


def test_machines_table_and_bfloat16_block(monkeypatch, tmp_path):
  report = _report(monkeypatch)
  results = tmp_path / 'results'
  results.mkdir()
  run = dict(cpu_model='CPU A', date='2026-01-02T00:00:00', dtype='float32',
             torch_version='2.14', rows=[
                 _row('lenet', 'student', 'jaxkd', 2.0, vs_pytorch=0.5),
                 _row('lenet', 'student', 'pytorch', 4.0),
                 _row('lenet', 'eval', 'jaxkd', 3.0, vs_pytorch=1.5)])
  other = dict(run, cpu_model='CPU B', cpu_isa={'isa': 'AMX', 'flags': []},
               rows=[_row('lenet', 'student', 'jaxkd', 1.0, vs_pytorch=1.25)])
  for name, result in (('cpu-a.json', run), ('cpu-b.json', other),
                       ('cpu-bfloat16-a.json', dict(run, dtype='bfloat16')),  # not a column
                       ('methods-a.json', run)):  # not a cpu-* run
    (results / name).write_text(json.dumps(result))
  table = report.machines_table(str(results)).splitlines()
  assert table[0] == ('| pair | mode | CPU A, 2026-01-02 (`cpu-a.json`) | '
                      'CPU B, AMX, 2026-01-02 (`cpu-b.json`) |')
  assert table[2:] == ['| lenet | student | 0.50x | 1.25x |', '| lenet | eval | 1.50x |  |']
  # A bfloat16 run fills its own block and leaves the float32 tables alone.
  readme = tmp_path / 'README.md'
  blocks = ('results', 'targets', 'machines', 'results-bfloat16')
  readme.write_text(''.join(f'<!-- {b}:begin -->\nold {b}\n<!-- {b}:end -->\n'
                            for b in blocks))
  bf16 = dict(run, dtype='bfloat16', command='x', cores=2, jax_version='0.10',
              peak_flops_per_s=1e9, conv_impl='fast', pool_impl='reshape',
              load_average_before=0.5, load_average_after=0.5, targets=[],
              rows=[dict(_row('lenet', 'student', 'jaxkd', 2.0), teacher='t', student='s',
                         batch_size=256, step_ms=1.0, flops_per_step=1e9, mfu=0.1,
                         compile_s=1.0)])
  report.render(bf16, str(readme))
  text = readme.read_text()
  assert 'old results\n' in text and 'old targets\n' in text and 'old machines\n' in text
  assert 'old results-bfloat16' not in text and '| lenet (t -> s) | student | 256 |' in text


def test_unknown_pair_is_refused_with_the_valid_names():
  proc = subprocess.run([sys.executable, SCRIPT, '--pairs', 'vgg'], cwd=ROOT, env=_env(),
                        capture_output=True, text=True, timeout=60)
  assert proc.returncode != 0
  assert "['lenet', 'mlp', 'resnet']" in proc.stderr


def test_epoch_overhead_compares_an_epoch_with_its_steps(tmp_path):
  out = tmp_path / 'epoch.json'
  proc = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'benchmarks', 'epoch_overhead.py'), '--pairs', 'mlp',
       '--examples', '1024', '--batch-size', '128', '--repeats', '1', '--json', str(out)],
      cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-3000:]
  (row,) = json.loads(out.read_text())['rows']
  assert row['steps_per_epoch'] == 8 and row['pair'] == 'mlp'
  assert row['sum_of_steps_s'] == pytest.approx(8 * row['step_ms'] / 1e3)
  assert row['ratio'] == pytest.approx(row['epoch_s'] / row['sum_of_steps_s'])
  assert '| mlp (mlp_800) | 128 | 8 |' in proc.stdout
  assert json.loads(out.read_text())['cpu_isa']['isa'] in ISAS


def test_pytorch_lm_peer_is_the_same_transformer():
  """jaxkd's parameters loaded into the PyTorch peer give the same logits: same layers,
  rotary convention, LayerNorm epsilon, GELU form and tied output layer."""
  torch = pytest.importorskip('torch')
  import jax
  import numpy as np
  sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))
  import torch_lm_peer
  from jaxkd import models
  vocab, length = 40, 12
  model = models.build('lm_student', num_classes=vocab, max_len=length)
  variables = model.init(jax.random.key(0), np.zeros((1, length), np.int32))
  rng = np.random.default_rng(0)  # LayerNorm off 1/0 and every bias non-zero
  variables = jax.tree.map(lambda a: a + 0.1 * rng.standard_normal(a.shape).astype(np.float32),
                           variables)
  tokens = rng.integers(0, vocab, (3, length))
  peer = torch_lm_peer.load_jax_params(torch_lm_peer.build('lm_student', vocab),
                                       variables['params'])
  assert torch_lm_peer.param_count(peer) == models.param_count(variables['params'])
  with torch.no_grad():
    got = peer(torch.from_numpy(tokens)).numpy()
  want = np.asarray(model.apply(variables, tokens.astype(np.int32)))
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * np.abs(want).max())


@pytest.mark.slow
def test_lm_throughput_tiny_run_with_the_pytorch_peer(tmp_path):
  pytest.importorskip('torch')
  out, readme = tmp_path / 'lm.json', tmp_path / 'README.md'
  readme.write_text('a\n<!-- lm:begin -->\nold\n<!-- lm:end -->\nb\n')
  proc = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'benchmarks', 'lm_throughput.py'), '--tiny',
       '--peer', 'torch', '--json', str(out), '--readme', str(readme)],
      cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(out.read_text())
  rows = {(r['framework'], r['mode']): r for r in result['rows']}
  assert set(rows) == {(f, m) for f in ('jaxkd', 'pytorch')
                       for m in ('student', 'online_kd', 'cached_kd')}
  for mode in ('student', 'online_kd', 'cached_kd'):
    jax_row, torch_row = rows['jaxkd', mode], rows['pytorch', mode]
    assert jax_row['vs_pytorch'] == pytest.approx(jax_row['tokens_per_s'] /
                                                  torch_row['tokens_per_s'])
    assert torch_row['model_flops_per_step'] == jax_row['model_flops_per_step']
  assert result['cpu_model'] and result['torch_build']['version']
  text = readme.read_text()
  assert 'old' not in text and '| student |' in text and 'jaxkd/pytorch' in text
