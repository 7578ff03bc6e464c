"""Supervised training: a teacher, a student alone, or a source-task model."""
from __future__ import annotations

import time

from jaxkd.recipes.components import (build_augment, build_model, build_optimizer,
                                      build_parallel, load_task, make_batches, make_evaluator,
                                      num_train_steps)
from jaxkd.recipes.defaults import setting
from jaxkd.recipes.provenance import run_metadata
from jaxkd.recipes.run import checkpointing, finish, fit_config, selection_policy
from jaxkd.recipes.validate import check_config
from jaxkd.state import create_train_state
from jaxkd.steps import make_train_step


def train(config, workdir: str) -> dict:
  """Supervised training of `config.model` on the config's task; writes
  final_metrics.json and WORKDIR/final. Resumes from the newest checkpoint in
  WORKDIR/checkpoints."""
  check_config(config)
  start = time.perf_counter()
  selection = selection_policy(config)
  task = load_task(config)
  metadata = run_metadata(config, 'train', task, selection=selection)
  with checkpointing(config, workdir, metadata) as checkpointer:
    parallel = build_parallel(config)
    model = build_model(config, task.num_classes)
    batches, steps_per_epoch = make_batches(task, config, parallel)
    num_steps = num_train_steps(config, steps_per_epoch)
    tx, schedule = build_optimizer(config, num_steps)
    state = create_train_state(model, tx, seed=config.seed, input_shape=task.input_shape)
    step_fn = make_train_step(model=model, tx=tx,
                              label_smoothing=setting(config, 'label_smoothing'),
                              augment=build_augment(config), learning_rate_fn=schedule,
                              parallel=parallel)
    evaluate = make_evaluator(model, task, config, parallel)
    state = fit_config(config, workdir, checkpointer, state=parallel.replicate(state),
                       step_fn=step_fn, batches=batches, steps_per_epoch=steps_per_epoch,
                       num_steps=num_steps, parallel=parallel, evaluate=evaluate,
                       desc=f'train {config.model}')
    return finish(workdir, parallel.unreplicate(state), evaluate, config, num_steps,
                  time.perf_counter() - start, metadata=metadata)
