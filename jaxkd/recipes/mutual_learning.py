"""Deep mutual learning: a cohort of students trained together, each taught by the others
(`jaxkd.mutual`), checkpointed as one state and exported member by member."""
from __future__ import annotations

import os
import time

from jaxkd import mutual as dml
from jaxkd.recipes.components import (build_augment, build_model, build_optimizer,
                                      build_parallel, load_task, make_batches, make_evaluator,
                                      num_train_steps)
from jaxkd.recipes.distillation import build_objective
from jaxkd.recipes.environment import run_provenance, started_before
from jaxkd.recipes.provenance import run_metadata, write_json
from jaxkd.recipes.run import checkpointing, finish, fit_config, selection_policy
from jaxkd.recipes.validate import check_config
from jaxkd.state import tree_sha256


def cohort_models(config) -> list[str]:
  """`config.cohort` ('lenet5_half,lenet5_half'): the members' model names, two or more."""
  names = [name.strip() for name in str(config.get('cohort') or '').split(',') if name.strip()]
  if len(names) < 2:
    raise ValueError(f'cohort={config.get("cohort")!r} names {len(names)} model(s); mutual '
                     "learning needs at least 2, e.g. --config.cohort=lenet5_half,lenet5_half.")
  return names


def member_config(config, name: str):
  """The config of one member: the cohort's, with `model` set to the member's."""
  member = config.copy_and_resolve_references()
  with member.unlocked():
    member.model = name
  return member


def mutual(config, workdir: str) -> dict:
  """Trains the cohort `config.cohort` with `config.terms` (or the `config.kd` shorthand)
  as every member's objective, its peers as teachers.

  Writes WORKDIR/final_metrics.json (the cohort: each member's test accuracy, and their
  mean as `test_accuracy`) and each member as a finished run in WORKDIR/members/<i>
  (final/ and final_metrics.json), which can teach, be evaluated or be fine-tuned.
  Evaluations log `m<i>_test_accuracy` etc. per member and the cohort's means, which rank
  the best checkpoints. Resumes from WORKDIR/checkpoints (the whole cohort).
  """
  check_config(config)
  start = time.perf_counter()
  selection = selection_policy(config)
  names = cohort_models(config)
  build_objective(config, num_teachers=len(names) - 1, steps_per_epoch=1)  # refused early
  task = load_task(config)
  objective = build_objective(config, num_teachers=len(names) - 1,
                              steps_per_epoch=len(task.train_labels) // config.batch_size)
  members = [build_model(member_config(config, name), task.num_classes) for name in names]
  dml.check_cohort_objective(objective, len(members))
  metadata = run_metadata(config, 'mutual', task, selection=selection,
                          objective=objective.describe(), cohort=names)
  metadata['model'] = ','.join(names)
  member_metas = [{**metadata, 'model': name, 'cohort_member': i, 'cohort_dir': workdir}
                  for i, name in enumerate(names)]
  finals = {os.path.join(workdir, 'members', str(i), 'final'): meta
            for i, meta in enumerate(member_metas)}
  parallel = build_parallel(config)
  with checkpointing(config, workdir, metadata, finals) as checkpointer:
    batches, steps_per_epoch = make_batches(task, config, parallel)
    num_steps = num_train_steps(config, steps_per_epoch)
    tx, schedule = build_optimizer(config, num_steps)
    state = dml.create_cohort_state(members, tx, seed=config.seed,
                                       input_shape=task.input_shape)
    step_fn = dml.make_mutual_step(models=members, tx=tx, objective=objective,
                                      augment=build_augment(config), learning_rate_fn=schedule,
                                      parallel=parallel)
    evaluators = [make_evaluator(m, task, config, parallel) for m in members]
    evaluate = lambda variables: cohort_metrics(  # noqa: E731
        [e(v) for e, v in zip(evaluators, variables)])
    state = fit_config(config, workdir, checkpointer, state=parallel.replicate(state),
                       step_fn=step_fn, batches=batches, steps_per_epoch=steps_per_epoch,
                       num_steps=num_steps, parallel=parallel, evaluate=evaluate,
                       desc=f'mutual {",".join(names)}')
    state = parallel.unreplicate(state)
    wall = time.perf_counter() - start
    results = []
    for i, (name, evaluator) in enumerate(zip(names, evaluators)):
      member_dir = os.path.join(workdir, 'members', str(i))
      final = finish(member_dir, state.member(i), evaluator, member_config(config, name),
                     num_steps, wall, metadata=member_metas[i],
                     extra={'cohort': names, 'cohort_member': i})
      results.append({'model': name, 'workdir': member_dir, **{
          k: final[k] for k in ('test_accuracy', 'test_loss', 'params_sha256')}})
    final = {**cohort_metrics([{k: r[k] for k in ('test_accuracy', 'test_loss')}
                               for r in results]),
             'members': results, 'params_sha256': tree_sha256(state.params), 'steps': num_steps,
             'wall_seconds': wall, 'model': metadata['model'], 'dataset': config.dataset,
             'selection': selection,
             'provenance': run_provenance(config, started=started_before(wall))}
    write_json(os.path.join(workdir, 'final_metrics.json'), final)
    return final


def cohort_metrics(per_member: list[dict]) -> dict:
  """Each member's scalar metrics as `m<i>_<name>`, and their means under the plain names."""
  metrics = {}
  for key in per_member[0]:
    values = [m[key] for m in per_member]
    if all(isinstance(v, (int, float)) for v in values):
      metrics[key] = sum(values) / len(values)
      metrics.update({f'm{i}_{key}': v for i, v in enumerate(values)})
  return metrics
