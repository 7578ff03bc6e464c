"""What a run is and where it ran: run metadata, machine description, selection summaries
read back from metrics.jsonl, and atomic JSON files."""
from __future__ import annotations

import json
import os
import platform
import re

import jax

from jaxkd import data, distributed
from jaxkd.accel import hostmem
from jaxkd.recipes.defaults import setting


def write_json(path: str, record: dict) -> None:
  """Writes `record` to `path` atomically (a temporary file, then a rename); in a run of
  several processes only the main one writes."""
  if not distributed.is_main():
    return
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(record, f, indent=2, sort_keys=True)
  os.replace(tmp, path)


def cpu_model() -> str:
  """The CPU's model name (from /proc/cpuinfo where there is one)."""
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


# The flags `cpu_isa` reports, and the instruction sets it names (best first).
ISA_FLAGS = ('avx2', 'fma', 'avx512f', 'avx512bw', 'avx512vl', 'avx512_vnni', 'avx512_bf16',
             'avx512_fp16', 'amx_tile', 'amx_bf16', 'amx_int8')
ISA_LEVELS = (('AMX', 'amx_tile'), ('AVX-512', 'avx512f'), ('AVX2', 'avx2'),
              ('SSE4.2', 'sse4_2'))


def cpu_isa(cpuinfo: str | None = None) -> dict:
  """The CPU's best vector instruction set and its relevant flags, from the `flags` line of
  `cpuinfo` (default: /proc/cpuinfo); {'isa': 'unknown', 'flags': []} where there is none."""
  if cpuinfo is None:
    try:
      with open('/proc/cpuinfo') as f:
        cpuinfo = f.read()
    except OSError:
      cpuinfo = ''
  line = next((l for l in cpuinfo.splitlines() if l.split(':', 1)[0].strip() == 'flags'), None)
  if line is None or ':' not in line:
    return {'isa': 'unknown', 'flags': []}
  flags = set(line.split(':', 1)[1].split())
  isa = next((name for name, flag in ISA_LEVELS if flag in flags), 'baseline')
  return {'isa': isa, 'flags': sorted(flags & set(ISA_FLAGS))}


def machine_slug(model: str | None = None) -> str:
  """The CPU model (default: `cpu_model()`) as a file-name part: lower case, without
  '(R)', '(TM)', 'CPU', '@ ...GHz' and 'Processor', e.g. 'intel-xeon-platinum-8488c'."""
  model = cpu_model() if model is None else model
  model = re.sub(r'\((r|tm)\)|\bcpu\b|@\s*[\d.]+\s*ghz|\bprocessor\b', ' ', model.lower())
  return re.sub(r'[^a-z0-9]+', '-', model).strip('-') or 'unknown'


def machine() -> dict:
  device = jax.devices()[0]
  return {'device_kind': device.device_kind, 'platform': device.platform,
          'device_count': jax.device_count(), 'processes': jax.process_count(),
          'cpu': platform.processor() or platform.machine(), 'cores': os.cpu_count(),
          'huge_pages': hostmem.huge_pages()}  # malloc's large blocks (jaxkd.accel.hostmem)


# Config settings that shape the training trajectory besides the task, model and seed: stored
# with every checkpoint, so a resume with another value is refused (`checkpoint.differences`).
TRAJECTORY_SETTINGS = ('optimizer', 'label_smoothing', 'augment', 'validation_size',
                       'validation_first', 'num_epochs', 'num_steps')


def _plain(value):
  return value.to_dict() if hasattr(value, 'to_dict') else value


def run_metadata(config, task_name: str, task, *, selection: dict, **extra) -> dict:
  """What a run is, stored next to its checkpoints and its final variables (JSON);
  `selection` is the run's `selection_policy` (which split ranks its checkpoints).
  A resume compares all of it but the step, versions and folders (`checkpoint.NOT_COMPARED`)."""
  info = data.info(config.dataset)
  classes = [int(c) for c in (config.get('classes') or ())]
  class_names = [info.class_names[c] for c in classes] if classes else list(info.class_names)
  return {
      'task': task_name,
      'model': config.model,
      'model_overrides': dict(config.get('model_overrides') or {}),
      'dtype': setting(config, 'dtype'),
      'dataset': config.dataset,
      'split': 'train',
      'classes': classes,
      'class_names': class_names,
      'num_classes': task.num_classes,
      'train_per_class': config.get('train_per_class') or 0,
      'seed': config.seed,
      'batch_size': config.batch_size,
      'selection': selection,
      'settings': {k: _plain(config.get(k)) for k in TRAJECTORY_SETTINGS if k in config},
      **extra,
  }


def best_epoch(workdir: str) -> dict:
  """From metrics.jsonl: the number of epochs run, and the test accuracy at the epoch of best
  validation accuracy (model selection that never looks at the test set)."""
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    records = [json.loads(line) for line in f if line.strip()]
  result = {'epochs': max((r['epoch'] for r in records), default=0)}
  evaluated = [r for r in records if 'val_accuracy' in r]
  if evaluated:
    best = max(evaluated, key=lambda r: r['val_accuracy'])  # first epoch wins ties
    result.update(best_epoch=best['epoch'], best_val_accuracy=best['val_accuracy'],
                  best_val_test_accuracy=best['test_accuracy'])
  return result


def enable_compilation_cache(directory: str | None = None) -> None:
  """JAX's persistent compilation cache, so a second run of an experiment skips compiling.

  Programs that compile in under `$JAXKD_CACHE_MIN_COMPILE_SECS` (default 0.5 s) are not
  stored. Also quiets absl's INFO logging (Orbax logs every file operation at INFO).
  """
  from absl import logging
  logging.set_verbosity(logging.WARNING)
  directory = directory or os.environ.get(
      'JAXKD_COMPILATION_CACHE', os.path.expanduser('~/.cache/jaxkd/jax_cache'))
  jax.config.update('jax_compilation_cache_dir', directory)
  jax.config.update('jax_persistent_cache_min_compile_time_secs',
                    float(os.environ.get('JAXKD_CACHE_MIN_COMPILE_SECS', 0.5)))
