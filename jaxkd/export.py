"""Deployable models: a trained network's inference as a `jax.export` artifact (StableHLO).

    python experiments/export.py --workdir workdirs/kd --out exports/kd [--dtype bfloat16] [--int8]

`export_run` reads a finished run's final model (teacher, student, fine-tuned model, or a
mutual-learning member `WORKDIR/members/<i>`) and writes `OUT/model.jaxexport` and
`OUT/model.json`; `jaxkd.serving.load` (re-exported here as `load`) reads them back with JAX
alone. The exported function:

- takes raw images, uint8 `[batch, H, W, C]` with a symbolic batch dimension, and applies the
  dataset's normalization `(x / 255 - mean) / std` itself, as a 256-entry lookup table
  computed with NumPy exactly as training did (XLA would turn the division into a
  multiplication by the reciprocal, which rounds differently);
- returns float32 logits `[batch, num_classes]`;
- holds the weights as constants (`dtype='bfloat16'` stores and computes in bfloat16;
  `int8` stores kernels as int8 plus per-channel scales, dequantized inside, see
  `jaxkd.quantize`), behind an `optimization_barrier`: without it XLA evaluates weight-only
  arithmetic (BatchNorm's `rsqrt(var + eps)`) at compile time, rounding differently from
  the run-time kernels that evaluate a checkpoint.

So a float32 artifact gives bit-for-bit the checkpoint's logits on the CPU (the same
convolution formulation, `jaxkd.ops.current().conv_impl`, is traced in; it is recorded).

A language model's run (`jaxkd.recipes.language_model`) exports its forward pass instead:
int32 token ids `[batch, seq_len]` (the run's context length; symbolic batch) -> float32
logits `[batch, seq_len, vocab]`, bit-for-bit `model.apply`'s, with the tokenizer's
fingerprint and the run's test metrics in `model.json` (`export_language_model`).
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np

import jaxkd
from jaxkd import models, ops, paths, quantize
from jaxkd.models import DTYPES
from jaxkd.serving import ARTIFACT, CHECKSUM, DESCRIPTION, Artifact, load

PyTree = Any
FORMAT = 'jaxkd-export/1'


def normalization_table(mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
  """`[256, C]` float32: row `v` is `(v / 255 - mean) / std`, as `Task.normalize` computes."""
  levels = np.arange(256, dtype=np.uint8)[:, None].astype(np.float32)
  mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
  return ((levels / 255.0 - mean) / std).astype(np.float32)


def stored_weights(variables: PyTree, *, dtype: str = 'float32',
                   int8: bool | Sequence[str] = False) -> PyTree:
  """The weights an artifact holds: int8 kernels (`jaxkd.quantize.Int8Kernel`) where asked,
  every other float leaf in `dtype`."""
  if dtype not in DTYPES:
    raise ValueError(f'Unknown export dtype {dtype!r}; choose one of {sorted(DTYPES)}.')
  variables = jax.tree.map(np.asarray, jax.device_get(variables))
  stored, _ = quantize.quantize(variables, int8)

  def cast(leaf):  # int8 kernels keep their float32 scales
    if isinstance(leaf, np.ndarray) and np.issubdtype(leaf.dtype, np.floating):
      return leaf.astype(DTYPES[dtype])
    return leaf

  return jax.tree.map(cast, stored, is_leaf=lambda x: isinstance(x, quantize.Int8Kernel))


def _constant_model(variables: PyTree, model, *, dtype: str, int8: bool | Sequence[str]):
  """`(weights(), model)`: `weights()` gives the stored weights, dequantized behind an
  `optimization_barrier` (see the module docstring), `model` computes in `dtype`."""
  stored = stored_weights(variables, dtype=dtype, int8=int8)  # checks dtype and int8 first
  if dtype != 'float32':
    if 'dtype' not in getattr(model, '__dataclass_fields__', {}):
      raise ValueError(f'{type(model).__name__} has no `dtype` field to compute in {dtype}; '
                       'export it in float32.')
    model = model.clone(dtype=DTYPES[dtype])
  return (lambda: quantize.dequantize(jax.lax.optimization_barrier(stored), DTYPES[dtype]),
          model)


def inference_function(variables: PyTree, model, *, mean: Sequence[float],
                       std: Sequence[float], dtype: str = 'float32',
                       int8: bool | Sequence[str] = False):
  """`predict(images_uint8 [B, H, W, C]) -> logits float32 [B, num_classes]` with the
  weights inside as constants (see the module docstring)."""
  weights, model = _constant_model(variables, model, dtype=dtype, int8=int8)
  table = normalization_table(mean, std)

  def predict(images):
    pixels = jnp.asarray(table)[images.astype(jnp.int32), jnp.arange(table.shape[1])]
    return model.apply(weights(), pixels, train=False).astype(jnp.float32)

  return predict


def export_language_model(variables: PyTree, model, *, length: int, dtype: str = 'float32',
                          int8: bool | Sequence[str] = False,
                          platforms: Sequence[str] | None = None) -> jax.export.Exported:
  """A language model's forward pass, int32 tokens `[batch, length]` -> float32 logits
  `[batch, length, vocab]` (position `j` predicts token `j + 1`), with `variables` inside
  and a symbolic batch size; settings as `export_model`'s.

  Raises:
    ValueError: a bad dtype, int8 selection or length.
  """
  check_platforms(platforms)
  max_len = getattr(model, 'max_len', length)
  if not 0 < int(length) <= max_len:
    raise ValueError(f'length={length} must be in 1..{max_len} (the model\'s max_len).')
  weights, model = _constant_model(variables, model, dtype=dtype, int8=int8)

  def logits(tokens):
    return model.apply(weights(), tokens, train=False).astype(jnp.float32)

  (batch,) = jax.export.symbolic_shape('batch')
  spec = jax.ShapeDtypeStruct((batch, int(length)), jnp.int32)
  return jax.export.export(jax.jit(logits),
                           platforms=tuple(platforms) if platforms else None)(spec)


def export_model(variables: PyTree, model, *, input_shape: Sequence[int],
                 mean: Sequence[float], std: Sequence[float], dtype: str = 'float32',
                 int8: bool | Sequence[str] = False,
                 platforms: Sequence[str] | None = None) -> jax.export.Exported:
  """`model`'s inference with `variables` inside, exported for a symbolic batch size.

  Args:
    variables: `{'params': ..., 'batch_stats': ...}` as saved by a run (float32).
    model: the Flax module (`jaxkd.models.build(...)`), applied with `train=False`.
    input_shape: one example's shape, `(H, W, C)`.
    mean, std: the per-channel normalization on [0, 1] pixels (length C or 1).
    dtype: `'float32'` or `'bfloat16'` (weights stored and computed in it; logits float32).
    int8: store kernels as int8: `True` all of them, or regexes over their paths
      (`params/head/kernel`); see `jaxkd.quantize.select`.
    platforms: e.g. `('cpu', 'cuda')`; default: the current backend.

  Raises:
    ValueError: a bad dtype, int8 selection or input shape.
  """
  check_platforms(platforms)
  input_shape = tuple(int(n) for n in input_shape)
  channels = np.broadcast_shapes(np.shape(mean), np.shape(std), (1,))[0]
  if len(input_shape) != 3 or channels not in (1, input_shape[-1]):
    raise ValueError(f'input_shape must be (H, W, C) with C matching mean/std ({channels} '
                     f'channel(s)); got {input_shape}.')
  predict = inference_function(variables, model, mean=mean, std=std, dtype=dtype, int8=int8)
  (batch,) = jax.export.symbolic_shape('batch')
  spec = jax.ShapeDtypeStruct((batch, *input_shape), jnp.uint8)
  return jax.export.export(jax.jit(predict),
                           platforms=tuple(platforms) if platforms else None)(spec)


PLATFORMS = ('cpu', 'cuda', 'rocm', 'tpu')  # what `jax.export` lowers for


def check_platforms(platforms: Sequence[str] | None) -> None:
  """Raises ValueError unless `platforms` is None or a non-empty sequence of `PLATFORMS`."""
  if platforms is None:
    return
  if isinstance(platforms, str) or not platforms or any(p not in PLATFORMS for p in platforms):
    raise ValueError(f'platforms={platforms!r}: give a list of {list(PLATFORMS)} (or none for '
                     'the current backend).')


def check_out_dir(out_dir: str) -> None:
  """Raises FileExistsError unless `out_dir` is missing or an empty folder."""
  if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
    raise FileExistsError(f'Export folder {out_dir!r} already exists and is not empty; '
                          'choose a new --out (exports are never overwritten).')


def write(out_dir: str, exported: jax.export.Exported, description: dict) -> dict:
  """Writes `out_dir/model.jaxexport` and `out_dir/model.json`; returns the description
  written (with `artifact_bytes` and `artifact_sha256` added).

  Raises:
    FileExistsError: `out_dir` exists and is not empty.
  """
  check_out_dir(out_dir)
  os.makedirs(out_dir, exist_ok=True)
  blob = exported.serialize()
  description = {**description, 'artifact_bytes': len(blob),
                 CHECKSUM: hashlib.sha256(blob).hexdigest()}
  for name, data, mode in ((ARTIFACT, blob, 'wb'),
                           (DESCRIPTION, json.dumps(description, indent=2) + '\n', 'w')):
    tmp = os.path.join(out_dir, f'.{name}.tmp')
    with open(tmp, mode) as f:
      f.write(data)
    os.replace(tmp, os.path.join(out_dir, name))
  return description


def final_dir(workdir: str) -> str:
  """`workdir/final` (or `workdir` itself if it is a `final` folder).

  Raises:
    FileNotFoundError: no such folder, or no final model in it (an unfinished run; a
      mutual-learning run, whose members are `workdir/members/<i>`).
  """
  if not os.path.isdir(workdir):
    raise FileNotFoundError(f'No run folder at {workdir!r}.')
  if os.path.basename(os.path.normpath(workdir)) == 'final':
    return workdir
  final = os.path.join(workdir, 'final')
  if os.path.isdir(final):
    return final
  members = os.path.join(workdir, 'members')
  hint = (f' It is a mutual-learning run: export one member, {members}/<i> '
          f'(there: {sorted(os.listdir(members))}).' if os.path.isdir(members) else
          ' Is the run finished? Training writes WORKDIR/final at its end.')
  raise FileNotFoundError(f'{workdir!r} holds no final model ({final} does not exist).{hint}')


def describe(meta: dict, *, source: str, variables: PyTree, exported: jax.export.Exported,
             input_shape: Sequence[int], dtype: str, int8_paths: Sequence[str],
             mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> dict:
  """The artifact's `model.json`: what it computes, on what input, from which checkpoint
  (an image model's normalization `mean`/`std`; none: a language model's tokens)."""
  params = variables['params']
  description = {
      'format': FORMAT,
      'model': meta.get('model'),
      'model_overrides': meta.get('model_overrides') or {},
      'num_classes': int(meta['num_classes']),
      'input_shape': [int(n) for n in input_shape],
  }
  if mean is None:  # a language model: token ids in, next-token logits out
    description.update({
        'input_dtype': 'int32',
        'input_layout': 'token ids [batch, length], batch dimension symbolic',
        'output': 'float32 logits [batch, length, vocab]: position j predicts token j + 1',
        'corpus': meta.get('corpus'),
        'tokenizer': {'kind': meta.get('tokenizer'), 'vocab_size': int(meta['num_classes']),
                      'sha256': meta.get('tokenizer_sha256')},
        'test_metrics': meta.get('test_metrics'),
    })
  else:
    description.update({
        'class_names': list(meta.get('class_names') or []),
        'dataset': meta.get('dataset'),
        'classes': list(meta.get('classes') or []),
        'input_dtype': 'uint8',
        'input_layout': 'NHWC, batch dimension symbolic',
        'normalization': {'mean': np.asarray(mean, float).ravel().tolist(),
                          'std': np.asarray(std, float).ravel().tolist(),
                          'formula': '(x / 255 - mean) / std, inside the artifact'},
        'output': 'float32 logits [batch, num_classes]',
        'test_accuracy': meta.get('test_accuracy'),
        'test_accuracy_of': 'the source checkpoint, float32',
        'conv_impl': ops.current().conv_impl,
    })
  return {
      **description,
      'dtype': dtype,
      'trained_dtype': meta.get('dtype', 'float32'),
      'int8': {'scheme': 'per-output-channel symmetric (scale = max|w| / 127), weights only',
               'quantized': list(int8_paths)} if int8_paths else None,
      'parameters': models.param_count(params),
      'param_bytes_float32': 4 * models.param_count(params),
      'source': {'final_dir': os.path.abspath(source), 'step': meta.get('step'),
                 'task': meta.get('task'), 'variables_sha256': meta.get('variables_sha256'),
                 'params_sha256': meta.get('params_sha256')},
      'platforms': list(exported.platforms),
      'calling_convention_version': exported.calling_convention_version,
      'jax_version': jax.__version__,
      'jaxkd_version': jaxkd.__version__,
  }


def is_language_model(meta: dict) -> bool:
  """Whether a final model's metadata is a language model's (`recipes.language_model`)."""
  return meta.get('recipe') == 'language_model'


def load_run(workdir: str) -> tuple[Any, PyTree, dict]:
  """`(model, variables, metadata)` of a finished run's final model."""
  from jaxkd import checkpoint  # local import: orbax is slow to import
  final = final_dir(workdir)
  variables, meta = checkpoint.load_variables(final)
  overrides = dict(meta.get('model_overrides') or {})
  if is_language_model(meta):  # its context; its test metrics where the run left them
    overrides.setdefault('max_len', meta['seq_len'])
    metrics = os.path.join(os.path.dirname(os.path.normpath(final)), 'final_metrics.json')
    if os.path.isfile(metrics):
      with open(metrics) as f:
        meta = {**meta, 'test_metrics': json.load(f).get('test')}
  model = models.build(meta['model'], num_classes=meta['num_classes'], **overrides)
  return model, variables, {**meta, 'final_dir': final}


def export_run(workdir: str, out_dir: str, *, dtype: str = 'float32',
               int8: bool | Sequence[str] = False,
               platforms: Sequence[str] | None = None) -> dict:
  """Exports a finished run's final model to `out_dir`; returns its description. An image
  model takes uint8 images (`export_model`), a language model (`recipes.language_model`)
  int32 tokens `[batch, seq_len]` (`export_language_model`).

  Raises:
    FileNotFoundError: `workdir` holds no final model.
    FileExistsError: `out_dir` exists and is not empty (checked before anything is read).
    ValueError: a bad dtype or int8 selection.
  """
  from jaxkd import data  # local import: TFDS is slow to import
  check_platforms(platforms)
  if not isinstance(int8, bool):
    paths.check_patterns(int8)
  check_out_dir(out_dir)
  model, variables, meta = load_run(workdir)
  try:
    if is_language_model(meta):
      input_shape, normalization = (int(meta['seq_len']),), {}
      exported = export_language_model(variables, model, length=input_shape[0], dtype=dtype,
                                       int8=int8, platforms=platforms)
    else:
      info = data.info(meta['dataset'])
      input_shape, normalization = info.image_shape, {'mean': info.mean, 'std': info.std}
      exported = export_model(variables, model, input_shape=input_shape, dtype=dtype,
                              int8=int8, platforms=platforms, **normalization)
  except flax.errors.FlaxError as error:  # the metadata names a model the variables don't fit
    raise ValueError(f'{meta["final_dir"]}: its variables do not fit the model its metadata names '
                     f'({meta["model"]!r}, {meta.get("model_overrides", {})}): '
                     f'{str(error).splitlines()[0]}') from error
  description = describe(meta, source=meta['final_dir'], variables=variables,
                         exported=exported, input_shape=input_shape, dtype=dtype,
                         int8_paths=quantize.select(variables, int8), **normalization)
  return write(out_dir, exported, description)


__all__ = ['ARTIFACT', 'Artifact', 'DESCRIPTION', 'DTYPES', 'PLATFORMS', 'check_out_dir',
           'check_platforms', 'describe', 'export_language_model', 'export_model',
           'export_run', 'final_dir', 'inference_function', 'is_language_model', 'load',
           'load_run', 'normalization_table', 'stored_weights', 'write']
