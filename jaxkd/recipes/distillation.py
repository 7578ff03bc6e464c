"""Distillation from one or several trained teachers, live or from a teacher-output cache."""
from __future__ import annotations

import os
import time

import numpy as np

from jaxkd import cache, data, losses, models, paths
from jaxkd.distill import (check_cacheable, create_distill_state, inference_apply,
                           make_distill_step, topk_temperature)
from jaxkd.recipes.components import (build_augment, build_model, build_optimizer,
                                      build_parallel, input_transform, load_init, load_task,
                                      load_teacher, make_batches, make_evaluator,
                                      num_train_steps)
from jaxkd.recipes.defaults import setting
from jaxkd.recipes.provenance import run_metadata
from jaxkd.recipes.run import checkpointing, finish, fit_config, selection_policy
from jaxkd.recipes.validate import check_config
from jaxkd.state import tree_sha256


def build_objective(config, *, num_teachers: int, steps_per_epoch: int,
                    num_examples: int = 0, train_labels=None) -> losses.Objective:
  """The run's objective: `config.terms` by name when given (`{name: {'loss': ..., 'weight':
  ..., **hyper-parameters}}`, see `jaxkd.losses.LOSSES`; a setting `<x>_epochs` becomes
  `<x>_steps`), else the classic `config.kd` shorthand (hard + soft).
  Terms take what they read from the run (`Term.from_run`) when the config leaves it out:
  `config.label_smoothing` as `label_smoothing`, `num_examples` (the training split's size)
  as `num_data`, `train_labels` (its labels, e.g. for CRD's other-class negatives)."""
  k = config.kd
  smoothing = setting(config, 'label_smoothing')
  terms = (config.get('terms') or {})
  if terms:
    spec = {}
    for name, settings in terms.items():
      settings = settings.to_dict() if hasattr(settings, 'to_dict') else dict(settings)
      for key in [k for k in settings if k.endswith('_epochs')]:
        settings[key.removesuffix('_epochs') + '_steps'] = round(
            settings.pop(key) * steps_per_epoch)
      spec[name] = settings
    return losses.build_objective(spec, num_teachers=num_teachers, run={
        'label_smoothing': smoothing, 'num_data': num_examples, 'train_labels': train_labels})
  return losses.make_objective(
      hard_weight=k.hard_weight, soft_weight=k.soft_weight, temperature=k.temperature,
      teacher_weights=tuple(k.teacher_weights) or None, multi_teacher=k.multi_teacher,
      num_teachers=num_teachers, label_smoothing=smoothing)


def check_before_work(config, teacher_dirs: list[str], objective: losses.Objective) -> None:
  """What can be refused from the config, the teachers' metadata and shapes alone, before
  any data is read or folder made: a cache of several teachers or of teacher features, a
  top-k cache for terms it cannot feed, taps that name no module of the student or of a
  teacher, a device count this machine does not have."""
  from jaxkd import checkpoint  # local import: orbax is slow to import
  k = config.kd
  if k.cache:
    if len(teacher_dirs) != 1:
      raise ValueError('A teacher cache holds one teacher; use a live teacher for several.')
    check_cacheable(objective)
    if k.cache_topk:
      topk_temperature(objective)
  build_parallel(config)  # num_devices
  info = data.info(config.dataset)
  shape = (1, *info.image_shape)
  num_classes = len(config.get('classes') or ()) or info.num_classes
  models_and_taps = [('the student', build_model(config, num_classes), objective.student_taps)]
  for directory in teacher_dirs if objective.teacher_taps else ():
    final = os.path.join(directory, 'final')
    saved = final if os.path.isdir(final) else directory
    if checkpoint.latest_step(saved) is None:
      continue  # load_teacher says what is missing
    meta = checkpoint.read_metadata(saved)
    teacher = models.build(meta['model'], num_classes=meta['num_classes'],
                           **meta.get('model_overrides', {}))
    models_and_taps.append((f'teacher {directory}', teacher, objective.teacher_taps))
  for who, model, taps in models_and_taps:
    if not taps:
      continue
    known = models.feature_paths(model, shape)
    unknown = [t for t in taps if t and not any(paths.matches(p, (t,)) for p in known)]
    if unknown:
      raise ValueError(f'The objective taps {unknown} of {who} ({type(model).__name__}), '
                       f'which has no such module; its paths: {known}.')


def distill(config, workdir: str) -> dict:
  """Distils the teacher(s) in `config.teacher_dir` (comma-separated for several) into
  `config.model`, live or from a teacher-output cache; writes final_metrics.json.

  The student starts from `config.student_init_dir` (a WORKDIR, e.g. of a source task)
  when set, minus the `config.dont_load` paths. Resumes from WORKDIR/checkpoints, and
  refuses to when they were distilled from a different teacher.
  """
  check_config(config)
  start = time.perf_counter()
  selection = selection_policy(config)
  teacher_dirs = [d for d in config.teacher_dir.split(',') if d]
  if not teacher_dirs:
    raise ValueError('config.teacher_dir is empty; pass --config.teacher_dir=WORKDIR of a '
                     'teacher trained with experiments/train.py.')
  # An unknown loss or setting is refused now, before any data or teacher is read.
  check_before_work(config, teacher_dirs, build_objective(
      config, num_teachers=len(teacher_dirs), steps_per_epoch=1))
  task = load_task(config)
  parallel = build_parallel(config)
  teachers = [load_teacher(d, task, config) for d in teacher_dirs]
  k = config.kd
  objective = build_objective(config, num_teachers=len(teachers),
                              steps_per_epoch=len(task.train_labels) // config.batch_size,
                              num_examples=len(task.train_labels),
                              train_labels=task.train_labels)
  fingerprints = [tree_sha256(variables) for _, variables, _ in teachers]
  student = build_model(config, task.num_classes)
  init_vars, init_info = load_init(student, config, task,
                                   init_dir=config.get('student_init_dir') or '',
                                   dont_load=tuple(config.get('dont_load') or ()))
  metadata = run_metadata(config, 'distill', task, selection=selection,
                          teacher_fingerprints=fingerprints, teacher_dirs=teacher_dirs,
                          kd=k.to_dict(), objective=objective.describe(), **init_info)
  with checkpointing(config, workdir, metadata) as checkpointer:
    augment = build_augment(config)
    columns = None
    if k.cache:
      (teacher_model, teacher_vars, _), = teachers
      transform = input_transform(task, config)
      temperature = topk_temperature(objective) if k.cache_topk else None
      teacher_cache = cache.compute(
          inference_apply(teacher_model), teacher_vars, task.normalize(task.train_images),
          dataset=task.name, split='train', transform=transform,
          teacher_fingerprint=fingerprints[0], dtype=k.cache, topk=k.cache_topk or None,
          temperature=temperature)
      teacher_cache.check(dataset=task.name, split='train', transform=transform,
                          teacher_fingerprint=fingerprints[0], augment=augment,
                          temperature=temperature, num_examples=len(task.train_labels))
      columns = teacher_cache.rows()
    if objective.needs_index:  # each example's row in a term's memory bank
      columns = {**(columns or {}), 'index': np.arange(len(task.train_labels), dtype=np.int32)}
    batches, steps_per_epoch = make_batches(task, config, parallel, columns)
    num_steps = num_train_steps(config, steps_per_epoch)
    tx, schedule = build_optimizer(config, num_steps)
    state = create_distill_state(
        student, tx, objective, teachers=[m for m, _, _ in teachers],
        teacher_variables=[v for _, v, _ in teachers], seed=config.seed,
        input_shape=task.input_shape, variables=init_vars)
    step_fn = make_distill_step(
        student=student, teachers=None if k.cache else [m for m, _, _ in teachers], tx=tx,
        objective=objective, augment=augment, learning_rate_fn=schedule, parallel=parallel,
        cached=bool(k.cache))
    teacher_arg = () if k.cache else tuple(parallel.place_teacher(v) for _, v, _ in teachers)
    evaluate = make_evaluator(student, task, config, parallel)
    state = fit_config(config, workdir, checkpointer, state=parallel.replicate(state),
                       step_fn=step_fn, batches=batches, steps_per_epoch=steps_per_epoch,
                       num_steps=num_steps, parallel=parallel, step_args=(teacher_arg,),
                       evaluate=evaluate, desc=f'distill {config.model}')
    return finish(workdir, parallel.unreplicate(state), evaluate, config, num_steps,
                  time.perf_counter() - start, metadata=metadata,
                  extra={'teacher_fingerprints': fingerprints, 'teacher_dirs': teacher_dirs,
                         'teacher_cache': k.cache or None, **init_info})
