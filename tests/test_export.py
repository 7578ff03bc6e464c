"""Deploying the student: jax.export artifacts, int8 weights and the compression report."""
import json
import math
import re
import shutil
import os
import subprocess
import sys

import flax.linen
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fakedata import make_fashion_mnist
from jaxkd import checkpoint, cli, export, models, ops, quantize, serving
from jaxkd.tables import compare
from jaxkd.paths import path_str
from jaxkd.recipes.components import Task
from test_models import MNIST, PARAM_COUNTS

# Artifacts trace the library's default (CPU) convolutions, as a user's export does.

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPE = (28, 28, 1)
MEAN, STD = (0.2860,), (0.3530,)  # Fashion-MNIST's, as jaxkd.data.info has them
TASK = Task('fashion_mnist', None, None, None, None, num_classes=10,
            mean=np.asarray(MEAN, np.float32), std=np.asarray(STD, np.float32))


def _images(n, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n, *SHAPE), dtype=np.uint8)


def _trained_like(name, seed=0, **overrides):
  """(model, variables) with random weights of a trained network's kind: He-scaled kernels,
  no exact zeros or ones (a fresh init's BatchNorm is x*1+0, which XLA simplifies away)."""
  model = models.build(name, num_classes=10, **overrides)
  abstract = jax.eval_shape(lambda: model.init(
      {'params': jax.random.key(0), 'dropout': jax.random.key(1)}, jnp.zeros((1, *SHAPE)),
      train=False))
  rng = np.random.default_rng(seed)

  def draw(key_path, leaf):
    path, noise = path_str(key_path), rng.standard_normal(leaf.shape, np.float32)
    if path.endswith('kernel'):
      values = noise * math.sqrt(2 / math.prod(leaf.shape[:-1]))
    elif path.endswith(('var', 'scale')):
      values = 1 + 0.1 * (np.abs(noise) if path.endswith('var') else noise)
    else:  # biases, BatchNorm shifts and means
      values = 0.1 * noise
    return np.asarray(values, np.float32)

  return model, jax.tree_util.tree_map_with_path(draw, abstract)


def _finished_run(workdir, name, variables, **metadata):
  """A run folder with a final model, as a recipe leaves it (no training needed)."""
  meta = {'task': 'train', 'model': name, 'model_overrides': {}, 'num_classes': 10,
          'dataset': 'fashion_mnist', 'classes': [], 'class_names': [str(i) for i in range(10)],
          'dtype': 'float32', 'test_accuracy': 0.5, **metadata}
  checkpoint.save_variables(os.path.join(workdir, 'final'), variables, metadata=meta, step=7)
  return str(workdir)


# --- round trip of every zoo model, reloaded in a fresh process without jaxkd ---------------

FRESH_PROCESS = """
import importlib.util, sys
import numpy as np
serving_py, images_npy = sys.argv[1:]
spec = importlib.util.spec_from_file_location('serving', serving_py)
serving = importlib.util.module_from_spec(spec)
spec.loader.exec_module(serving)  # the file alone: jaxkd/__init__ (and its models) never run
images = np.load(images_npy)
for line in sys.stdin:  # export folders, as the test writes them
  predict, description = serving.load(line.strip())
  np.save(line.strip() + '.logits.npy', np.asarray(predict(images)))
assert 'jaxkd.models' not in sys.modules and 'flax' not in sys.modules
print(sorted(m for m in sys.modules if m.split('.')[0] in ('jaxkd', 'flax')))
"""


@pytest.mark.slow
def test_every_zoo_model_round_trips_in_a_fresh_process_without_jaxkd(tmp_path, monkeypatch):
  images = _images(2)
  np.save(tmp_path / 'images.npy', images)
  # The fresh process compiles each artifact while this one exports the next.
  fresh = subprocess.Popen(
      [sys.executable, '-c', FRESH_PROCESS, os.path.join(ROOT, 'jaxkd', 'serving.py'),
       str(tmp_path / 'images.npy')],
      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  zoo = {}
  for name in sorted(set(models.names()) - set(models.LANGUAGE_MODELS)):  # image models
    model, variables = _trained_like(name)
    exported = export.export_model(variables, model, input_shape=SHAPE, mean=MEAN, std=STD)
    export.write(str(tmp_path / name), exported, {'model': name, 'input_shape': list(SHAPE)})
    fresh.stdin.write(f'{tmp_path / name}\n')
    fresh.stdin.flush()
    zoo[name] = model, variables
  # References op by op, with XLA's convolutions and pooling: independent of the CPU
  # formulations traced into the artifacts (so close, not equal; bit-for-bit equality with
  # the compiled checkpoint is the next test's).
  with ops.use(ops.XLA):
    expected = {name: np.asarray(model.apply(variables, TASK.normalize(images), train=False))
                for name, (model, variables) in zoo.items()}
  stdout, stderr = fresh.communicate(timeout=600)
  assert fresh.returncode == 0, stderr[-3000:]
  assert stdout.strip() == '[]'  # no jaxkd module, no flax
  for name, reference in expected.items():
    logits = np.load(tmp_path / f'{name}.logits.npy')
    assert logits.shape == (2, 10) and logits.dtype == np.float32
    scale = np.abs(reference).max()
    np.testing.assert_allclose(logits, reference, rtol=0, atol=1e-5 * scale, err_msg=name)


@pytest.mark.parametrize('name', ['lenet5_half', 'resnet8'])
def test_float32_artifact_gives_the_checkpoints_logits_bit_for_bit(tmp_path, name):
  # lenet5_half: jaxkd.accel's fused elementwise convolutions; resnet8: BatchNorm, XLA's
  # convolutions and a fused stem.
  _, variables = _trained_like(name, seed=1)
  workdir = _finished_run(tmp_path / 'run', name, variables)
  description = export.export_run(workdir, str(tmp_path / 'out'))
  predict, stored = export.load(str(tmp_path / 'out'))
  assert stored == description
  model, restored, meta = export.load_run(workdir)
  images = _images(5, seed=2)
  # The checkpoint's logits as a jaxkd evaluation computes them: variables as arguments of a
  # compiled apply, images normalized on the host.
  reference = jax.jit(lambda v, x: model.apply(v, x, train=False))(restored,
                                                                   TASK.normalize(images))
  np.testing.assert_array_equal(np.asarray(predict(images)), np.asarray(reference))
  assert description['input_shape'] == [28, 28, 1] and description['num_classes'] == 10
  assert description['normalization']['mean'] == pytest.approx(MEAN)
  assert description['source']['variables_sha256'] == meta['variables_sha256']
  assert description['source']['step'] == 7 and description['dtype'] == 'float32'
  assert description['parameters'] == models.param_count(variables['params'])
  assert description['artifact_bytes'] == os.path.getsize(tmp_path / 'out' / 'model.jaxexport')


def test_bfloat16_and_int8_artifacts_are_smaller_and_close():
  model, variables = _trained_like('mlp_800')
  images = _images(4)
  blobs, logits = {}, {}
  for name, (dtype, int8) in compare.EXPORTS.items():
    exported = export.export_model(variables, model, input_shape=SHAPE, mean=MEAN, std=STD,
                                   dtype=dtype, int8=int8)
    blobs[name] = exported.serialize()
    logits[name] = np.asarray(jax.export.deserialize(blobs[name]).call(images))
  # Weights dominate: int8 kernels take a quarter of float32's bytes, bfloat16 half.
  assert len(blobs['int8']) < 0.26 * len(blobs['float32'])
  assert len(blobs['bfloat16']) < 0.51 * len(blobs['float32'])
  scale = np.abs(logits['float32']).max()
  for name in ('bfloat16', 'int8'):
    assert 0 < np.abs(logits[name] - logits['float32']).max() < 0.05 * scale, name
  # The int8 artifact computes with q * scale: the float model on the dequantized weights.
  stored, _ = quantize.quantize(variables)
  dequantized = quantize.dequantize(stored)
  reference = model.apply(dequantized, TASK.normalize(images), train=False)
  np.testing.assert_allclose(logits['int8'], reference, rtol=0, atol=1e-5 * scale)


# --- int8 weights ---------------------------------------------------------------------------

@pytest.mark.parametrize('shape', [(300, 70), (5, 5, 3, 8), (3, 3, 16, 32)])
def test_int8_dequantized_weights_are_within_one_quantization_step(shape):
  kernel = np.random.default_rng(0).standard_t(3, size=shape).astype(np.float32)
  kernel[..., 1] = 0  # a dead channel
  q = quantize.quantize_kernel(kernel)
  assert q.values.dtype == np.int8 and q.values.shape == shape
  assert q.scale.dtype == np.float32 and q.scale.shape == (shape[-1],)
  assert np.abs(q.values).max() == 127 and np.all(q.values[..., 1] == 0)
  error = np.abs(np.asarray(q.dequantize()) - kernel)
  assert np.all(error <= q.scale)  # one step
  assert np.all(error <= 0.5 * q.scale * (1 + 1e-5))  # rounding: half a step
  max_abs = np.abs(kernel).max(axis=tuple(range(len(shape) - 1)))
  np.testing.assert_allclose(q.scale[max_abs > 0], max_abs[max_abs > 0] / 127, rtol=1e-6)


def test_int8_selection_and_what_cannot_be_quantized():
  _, variables = _trained_like('resnet8')
  kernels = quantize.kernel_paths(variables)
  assert 'params/head/kernel' in kernels and 'params/stem/conv/kernel' in kernels
  assert not [p for p in kernels if 'bn' in p or p.endswith('bias')]
  assert quantize.select(variables, ['params/head/kernel']) == ['params/head/kernel']
  assert quantize.select(variables, False) == []
  with pytest.raises(ValueError, match=r"Cannot quantize \['params/head/bias'\]"):
    quantize.select(variables, ['params/head/.*'])
  with pytest.raises(ValueError, match=r'Cannot quantize .*stem/bn/scale'):
    quantize.select(variables, ['params/stem/bn/scale'])
  with pytest.raises(ValueError, match='match no variable'):
    quantize.select(variables, ['params/nothing/kernel'])
  with pytest.raises(ValueError, match='ndim >= 2'):
    quantize.quantize_kernel(np.ones(5, np.float32), path='params/head/bias')
  with pytest.raises(ValueError, match='non-finite'):
    quantize.quantize_kernel(np.array([[1.0, np.nan]], np.float32))


# --- FLOPs and the compression report -------------------------------------------------------

def test_flops_of_a_dense_layer_are_two_in_out_per_example():
  w = np.random.default_rng(0).normal(size=(300, 70)).astype(np.float32)
  assert compare.flops_per_example(lambda x: x @ w, (300,)) == 2 * 300 * 70
  dense = flax.linen.Dense(70, use_bias=False)
  variables = {'params': {'kernel': w}}
  assert compare.flops_per_example(lambda x: dense.apply(variables, x), (300,)) == 42_000
  for n in (1, 8):  # per example at any batch size
    spec = jax.ShapeDtypeStruct((n, 300), jnp.float32)
    cost = jax.jit(lambda x: x @ w).lower(spec).compile().cost_analysis()
    assert (cost[0] if isinstance(cost, list) else cost)['flops'] == n * 2 * 300 * 70
  # A zoo model that is one dense layer (flatten -> head): the product, and at most one
  # addition per bias (XLA counts it unless the bias is fused into the product).
  model = models.build('mlp', num_classes=10, hidden=())
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, *SHAPE))))
  variables = jax.tree.map(lambda s: np.ones(s.shape, s.dtype), variables)
  assert 2 * 784 * 10 <= compare.model_flops(model, variables, SHAPE) <= 2 * 784 * 10 + 10


def test_model_costs_do_not_depend_on_the_weights():
  """A model's FLOP count is its architecture's: zero biases (a fresh init) count the same as
  trained ones (weights are arguments of the counted program, not foldable constants)."""
  model = models.build('lenet5_half', num_classes=10)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
  shifted = jax.tree.map(lambda x: x + 0.5, variables)
  assert (compare.model_flops(model, variables, (28, 28, 1))
          == compare.model_flops(model, shifted, (28, 28, 1)))
  costs = compare.model_costs(['lenet5_half'], latency_calls=3, throughput_seconds=0.01)
  (row,) = costs['models']
  assert row['parameters'] == PARAM_COUNTS[('lenet5_half', MNIST)]
  assert row['flops_per_example'] == compare.model_flops(model, variables, (28, 28, 1))
  assert row['artifact_bytes']['int8'] < row['artifact_bytes']['float32']
  assert '| lenet5_half | 35,820 |' in compare.costs_markdown(costs)


def test_compression_report_of_a_teacher_and_its_student(tmp_path, monkeypatch):
  generated = make_fashion_mnist(tmp_path / 'raw', n_train=10, n_test=30, learnable=True)
  monkeypatch.setenv('JAXKD_FASHION_MNIST_DIR', str(tmp_path / 'raw'))
  monkeypatch.setenv('JAXKD_OFFLINE', '1')
  runs, trained = {}, {}
  for label, name in (('teacher', 'mlp_1200'), ('student', 'mlp_800')):
    trained[label] = _trained_like(name)
    runs[label] = _finished_run(tmp_path / label, name, trained[label][1])
  report = compare.report(runs, data_dir=str(tmp_path / 'tfds'), latency_calls=5,
                               throughput_seconds=0.05)
  json.dumps(report)  # the --json output
  rows = {row['label']: row for row in report['runs']}
  # The zoo's published sizes (tests/test_models.py; Hinton et al.'s MNIST teacher and
  # student, 1200-1200 and 800-800 hidden units).
  assert rows['teacher']['parameters'] == PARAM_COUNTS[('mlp_1200', MNIST)] == 2_395_210
  assert rows['student']['parameters'] == PARAM_COUNTS[('mlp_800', MNIST)] == 1_276_810
  images, labels = generated['test'][0][..., None], generated['test'][1].astype(np.int32)
  for label, (model, variables) in trained.items():
    row = rows[label]
    logits = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables,
                                                                  TASK.normalize(images))
    correct = int(np.sum(np.argmax(np.asarray(logits), -1) == labels))
    assert row['test_accuracy']['float32'] == correct / len(labels)
    assert 0 <= row['test_accuracy']['int8'] <= 1 and 0 <= row['test_accuracy']['bfloat16'] <= 1
    assert row['weight_bytes']['float32'] == 4 * row['parameters']  # no BatchNorm statistics
    assert row['weight_bytes']['bfloat16'] == 2 * row['parameters']
    kernels = sum(np.size(variables['params'][layer]['kernel']) for layer in variables['params'])
    outputs = sum(np.size(variables['params'][layer]['bias']) for layer in variables['params'])
    # int8 kernels, one float32 scale per output channel, float32 biases.
    assert row['weight_bytes']['int8'] == kernels + 4 * 2 * outputs
    sizes = row['artifact_bytes']
    assert sizes['int8'] < sizes['bfloat16'] < sizes['float32']
    assert kernels <= row['flops_per_example'] / 2 <= kernels + outputs  # dense layers only
    assert row['latency_batch1_s']['float32'] > 0 and row['throughput_batch256']['int8'] > 0
  assert rows['teacher']['flops_per_example'] > rows['student']['flops_per_example']
  table = compare.markdown(report)
  assert '| teacher | mlp_1200 | 2,395,210 |' in table
  assert '| student | mlp_800 | 1,276,810 |' in table
  assert report['cpu'] in table


# --- bad input ------------------------------------------------------------------------------

def test_refusals(tmp_path):
  _, variables = _trained_like('mlp_800')
  with pytest.raises(FileNotFoundError, match='No run folder'):
    export.export_run(str(tmp_path / 'missing'), str(tmp_path / 'out'))
  (tmp_path / 'unfinished' / 'checkpoints').mkdir(parents=True)
  with pytest.raises(FileNotFoundError, match=r"unfinished' holds no final model.*finished"):
    export.export_run(str(tmp_path / 'unfinished'), str(tmp_path / 'out'))
  member = _finished_run(tmp_path / 'dml' / 'members' / '0', 'mlp_800', variables)
  with pytest.raises(FileNotFoundError, match=r"mutual-learning run.*members/<i>.*\['0'\]"):
    export.export_run(str(tmp_path / 'dml'), str(tmp_path / 'out'))
  (tmp_path / 'taken').mkdir()
  (tmp_path / 'taken' / 'notes.txt').write_text('keep me')
  with pytest.raises(FileExistsError, match='taken.*not empty'):
    export.export_run(member, str(tmp_path / 'taken'))
  assert os.listdir(tmp_path / 'taken') == ['notes.txt']
  with pytest.raises(ValueError, match=r"Unknown export dtype 'float16'.*bfloat16"):
    export.export_run(member, str(tmp_path / 'out'), dtype='float16')
  with pytest.raises(FileNotFoundError, match='not an export folder'):
    serving.load(str(tmp_path / 'taken'))

  # A member of a mutual-learning run is a finished run of its own.
  export.export_run(member, str(tmp_path / 'out'), int8=['params/head/kernel'])
  predict, description = serving.load(str(tmp_path / 'out'))
  assert description['int8']['quantized'] == ['params/head/kernel']
  with pytest.raises(ValueError, match=r'shape \[batch, 28, 28, 1\].*got a batch of shape '
                                       r'\[2, 32, 32, 3\]'):
    predict(np.zeros((2, 32, 32, 3), np.uint8))
  with pytest.raises(ValueError, match=r'\[batch, 28, 28, 1\].*\[28, 28, 1\]'):
    predict(np.zeros((28, 28, 1), np.uint8))  # one image without its batch dimension
  with pytest.raises(ValueError, match='uint8 pixel values.*got float32'):
    predict(np.zeros((2, 28, 28, 1), np.float32))
  assert predict(np.zeros((3, 28, 28, 1), np.uint8)).shape == (3, 10)

  other = _finished_run(tmp_path / 'subset', 'mlp_800', variables, classes=[0, 1],
                        num_classes=10)
  with pytest.raises(ValueError, match='different tasks'):
    compare.load_test_set([member, other])


def test_export_cli(tmp_path, capsys):
  _, variables = _trained_like('lenet5_half')
  workdir = _finished_run(tmp_path / 'run', 'lenet5_half', variables)
  result = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'experiments', 'export.py'), f'--workdir={workdir}',
       f'--out={tmp_path / "out"}', '--int8'],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'lenet5_half (35,820 parameters, float32, 5 int8 kernel(s))' in result.stdout
  with open(tmp_path / 'out' / 'model.json') as f:
    assert json.load(f)['input_shape'] == [28, 28, 1]
  # A refusal: one line on stderr and exit status 2, as every experiment script.
  with pytest.raises(SystemExit) as exit_info:
    cli.exit_on_user_error(export.export_run, workdir, str(tmp_path / 'out'))
  assert exit_info.value.code == 2
  assert capsys.readouterr().err.startswith(f"error: Export folder '{tmp_path / 'out'}'")


def test_serving_compiles_with_the_libraries_cpu_options():
  # One compile function: serving.py uses jaxkd.accel.compile (loaded beside it when alone).
  from jaxkd.accel import compile as accel_compile
  assert serving._compile is accel_compile
  x = np.zeros((2, 8, 8, 32), np.float32)
  kernel = np.ones((3, 3, 32, 32), np.float32)
  conv = lambda x: jax.lax.conv_general_dilated(  # noqa: E731 - YNNPACK's by default
      x, kernel, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  assert 'ynn' not in serving._compile.jit(conv).lower(x).compile().as_text().lower()


@pytest.mark.parametrize('kwargs,words', [
    ({'platforms': ['bogus']}, "platforms=['bogus']"),
    ({'platforms': 'cpu'}, "platforms='cpu'"),
    ({'int8': ['params/(conv']}, "'params/(conv' is not a valid regular expression"),
])
def test_export_run_refuses_bad_settings_before_any_work(kwargs, words, tmp_path):
  out = tmp_path / 'out'
  with pytest.raises(ValueError, match=re.escape(words)):
    export.export_run(str(tmp_path / 'no_run'), str(out), **kwargs)
  assert not out.exists()


def test_run_whose_metadata_names_another_model_is_refused(tmp_path):
  _, variables = _trained_like('lenet5_half')
  workdir = _finished_run(tmp_path / 'run', 'lenet5', variables)  # metadata says lenet5
  with pytest.raises(ValueError, match=r"do not fit the model its metadata names \('lenet5'"):
    export.export_run(workdir, str(tmp_path / 'out'))
  assert not (tmp_path / 'out').exists()


def test_serving_refuses_a_damaged_artifact_and_an_edited_description(tmp_path):
  _, variables = _trained_like('lenet5_half')
  workdir = _finished_run(tmp_path / 'run', 'lenet5_half', variables)
  out = tmp_path / 'out'
  export.export_run(workdir, str(out))
  predict, _ = serving.load(str(out))  # as written: loads
  assert predict(np.zeros((2, *SHAPE), np.uint8)).shape == (2, 10)
  damaged = tmp_path / 'damaged'
  shutil.copytree(out, damaged)
  blob = bytearray((damaged / serving.ARTIFACT).read_bytes())
  blob[len(blob) // 2:len(blob) // 2 + 64] = bytes(b ^ 0xFF for b in blob[len(blob) // 2:
                                                                          len(blob) // 2 + 64])
  (damaged / serving.ARTIFACT).write_bytes(bytes(blob))
  with pytest.raises(ValueError, match='model.jaxexport is damaged: its SHA-256'):
    serving.load(str(damaged))
  edited = tmp_path / 'edited'
  shutil.copytree(out, edited)
  description = json.loads((edited / serving.DESCRIPTION).read_text())
  (edited / serving.DESCRIPTION).write_text(json.dumps({**description, 'num_classes': 5}))
  with pytest.raises(ValueError, match=r'says num_classes 5 \(the function: 10\)'):
    serving.load(str(edited))
  del description[serving.CHECKSUM]
  (edited / serving.DESCRIPTION).write_text(json.dumps(description))
  with pytest.raises(ValueError, match='records no artifact_sha256'):
    serving.load(str(edited))


@pytest.mark.slow
def test_language_model_run_exports_its_forward_pass_bit_for_bit(tmp_path):
  from jaxkd.recipes.language_model import load_lm
  vocab, seq_len = 32, 8
  overrides = {'width': 16, 'depth': 2, 'heads': 2}
  model = models.build('transformer', num_classes=vocab, max_len=seq_len, **overrides)
  abstract = jax.eval_shape(lambda: model.init(jax.random.key(0),
                                               jnp.zeros((1, seq_len), jnp.int32)))
  rng = np.random.default_rng(3)  # no exact zeros or ones: LayerNorm's x*1+0 would fold away
  variables = jax.tree.map(lambda a: (0.3 * rng.standard_normal(a.shape) + 0.1).astype(
      np.float32), abstract)
  workdir = tmp_path / 'lm'
  meta = {'recipe': 'language_model', 'model': 'transformer', 'model_overrides': overrides,
          'num_classes': vocab, 'seq_len': seq_len, 'corpus': 'pydoc', 'tokenizer': 'bpe',
          'tokenizer_sha256': 'ab' * 32}
  checkpoint.save_variables(str(workdir / 'final'), variables, metadata=meta, step=4)
  (workdir / 'final_metrics.json').write_text(json.dumps({'test': {'bits_per_byte': 2.5}}))
  result = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'experiments', 'export.py'), f'--workdir={workdir}',
       f'--out={tmp_path / "out"}'], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'input int32 [\'batch\', 8]' in result.stdout
  predict, description = serving.load(str(tmp_path / 'out'))
  # The recipe's own loader (not the exporter's) and a compiled apply, as evaluation runs it.
  trained, restored, _ = load_lm(str(workdir / 'final'))
  apply = jax.jit(trained.apply)
  for batch in (1, 5):  # the batch dimension is symbolic
    tokens = np.random.default_rng(batch).integers(0, vocab, (batch, seq_len), np.int32)
    logits = np.asarray(predict(tokens))
    assert logits.shape == (batch, seq_len, vocab) and logits.dtype == np.float32
    np.testing.assert_array_equal(logits, np.asarray(apply(restored, tokens)))
  np.testing.assert_array_equal(predict(tokens.astype(np.int64)), logits)
  assert description['input_shape'] == [seq_len] and description['input_dtype'] == 'int32'
  assert description['num_classes'] == vocab and description['source']['step'] == 4
  assert description['tokenizer'] == {'kind': 'bpe', 'vocab_size': vocab, 'sha256': 'ab' * 32}
  assert description['test_metrics'] == {'bits_per_byte': 2.5}
  assert description['parameters'] == models.param_count(variables['params'])
  with pytest.raises(ValueError, match=r'token ids of shape \[batch, 8\]; got \[2, 7\]'):
    predict(np.zeros((2, 7), np.int32))
  with pytest.raises(ValueError, match=r'ids 0\.\.31; got ids 0\.\.35 \(another tokenizer'):
    predict(np.arange(seq_len, dtype=np.int32)[None] * 5)
  with pytest.raises(ValueError, match='integer token ids; got float32'):
    predict(np.zeros((1, seq_len), np.float32))
  # bfloat16 compute: close to float32, logits float32
  exported = export.export_language_model(restored, trained, length=seq_len, dtype='bfloat16')
  half = np.asarray(exported.call(tokens))
  assert half.dtype == np.float32
  np.testing.assert_allclose(half, logits, atol=0.05 * np.abs(logits).max())
  with pytest.raises(ValueError, match=r'length=9 must be in 1\.\.8'):
    export.export_language_model(restored, trained, length=9)
