"""Fine-tuning a pre-trained model on a target task: linear probe, full fine-tune, LP-FT,
frozen layers, layer-wise learning-rate decay and gradual unfreezing."""
from __future__ import annotations

import os
import time
from typing import Sequence

import numpy as np

from jaxkd import paths, transfer
from jaxkd.recipes.components import (build_augment, build_model, build_optimizer,
                                      build_parallel, load_init, load_task, make_batches,
                                      make_evaluator, num_train_steps)
from jaxkd.recipes.defaults import setting
from jaxkd.recipes.provenance import run_metadata
from jaxkd.recipes.run import checkpointing, finish, fit_config, selection_policy
from jaxkd.recipes.validate import check_config
from jaxkd.state import create_train_state, fresh_variables


def finetune(config, workdir: str) -> dict:
  """Fine-tunes `config.model` on the config's task from `config.init_dir` (a source-task
  WORKDIR; '' trains from scratch), the `config.dont_load` paths (the head) re-initialized.

  `config.finetune.method`: 'lp' trains the head only, 'ft' everything, 'lp_ft' runs LP for
  `finetune.lp_epochs` in WORKDIR/lp and then FT from its result with a fresh optimizer.
  `finetune.frozen` (regexes on paths inside a collection) never train, their BatchNorm
  statistics included; `finetune.layer_decay` < 1 turns on layer-wise learning-rate decay;
  `finetune.unfreeze_every` > 0 unfreezes one layer every that many steps, head first.
  Writes final_metrics.json and WORKDIR/final (a teacher for `distill` on this task).
  """
  check_config(config)
  f = config.finetune
  dont_load = tuple(config.get('dont_load') or ())
  selection_policy(config)  # refused before the LP stage runs, not after it
  if f.method != 'lp_ft':
    return _finetune_stage(config, workdir, method=f.method, init_dir=config.init_dir,
                           dont_load=dont_load)
  lp_config = config.copy_and_resolve_references()
  with lp_config.unlocked():
    lp_config.num_epochs, lp_config.num_steps = f.lp_epochs, setting(config, 'finetune.lp_steps')
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
  selection = selection_policy(config)
  task = load_task(config)
  parallel = build_parallel(config)
  model = build_model(config, task.num_classes)
  init_vars, init_info = load_init(model, config, task, init_dir=init_dir, dont_load=dont_load)
  recipe = {'method': method, 'frozen': list(f.frozen), 'layer_decay': f.layer_decay,
            'unfreeze_every': f.unfreeze_every}
  metadata = run_metadata(config, 'finetune', task, selection=selection, finetune=recipe,
                          **init_info)
  with checkpointing(config, workdir, metadata) as checkpointer:
    batches, steps_per_epoch = make_batches(task, config, parallel)
    num_steps = num_train_steps(config, steps_per_epoch)
    if init_vars is None:
      init_vars = fresh_variables(model, seed=config.seed, input_shape=task.input_shape)
    order = transfer.layer_order(model, input_shape=task.input_shape)
    rules = dict(order=order, frozen=tuple(f.frozen), trainable=transfer.METHODS[method],
                 unfreeze_every=f.unfreeze_every)
    tx = transfer.partition_optimizer(lambda: build_optimizer(config, num_steps)[0],
                                      init_vars['params'], layer_decay=f.layer_decay, **rules)
    _, schedule = build_optimizer(config, num_steps)
    param_starts = transfer.unfreeze_steps(init_vars['params'], **rules)
    stats_starts = transfer.unfreeze_steps(init_vars.get('batch_stats', {}), **rules)
    state = create_train_state(model, tx, seed=config.seed, input_shape=task.input_shape,
                               variables=init_vars)
    step_fn = transfer.make_finetune_step(
        model=model, tx=tx, param_starts=param_starts, stats_starts=stats_starts,
        label_smoothing=setting(config, 'label_smoothing'), augment=build_augment(config),
        learning_rate_fn=schedule, parallel=parallel)
    evaluate = make_evaluator(model, task, config, parallel)
    state = fit_config(config, workdir, checkpointer, state=parallel.replicate(state),
                       step_fn=step_fn, batches=batches, steps_per_epoch=steps_per_epoch,
                       num_steps=num_steps, parallel=parallel, evaluate=evaluate,
                       desc=f'{method} {config.model}')
    state = parallel.unreplicate(state)
    trained = sum(int(np.prod(leaf.shape)) for path, leaf in paths.flatten(state.params).items()
                  if param_starts[path] is not None)
    return finish(workdir, state, evaluate, config, num_steps, time.perf_counter() - start,
                  metadata=metadata,
                  extra={'method': method, 'trainable_params': trained, **init_info,
                         **(extra or {})})
