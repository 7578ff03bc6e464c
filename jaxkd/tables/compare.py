"""The compression report: what a teacher and its student cost to deploy, side by side.

    python experiments/compare.py --teacher workdirs/teacher --student workdirs/kd

For each finished run: parameters, artifact bytes (float32 / bfloat16 / int8 exports, the
weights inside; plus the raw weight bytes), FLOPs per example (XLA's cost analysis at batch
1), CPU latency at batch 1 (median of many compiled calls), throughput at batch 256, and
test accuracy measured through each exported artifact (so the numbers prove the artifacts
work).
"""
from __future__ import annotations

import os
import statistics
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxkd import export, models, ops
from jaxkd.serving import Artifact

EXPORTS = {'float32': ('float32', False), 'bfloat16': ('bfloat16', False),
           'int8': ('float32', True)}
THROUGHPUT_BATCH = 256


def flops_per_example(fn: Callable, example_shape: Sequence[int], dtype=jnp.float32) -> float:
  """FLOPs of `fn` on one example (a batch of 1), from XLA's cost analysis of the compiled
  program. A dense layer `[in] -> [out]` counts `2 * in * out`."""
  return _flops(fn, jax.ShapeDtypeStruct((1, *example_shape), dtype))


def _flops(fn: Callable, *specs) -> float:
  cost = jax.jit(fn).lower(*specs).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost['flops'])


def model_flops(model, variables, input_shape: Sequence[int]) -> float:
  """FLOPs per example of `model`'s inference: the architecture's arithmetic as XLA counts
  it for its own convolutions (not the CPU formulations of `jaxkd.accel`, which count
  differently for the same maths); variables are arguments, so nothing is folded."""
  specs = jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), np.asarray(a).dtype),
                       variables)
  with ops.use(ops.XLA):  # weights as arguments: values (zero biases) cannot change the count
    return _flops(lambda v, x: model.apply(v, x, train=False), specs,
                  jax.ShapeDtypeStruct((1, *input_shape), jnp.float32))


def latency(predict: Callable, example: np.ndarray, *, calls: int = 200,
            warmup: int = 5) -> float:
  """Median seconds of `predict(example)` (compiled first), over `calls` timed calls."""
  for _ in range(warmup):
    jax.block_until_ready(predict(example))
  times = []
  for _ in range(calls):
    start = time.perf_counter()
    jax.block_until_ready(predict(example))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def throughput(predict: Callable, batch: np.ndarray, *, min_seconds: float = 1.0,
               min_calls: int = 5) -> float:
  """Examples per second of `predict(batch)`: the batch size over the median call time."""
  jax.block_until_ready(predict(batch))
  times, start = [], time.perf_counter()
  while len(times) < min_calls or time.perf_counter() - start < min_seconds:
    begin = time.perf_counter()
    jax.block_until_ready(predict(batch))
    times.append(time.perf_counter() - begin)
  return len(batch) / statistics.median(times)


def accuracy(predict: Callable, images: np.ndarray, labels: np.ndarray, *,
             batch_size: int = THROUGHPUT_BATCH) -> float:
  """Top-1 accuracy of `predict` over `(images, labels)`; the last batch is padded, so one
  batch size (one compilation, the throughput measurement's) serves the whole set."""
  correct = 0
  for start in range(0, len(labels), batch_size):
    batch = images[start:start + batch_size]
    n = len(batch)
    if n < batch_size:
      batch = np.concatenate([batch, np.zeros((batch_size - n, *batch.shape[1:]), batch.dtype)])
    predicted = np.asarray(predict(batch))[:n].argmax(-1)
    correct += int((predicted == labels[start:start + n]).sum())
  return correct / len(labels)


def weight_bytes(variables, *, dtype: str = 'float32', int8: bool = False) -> int:
  """Bytes of the weights an export stores: int8 kernels + float32 scales, other leaves in
  `dtype`."""
  stored = export.stored_weights(variables, dtype=dtype, int8=int8)
  return sum(np.asarray(leaf).nbytes for leaf in jax.tree.leaves(stored))


def measure_run(workdir: str, images: np.ndarray, labels: np.ndarray, *,
                latency_calls: int = 200, throughput_seconds: float = 1.0) -> dict[str, Any]:
  """One row of the report for the finished run in `workdir`, on the test set given."""
  from jaxkd import data  # local import: TFDS is slow to import
  model, variables, meta = export.load_run(workdir)
  info = data.info(meta['dataset'])
  row = {'workdir': workdir, 'model': meta['model'], 'task': meta.get('task'),
         'parameters': models.param_count(variables['params']),
         'flops_per_example': model_flops(model, variables, info.image_shape),
         'checkpoint_test_accuracy': meta.get('test_accuracy'),
         'artifact_bytes': {}, 'weight_bytes': {}, 'test_accuracy': {},
         'latency_batch1_s': {}, 'throughput_batch256': {}}
  single = images[:1]
  batch = np.resize(images, (THROUGHPUT_BATCH, *images.shape[1:]))
  for name, (dtype, int8) in EXPORTS.items():
    exported = export.export_model(variables, model, input_shape=info.image_shape,
                                   mean=info.mean, std=info.std, dtype=dtype, int8=int8)
    blob = exported.serialize()
    # The accuracy comes through the serialized bytes, as a deployment would load them.
    predict = Artifact(jax.export.deserialize(blob),
                       {'input_shape': list(info.image_shape)}, where=f'{name} export')
    row['artifact_bytes'][name] = len(blob)
    row['weight_bytes'][name] = weight_bytes(variables, dtype=dtype, int8=int8)
    row['test_accuracy'][name] = accuracy(predict, images, labels)
    if name != 'bfloat16':  # bfloat16 arithmetic is emulated on most CPUs: not a CPU option
      row['latency_batch1_s'][name] = latency(predict, single, calls=latency_calls)
      row['throughput_batch256'][name] = throughput(predict, batch,
                                                    min_seconds=throughput_seconds)
  return row


def load_test_set(workdirs: Sequence[str], *, data_dir: str | None = None):
  """The test split all `workdirs` were evaluated on, `(images, labels)`.

  Raises:
    ValueError: the runs are on different datasets or class subsets.
  """
  from jaxkd import checkpoint, data  # local import: TFDS and Orbax are slow to import
  tasks = {}
  for workdir in workdirs:
    meta = checkpoint.read_metadata(export.final_dir(workdir))
    tasks[workdir] = (meta['dataset'], tuple(meta.get('classes') or ()))
  if len(set(tasks.values())) != 1:
    described = '; '.join(f"{w}: {d} classes {list(c) or 'all'}" for w, (d, c) in tasks.items())
    raise ValueError(f'The runs are on different tasks, so their accuracies do not compare '
                     f'({described}).')
  dataset, classes = next(iter(tasks.values()))
  images, labels = data.load_arrays(dataset, 'test', data_dir=data_dir)
  if classes:
    images, labels = data.subset_classes(images, labels, classes)
  return images, labels


def report(runs: dict[str, str], *, data_dir: str | None = None, latency_calls: int = 200,
            throughput_seconds: float = 1.0) -> dict[str, Any]:
  """The report for `runs` (`{'teacher': WORKDIR, 'student': WORKDIR}`), JSON-able.

  Args:
    runs: label -> finished run (WORKDIR), all on one dataset and class subset.
    data_dir: where the test split is (default $JAXKD_DATA_DIR).
    latency_calls: timed batch-1 calls per artifact (the median is reported).
    throughput_seconds: how long to time batch-256 calls per artifact, at least.

  Raises:
    FileNotFoundError: a run has no final model.
    ValueError: the runs are on different tasks.
  """
  from jaxkd.recipes.provenance import cpu_model
  for workdir in runs.values():
    export.final_dir(workdir)  # fail before any long work
  images, labels = load_test_set(list(runs.values()), data_dir=data_dir)
  rows = [{'label': label, **measure_run(workdir, images, labels, latency_calls=latency_calls,
                                         throughput_seconds=throughput_seconds)}
          for label, workdir in runs.items()]
  return {'cpu': cpu_model(), 'cpu_count': os.cpu_count(), 'backend': jax.default_backend(),
          'jax_version': jax.__version__, 'conv_impl': ops.current().conv_impl,
          'latency_calls': latency_calls, 'throughput_batch': THROUGHPUT_BATCH,
          'test_examples': int(len(labels)), 'runs': rows}


def _duration(seconds: float) -> str:
  return f'{seconds * 1e6:.0f} µs' if seconds < 1e-3 else f'{seconds * 1e3:.2f} ms'


def model_costs(names: Sequence[str], *, dataset: str = 'fashion_mnist',
                latency_calls: int = 200, throughput_seconds: float = 1.0) -> dict[str, Any]:
  """What each zoo model costs a deployer on this machine, whatever its weights: parameters,
  artifact bytes (float32 / int8), FLOPs per example, batch-1 latency and batch-256
  throughput of its float32 artifact; measured on random weights of `dataset`'s shapes
  (the columns a results table adds beside its accuracies)."""
  from jaxkd import data  # local import: TFDS is slow to import
  from jaxkd.state import fresh_variables
  info = data.info(dataset)
  single = np.zeros((1, *info.image_shape), np.uint8)
  batch = np.random.default_rng(0).integers(0, 256, (THROUGHPUT_BATCH, *info.image_shape),
                                            dtype=np.uint8)
  rows = []
  for name in names:
    model = models.build(name, num_classes=info.num_classes)
    variables = fresh_variables(model, seed=0, input_shape=(1, *info.image_shape))
    row = {'model': name, 'parameters': models.param_count(variables['params']),
           'flops_per_example': model_flops(model, variables, info.image_shape),
           'artifact_bytes': {}}
    for kind, int8 in (('float32', False), ('int8', True)):
      exported = export.export_model(variables, model, input_shape=info.image_shape,
                                     mean=info.mean, std=info.std, int8=int8)
      blob = exported.serialize()
      row['artifact_bytes'][kind] = len(blob)
      if kind == 'float32':  # timed as `measure_run` times a run's artifact
        predict = Artifact(jax.export.deserialize(blob), {'input_shape': list(info.image_shape)})
        row['latency_batch1_s'] = latency(predict, single, calls=latency_calls)
        row['throughput_batch256'] = throughput(predict, batch, min_seconds=throughput_seconds)
    rows.append(row)
  from jaxkd.recipes.provenance import cpu_model
  return {'dataset': dataset, 'cpu': cpu_model(), 'cpu_count': os.cpu_count(),
          'jax_version': jax.__version__, 'conv_impl': ops.current().conv_impl,
          'latency_calls': latency_calls, 'models': rows}


def costs_markdown(costs: dict[str, Any]) -> str:
  """`model_costs` as a Markdown table, with its machine."""
  lines = ['| model | parameters | kB float32 / int8 | MFLOPs / example | latency, batch 1 '
           '| throughput, batch 256 |', '|---|--:|--:|--:|--:|--:|']
  for r in costs['models']:
    size = r['artifact_bytes']
    lines.append(f"| {r['model']} | {r['parameters']:,} | {size['float32'] / 1e3:.0f} / "
                 f"{size['int8'] / 1e3:.0f} | {r['flops_per_example'] / 1e6:.2f} | "
                 f"{_duration(r['latency_batch1_s'])} | {r['throughput_batch256']:,.0f} ex/s |")
  lines += ['', f"CPU: {costs['cpu']} ({costs['cpu_count']} cores), JAX {costs['jax_version']}, "
            f"convolutions `{costs['conv_impl']}`; {costs['dataset']} shapes, random weights; "
            f"latency: median of {costs['latency_calls']} compiled calls of the float32 "
            'artifact.']
  return '\n'.join(lines)


def markdown(report: dict[str, Any]) -> str:
  """The report as a Markdown table (float32 latency and throughput), with its machine."""
  mb = lambda n: f'{n / 1e6:.3f}'  # noqa: E731
  lines = [
      '| run | model | parameters | MB float32 / bfloat16 / int8 | MFLOPs / example '
      '| latency, batch 1 | throughput, batch 256 | test acc. float32 | bfloat16 | int8 |',
      '|---|---|--:|--:|--:|--:|--:|--:|--:|--:|']
  for r in report['runs']:
    sizes = ' / '.join(mb(r['artifact_bytes'][k]) for k in EXPORTS)
    acc = r['test_accuracy']
    lines.append(
        f"| {r['label']} | {r['model']} | {r['parameters']:,} | {sizes} "
        f"| {r['flops_per_example'] / 1e6:.2f} | {_duration(r['latency_batch1_s']['float32'])} "
        f"| {r['throughput_batch256']['float32']:,.0f} ex/s | {acc['float32']:.4f} "
        f"| {acc['bfloat16']:.4f} | {acc['int8']:.4f} |")
  lines += [
      '',
      f"CPU: {report['cpu']} ({report['cpu_count']} cores), JAX {report['jax_version']}, "
      f"convolutions `{report['conv_impl']}`. MB: the exported artifact (`model.jaxexport`, "
      'weights inside). FLOPs: XLA cost analysis at batch 1. Latency: median of '
      f"{report['latency_calls']} compiled calls of the float32 artifact; throughput: its "
      f"examples/s at batch {report['throughput_batch']}. Accuracy: the "
      f"{report['test_examples']} test examples through each artifact."]
  return '\n'.join(lines)


__all__ = ['EXPORTS', 'accuracy', 'costs_markdown', 'flops_per_example', 'latency',
           'load_test_set', 'markdown', 'measure_run', 'model_costs', 'model_flops', 'report',
           'throughput', 'weight_bytes']
