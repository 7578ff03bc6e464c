"""Experiment recipes: the edge where an ml_collections config becomes typed library calls.

`experiments/*.py` parse flags and call one function here; everything below is shared by
supervised training, distillation and fine-tuning.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import platform
import time
from typing import Any, Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxkd import data, models, optim, transfer
from jaxkd.augment import Augment
from jaxkd.loop import eval_batches, fit
from jaxkd.parallel import Parallel
from jaxkd.state import TrainState, create_train_state, init_variables, tree_sha256
from jaxkd.steps import make_eval_step, make_train_step, summarize_eval

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
VALIDATION_SEED = 0


@dataclasses.dataclass
class Task:
  """A dataset split into train/test arrays (uint8 images, int32 labels) on the host."""

  name: str
  train_images: np.ndarray
  train_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray
  num_classes: int
  mean: Any
  std: Any
  val_images: np.ndarray | None = None  # held out from train (never the test set)
  val_labels: np.ndarray | None = None

  def normalize(self, images: np.ndarray) -> np.ndarray:
    return ((images.astype(np.float32) / 255.0 - self.mean) / self.std).astype(np.float32)


def load_task(config) -> Task:
  """Loads the config's dataset (optionally a subset of classes) as host arrays."""
  info = data.info(config.dataset)
  data_dir = config.get('data_dir') or None
  train = data.load_arrays(config.dataset, 'train', data_dir=data_dir)
  test = data.load_arrays(config.dataset, 'test', data_dir=data_dir)
  num_classes = info.num_classes
  classes = tuple(config.get('classes') or ())
  if classes:
    per_class = config.get('train_per_class') or None
    train = data.subset_classes(*train, classes, per_class=per_class, seed=config.seed)
    test = data.subset_classes(*test, classes)
    num_classes = len(classes)
  val = (None, None)
  validation_size = config.get('validation_size', 0)
  if validation_size:
    if not 0 < validation_size < len(train[1]):
      raise ValueError(f'validation_size={validation_size} must be in 1..{len(train[1]) - 1} '
                       f'(the training split has {len(train[1])} examples).')
    # One fixed split for every run and seed, so runs of a table share their validation set.
    order = np.random.default_rng(VALIDATION_SEED).permutation(len(train[1]))
    held, kept = np.sort(order[:validation_size]), np.sort(order[validation_size:])
    val = (train[0][held], train[1][held])
    train = (train[0][kept], train[1][kept])
  return Task(config.dataset, *train, *test, num_classes=num_classes,
              mean=np.asarray(info.mean, np.float32), std=np.asarray(info.std, np.float32),
              val_images=val[0], val_labels=val[1])


def build_model(config, num_classes: int):
  overrides = dict(config.get('model_overrides') or {})
  dtype = config.get('dtype', 'float32')
  if dtype != 'float32':
    overrides['dtype'] = DTYPES[dtype]
  return models.build(config.model, num_classes=num_classes, **overrides)


def build_optimizer(config, total_steps: int):
  o = config.optimizer
  schedule = optim.make_schedule(
      name=o.schedule, learning_rate=o.learning_rate, total_steps=total_steps,
      warmup_steps=o.get('warmup_steps', 0), boundaries=tuple(o.get('boundaries', ())),
      decay_factor=o.get('decay_factor', 0.1))
  tx = optim.make_optimizer(name=o.name, learning_rate=schedule, momentum=o.get('momentum', 0.9),
                            nesterov=o.get('nesterov', False),
                            weight_decay=o.get('weight_decay', 0.0),
                            clip_norm=o.get('clip_norm', 0.0))
  return tx, schedule


def build_parallel(config) -> Parallel:
  p = config.get('parallel') or {}
  return Parallel(mode=p.get('mode', 'jit'), num_devices=p.get('num_devices') or None,
                  shard_teacher=p.get('shard_teacher', False))


def build_augment(config) -> Augment:
  a = config.get('augment') or {}
  return Augment(crop_padding=a.get('crop_padding', 0), flip=a.get('flip', False))


def make_batches(task: Task, config, parallel: Parallel,
                 extras: dict | None = None) -> tuple[Callable, int]:
  """The in-memory fast path: the split lives on device, batches are gathered under jit,
  each already placed where the step wants it (one process; several assemble theirs)."""
  dataset = data.InMemoryDataset(
      task.train_images, task.train_labels, batch_size=config.batch_size, seed=config.seed,
      mean=task.mean, std=task.std, extras=extras,
      batch_sharding=parallel.batch_sharding() if jax.process_count() == 1 else None)
  return (lambda epoch, start: dataset.epoch(epoch, start_step=start)), dataset.steps_per_epoch


def make_evaluator(model, task: Task, config, parallel: Parallel) -> Callable[[Any], dict]:
  """`evaluate(variables) -> {'test_accuracy': ..., 'val_accuracy': ..., ...}` over the
  whole test split and the validation split if there is one (padded last batches)."""
  eval_step = make_eval_step(model=model, num_classes=task.num_classes, parallel=parallel)
  batch_size = config.get('eval_batch_size', 1000)
  batch_size -= batch_size % parallel.size
  splits = {'test': (task.test_images, task.test_labels)}
  if task.val_labels is not None:
    splits['val'] = (task.val_images, task.val_labels)

  def evaluate(variables) -> dict:
    results = {}
    for split, (images, labels) in splits.items():
      total = None
      for batch in eval_batches(images, labels, batch_size=batch_size, normalize=task.normalize):
        sums = parallel.unreplicate(eval_step(variables, parallel.shard_batch(batch)))
        total = sums if total is None else jax.tree.map(jnp.add, total, sums)
      results.update(_prefixed(split, summarize_eval(jax.device_get(total))))
    return results

  return evaluate


def num_train_steps(config, steps_per_epoch: int) -> int:
  return config.get('num_steps') or config.num_epochs * steps_per_epoch


def write_json(path: str, record: dict) -> None:
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(record, f, indent=2, sort_keys=True)
  os.replace(tmp, path)


def machine() -> dict:
  device = jax.devices()[0]
  return {'device_kind': device.device_kind, 'platform': device.platform,
          'device_count': jax.device_count(), 'cpu': platform.processor() or platform.machine(),
          'cores': os.cpu_count()}


def run_metadata(config, task_name: str, task: Task, **extra) -> dict:
  """What a run is, stored next to its checkpoints and its final variables (JSON)."""
  info = data.info(config.dataset)
  classes = [int(c) for c in (config.get('classes') or ())]
  class_names = [info.class_names[c] for c in classes] if classes else list(info.class_names)
  return {
      'task': task_name,
      'model': config.model,
      'model_overrides': dict(config.get('model_overrides') or {}),
      'dtype': config.get('dtype', 'float32'),
      'dataset': config.dataset,
      'split': 'train',
      'classes': classes,
      'class_names': class_names,
      'num_classes': task.num_classes,
      'train_per_class': config.get('train_per_class') or 0,
      'seed': config.seed,
      'batch_size': config.batch_size,
      **extra,
  }


@contextlib.contextmanager
def checkpointing(config, workdir: str, metadata: dict) -> Iterator[Any]:
  """The run's `Checkpointer` in WORKDIR/checkpoints (None when `checkpoint_every` is 0),
  closed (pending saves finished) on exit.

  Opening it refuses, before writing anything, a workdir whose checkpoints belong to
  another run, e.g. a distillation from a different teacher.
  """
  if not config.get('checkpoint_every', 0):
    yield None
    return
  from jaxkd import checkpoint  # local import: orbax is slow to import
  checkpointer = checkpoint.Checkpointer(
      os.path.join(workdir, 'checkpoints'), metadata=metadata,
      keep_last=config.get('keep_last', 2), keep_best=config.get('keep_best', 0),
      best_metric=config.get('best_metric', 'test_accuracy'),
      best_mode=config.get('best_mode', 'max'))
  with checkpointer:
    yield checkpointer


def _fit(config, workdir: str, checkpointer, **kwargs) -> TrainState:
  """`fit` with the config's logging and checkpoint cadence."""
  return fit(batch_size=config.batch_size, workdir=workdir, log_every=config.get('log_every', 50),
             checkpointer=checkpointer, checkpoint_every=config.get('checkpoint_every', 0),
             eval_every=config.get('eval_every', 1), **kwargs)


def load_init(model, config, task: Task, *, init_dir: str = '',
              dont_load: Sequence[str] = ()) -> tuple[dict | None, dict]:
  """Initial variables loaded from the checkpoint in `init_dir` (a WORKDIR), or None.

  The model's fresh init (the same as `create_train_state`'s) with every leaf not covered
  by `dont_load` taken from the checkpoint; plus what to record about it (`init_dir`,
  `init_fingerprint`, the source's model and classes).
  """
  if not init_dir:
    return None, {}
  init_key, _ = jax.random.split(jax.random.key(config.seed))
  fresh = init_variables(model, key=init_key, input_shape=(1,) + task.train_images.shape[1:])
  variables, meta = transfer.load_pretrained(init_dir, fresh, dont_load=tuple(dont_load))
  return variables, {'init_dir': init_dir, 'init_fingerprint': tree_sha256(variables),
                     'init_model': meta.get('model'), 'init_classes': meta.get('classes')}


def train(config, workdir: str) -> dict:
  """Supervised training of a teacher or a source-task model; writes final_metrics.json.

  Resumes from the newest checkpoint in WORKDIR/checkpoints (see `open_checkpointer`).
  """
  start = time.perf_counter()
  task = load_task(config)
  metadata = run_metadata(config, 'train', task)
  with checkpointing(config, workdir, metadata) as checkpointer:
    parallel = build_parallel(config)
    model = build_model(config, task.num_classes)
    batches, steps_per_epoch = make_batches(task, config, parallel)
    num_steps = num_train_steps(config, steps_per_epoch)
    tx, schedule = build_optimizer(config, num_steps)
    state = create_train_state(model, tx, seed=config.seed,
                               input_shape=(1,) + task.train_images.shape[1:])
    state = parallel.replicate(state)
    step_fn = make_train_step(model=model, tx=tx,
                              label_smoothing=config.get('label_smoothing', 0.0),
                              augment=build_augment(config), learning_rate_fn=schedule,
                              parallel=parallel)
    evaluate = make_evaluator(model, task, config, parallel)
    eval_state = lambda s, epoch: evaluate(s.variables)
    state = _fit(config, workdir, checkpointer, state=state, step_fn=step_fn, batches=batches,
                 steps_per_epoch=steps_per_epoch, num_steps=num_steps, parallel=parallel,
                 evaluate=eval_state, desc=f'train {config.model}')
  state = parallel.unreplicate(state)
  final = finish(workdir, state, evaluate, config, num_steps, time.perf_counter() - start,
                 metadata=metadata)
  return final


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


def _prefixed(prefix: str, summary: dict) -> dict:
  return {f'{prefix}_{k}': v for k, v in summary.items()}


def finish(workdir: str, state: TrainState, evaluate, config, num_steps: int,
           wall_seconds: float, extra: dict | None = None, metadata: dict | None = None) -> dict:
  """Final test metrics, `params_sha256`, and the student's variables saved for later use.

  The variables go to WORKDIR/final (step `num_steps`) with `metadata` (default: the model
  and data of `config`), where `load_teacher` and `transfer.load_pretrained` read them.
  """
  from jaxkd import checkpoint  # local import: orbax is slow to import
  final = {
      **evaluate(state.variables),
      **best_epoch(workdir),
      'params_sha256': tree_sha256(state.params),
      'steps': num_steps,
      'wall_seconds': wall_seconds,
      'model': config.model,
      'dataset': config.dataset,
      'machine': machine(),
      **(extra or {}),
  }
  if metadata is None:
    metadata = {'model': config.model,
                'model_overrides': dict(config.get('model_overrides') or {}),
                'dataset': config.dataset,
                'num_classes': len(final['test_per_class_accuracy']),
                'classes': list(config.get('classes') or ())}
  metadata = {**metadata, 'params_sha256': final['params_sha256'],
              'test_accuracy': final['test_accuracy']}
  checkpoint.save_variables(os.path.join(workdir, 'final'), jax.device_get(state.variables),
                            metadata=metadata, step=num_steps)
  write_json(os.path.join(workdir, 'final_metrics.json'), final)
  return final


def enable_compilation_cache(directory: str | None = None) -> None:
  """JAX's persistent compilation cache, so a second run of an experiment skips compiling.

  Also quiets absl's INFO logging (Orbax logs every file operation at INFO).
  """
  from absl import logging
  logging.set_verbosity(logging.WARNING)
  directory = directory or os.environ.get(
      'JAXKD_COMPILATION_CACHE', os.path.expanduser('~/.cache/jaxkd/jax_cache'))
  jax.config.update('jax_compilation_cache_dir', directory)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)


def load_teacher(directory: str, task: 'Task', config) -> tuple[Any, Any, dict]:
  """A teacher written by `train` (its WORKDIR or WORKDIR/final): (model, variables, meta)."""
  from jaxkd import checkpoint
  final = os.path.join(directory, 'final')
  variables, meta = checkpoint.load_variables(final if os.path.isdir(final) else directory)
  classes = list(config.get('classes') or ())
  if meta['dataset'] != task.name or list(meta.get('classes') or []) != classes:
    raise ValueError(
        f"Teacher {directory!r} was trained on {meta['dataset']} classes "
        f"{meta.get('classes') or 'all'}, but this run is on {task.name} classes "
        f"{classes or 'all'}; distil on the teacher's task or fine-tune the teacher first.")
  model = models.build(meta['model'], num_classes=meta['num_classes'],
                       **meta.get('model_overrides', {}))
  return model, variables, meta


def input_transform(task: 'Task', config) -> dict:
  """What a teacher cache depends on besides the teacher: data, subset and normalisation."""
  return {'classes': list(config.get('classes') or ()),
          'train_per_class': config.get('train_per_class') or 0,
          'subset_seed': config.seed if config.get('classes') else None,
          'mean': np.asarray(task.mean).tolist(), 'std': np.asarray(task.std).tolist()}


def distill(config, workdir: str) -> dict:
  """Distils the teacher(s) in `config.teacher_dir` (comma-separated for several) into
  `config.model`, live or from a teacher-output cache; writes final_metrics.json.

  The student starts from `config.student_init_dir` (a WORKDIR, e.g. of a source task)
  when set, minus the `config.dont_load` paths. Resumes from WORKDIR/checkpoints, and
  refuses to when they were distilled from a different teacher.
  """
  from jaxkd import cache, losses
  from jaxkd.distill import inference_apply, make_distill_step
  start = time.perf_counter()
  task = load_task(config)
  parallel = build_parallel(config)
  teacher_dirs = [d for d in config.teacher_dir.split(',') if d]
  if not teacher_dirs:
    raise ValueError('config.teacher_dir is empty; pass --config.teacher_dir=WORKDIR of a '
                     'teacher trained with experiments/train.py.')
  teachers = [load_teacher(d, task, config) for d in teacher_dirs]
  k = config.kd
  objective = losses.make_objective(
      hard_weight=k.hard_weight, soft_weight=k.soft_weight, temperature=k.temperature,
      teacher_weights=tuple(k.teacher_weights) or None, multi_teacher=k.multi_teacher,
      num_teachers=len(teachers))
  fingerprints = [tree_sha256(variables) for _, variables, _ in teachers]
  student = build_model(config, task.num_classes)
  init_vars, init_info = load_init(student, config, task,
                                   init_dir=config.get('student_init_dir') or '',
                                   dont_load=tuple(config.get('dont_load') or ()))
  metadata = run_metadata(config, 'distill', task, teacher_fingerprints=fingerprints,
                          teacher_dirs=teacher_dirs, kd=k.to_dict(), **init_info)
  with checkpointing(config, workdir, metadata) as checkpointer:
    augment = build_augment(config)
    extras = None
    if k.cache:
      if len(teachers) != 1:
        raise ValueError('A teacher cache holds one teacher; use a live teacher for several.')
      (teacher_model, teacher_vars, _), = teachers
      teacher_cache = cache.compute(
          inference_apply(teacher_model), teacher_vars, task.normalize(task.train_images),
          dataset=task.name, split='train', transform=input_transform(task, config),
          teacher_fingerprint=fingerprints[0], dtype=k.cache, topk=k.cache_topk or None,
          temperature=k.temperature if k.cache_topk else None)
      teacher_cache.check(dataset=task.name, split='train',
                          transform=input_transform(task, config),
                          teacher_fingerprint=fingerprints[0], augment=augment,
                          temperature=k.temperature, num_examples=len(task.train_labels))
      extras = teacher_cache.rows()
    batches, steps_per_epoch = make_batches(task, config, parallel, extras)
    num_steps = num_train_steps(config, steps_per_epoch)
    tx, schedule = build_optimizer(config, num_steps)
    state = create_train_state(student, tx, seed=config.seed, variables=init_vars,
                               input_shape=(1,) + task.train_images.shape[1:])
    step_fn = make_distill_step(
        student=student, teachers=None if k.cache else [m for m, _, _ in teachers], tx=tx,
        objective=objective, augment=augment, learning_rate_fn=schedule, parallel=parallel,
        cached=bool(k.cache))
    teacher_arg = () if k.cache else tuple(parallel.place_teacher(v) for _, v, _ in teachers)
    state = parallel.replicate(state)
    evaluate = make_evaluator(student, task, config, parallel)
    state = _fit(config, workdir, checkpointer, state=state, step_fn=step_fn, batches=batches,
                 steps_per_epoch=steps_per_epoch, num_steps=num_steps, parallel=parallel,
                 extras=(teacher_arg,),
                 evaluate=lambda s, epoch: evaluate(s.variables),
                 desc=f'distill {config.model}')
  state = parallel.unreplicate(state)
  return finish(workdir, state, evaluate, config, num_steps, time.perf_counter() - start,
                extra={'teacher_fingerprints': fingerprints, 'teacher_dirs': teacher_dirs,
                       'teacher_cache': k.cache or None, **init_info},
                metadata=metadata)


def finetune(config, workdir: str) -> dict:
  """Fine-tunes `config.model` on the config's task from `config.init_dir` (a source-task
  WORKDIR; '' trains from scratch), the `config.dont_load` paths (the head) re-initialised.

  `config.finetune.method`: 'lp' trains the head only, 'ft' everything, 'lp_ft' runs LP for
  `finetune.lp_epochs` in WORKDIR/lp and then FT from its result with a fresh optimizer.
  `finetune.frozen` (regexes on paths inside a collection) never train, their BatchNorm
  statistics included; `finetune.layer_decay` < 1 turns on layer-wise learning-rate decay;
  `finetune.unfreeze_every` > 0 unfreezes one layer every that many steps, head first.
  Writes final_metrics.json and WORKDIR/final (a teacher for `distill` on this task).
  """
  f = config.finetune
  methods = (*transfer.METHODS, 'lp_ft')
  if f.method not in methods:
    raise ValueError(f'Unknown finetune.method {f.method!r}; choose one of {list(methods)}.')
  dont_load = tuple(config.get('dont_load') or ())
  if f.method != 'lp_ft':
    return _finetune_stage(config, workdir, method=f.method, init_dir=config.init_dir,
                           dont_load=dont_load)
  lp_config = config.copy_and_resolve_references()
  with lp_config.unlocked():
    lp_config.num_epochs, lp_config.num_steps = f.lp_epochs, f.get('lp_steps', 0)
    lp_config.optimizer.learning_rate = f.lp_learning_rate or config.optimizer.learning_rate
  lp_dir = os.path.join(workdir, 'lp')
  lp = _finetune_stage(lp_config, lp_dir, method='lp', init_dir=config.init_dir,
                       dont_load=dont_load)
  return _finetune_stage(config, workdir, method='ft', init_dir=lp_dir, dont_load=(),
                         extra={'lp_test_accuracy': lp['test_accuracy'], 'lp_steps': lp['steps'],
                                'source_dir': config.init_dir})


def _finetune_stage(config, workdir: str, *, method: str, init_dir: str,
                    dont_load: Sequence[str], extra: dict | None = None) -> dict:
  """One fine-tuning run (LP or FT) from `init_dir` into `workdir`."""
  start = time.perf_counter()
  f = config.finetune
  task = load_task(config)
  parallel = build_parallel(config)
  model = build_model(config, task.num_classes)
  input_shape = (1,) + task.train_images.shape[1:]
  init_vars, init_info = load_init(model, config, task, init_dir=init_dir, dont_load=dont_load)
  recipe = {'method': method, 'frozen': list(f.frozen), 'layer_decay': f.layer_decay,
            'unfreeze_every': f.unfreeze_every}
  metadata = run_metadata(config, 'finetune', task, finetune=recipe, **init_info)
  with checkpointing(config, workdir, metadata) as checkpointer:
    batches, steps_per_epoch = make_batches(task, config, parallel)
    num_steps = num_train_steps(config, steps_per_epoch)
    if init_vars is None:
      init_key, _ = jax.random.split(jax.random.key(config.seed))
      init_vars = init_variables(model, key=init_key, input_shape=input_shape)
    order = transfer.layer_order(model, input_shape=input_shape)
    rules = dict(order=order, frozen=tuple(f.frozen), trainable=transfer.METHODS[method],
                 unfreeze_every=f.unfreeze_every)
    tx = transfer.partition_optimizer(lambda: build_optimizer(config, num_steps)[0],
                                      init_vars['params'], layer_decay=f.layer_decay, **rules)
    _, schedule = build_optimizer(config, num_steps)
    param_starts = transfer.unfreeze_steps(init_vars['params'], **rules)
    stats_starts = transfer.unfreeze_steps(init_vars.get('batch_stats', {}), **rules)
    state = parallel.replicate(create_train_state(model, tx, seed=config.seed,
                                                  input_shape=input_shape, variables=init_vars))
    step_fn = transfer.make_finetune_step(
        model=model, tx=tx, param_starts=param_starts, stats_starts=stats_starts,
        label_smoothing=config.get('label_smoothing', 0.0), augment=build_augment(config),
        learning_rate_fn=schedule, parallel=parallel)
    evaluate = make_evaluator(model, task, config, parallel)
    state = _fit(config, workdir, checkpointer, state=state, step_fn=step_fn, batches=batches,
                 steps_per_epoch=steps_per_epoch, num_steps=num_steps, parallel=parallel,
                 evaluate=lambda s, epoch: evaluate(s.variables),
                 desc=f'{method} {config.model}')
  state = parallel.unreplicate(state)
  trained = sum(int(np.prod(leaf.shape)) for path, leaf in transfer.flatten(state.params).items()
                if param_starts[path] is not None)
  return finish(workdir, state, evaluate, config, num_steps, time.perf_counter() - start,
                extra={'method': method, 'trainable_params': trained, **init_info,
                       **(extra or {})},
                metadata=metadata)
