"""Self-distillation from an EMA teacher (`jaxkd.ema`): the student learns from the moving
average of its own past weights; no trained teacher is needed."""
from __future__ import annotations

import os
import time

from jaxkd import ema
from jaxkd.recipes.components import (build_augment, build_model, build_optimizer,
                                      build_parallel, load_init, load_task, make_batches,
                                      make_evaluator, num_train_steps)
from jaxkd.recipes.distillation import build_objective
from jaxkd.recipes.defaults import setting
from jaxkd.recipes.provenance import run_metadata
from jaxkd.recipes.run import checkpointing, finish, fit_config, selection_policy
from jaxkd.recipes.validate import check_config
from jaxkd.state import TrainState


def ema_settings(config) -> dict:
  """`config.ema` (checked by `check_config`): the teacher's `decay` and `ramp_up`."""
  return {'decay': float(setting(config, 'ema.decay')),
          'ramp_up': setting(config, 'ema.ramp_up')}


def ema_teacher(config, workdir: str) -> dict:
  """Trains `config.model` taught by the EMA of its own weights through `config.terms` (or
  the `config.kd` shorthand), the teacher's decay from `config.ema`.

  Evaluations log the student's metrics and the teacher's as `ema_test_accuracy` etc.
  Writes the student as usual (WORKDIR/final, final_metrics.json) and the EMA teacher as a
  finished run of its own in WORKDIR/ema (final/ and final_metrics.json): either can be
  exported, teach or be fine-tuned. Resumes from WORKDIR/checkpoints, teacher included.
  """
  check_config(config)
  start = time.perf_counter()
  selection = selection_policy(config)
  settings = ema_settings(config)
  build_objective(config, num_teachers=1, steps_per_epoch=1)  # refused before any data
  task = load_task(config)
  objective = build_objective(config, num_teachers=1,
                              steps_per_epoch=len(task.train_labels) // config.batch_size)
  student = build_model(config, task.num_classes)
  init_vars, init_info = load_init(student, config, task,
                                   init_dir=config.get('student_init_dir') or '',
                                   dont_load=tuple(config.get('dont_load') or ()))
  metadata = run_metadata(config, 'ema_teacher', task, selection=selection, ema=settings,
                          objective=objective.describe(), **init_info)
  teacher_meta = {**metadata, 'ema_of': workdir}
  parallel = build_parallel(config)
  with checkpointing(config, workdir, metadata,
                     {os.path.join(workdir, 'ema', 'final'): teacher_meta}) as checkpointer:
    batches, steps_per_epoch = make_batches(task, config, parallel)
    num_steps = num_train_steps(config, steps_per_epoch)
    tx, schedule = build_optimizer(config, num_steps)
    state = ema.create_ema_state(student, tx, objective, seed=config.seed,
                                 input_shape=task.input_shape, variables=init_vars)
    step_fn = ema.make_ema_distill_step(
        student=student, tx=tx, objective=objective, augment=build_augment(config),
        learning_rate_fn=schedule, parallel=parallel, **settings)
    evaluate = make_evaluator(student, task, config, parallel)
    state = fit_config(
        config, workdir, checkpointer, state=parallel.replicate(state), step_fn=step_fn,
        batches=batches, steps_per_epoch=steps_per_epoch, num_steps=num_steps,
        parallel=parallel, evaluate=evaluate, desc=f'ema {config.model}',
        evaluate_state=lambda s: {f'ema_{k}': v for k, v in evaluate(s.teacher_variables).items()})
    state = parallel.unreplicate(state)
    wall = time.perf_counter() - start
    teacher = TrainState(step=state.step, params=state.teacher_params,
                         batch_stats=state.teacher_batch_stats, opt_state={}, rng=state.rng)
    teacher_final = finish(os.path.join(workdir, 'ema'), teacher, evaluate, config, num_steps,
                           wall, metadata=teacher_meta)
    return finish(workdir, state, evaluate, config, num_steps, wall, metadata=metadata,
                  extra={'ema': settings, 'ema_test_accuracy': teacher_final['test_accuracy'],
                         'ema_params_sha256': teacher_final['params_sha256'], **init_info})
