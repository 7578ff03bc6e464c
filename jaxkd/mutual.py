"""Deep mutual learning (Zhang et al., CVPR 2018): a cohort of students, each taught by
the others, trained together in one compiled step.

Every member ``i`` minimises its own objective with its peers as teachers,

    L_i = sum_k w_k * term_k(student = member i, teachers = members j != i)

(the paper: ``L_i = CE(p_i, y) + 1/(N-1) sum_{j != i} KL(p_j || p_i)``, i.e. terms `ce` and `kd`
at T = 1). Peers' outputs enter under `stop_gradient`, so the gradient of ``sum_i L_i``
w.r.t. member ``i``'s parameters is the gradient of ``L_i`` alone: one backward pass gives
every member its own update, applied by its own optimizer state. All members update
simultaneously from the same batch (as the authors' released code and most
re-implementations do; the paper's Algorithm 1 updates them one after the other).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxkd import losses
from jaxkd.augment import Augment
from jaxkd.parallel import Parallel
from jaxkd.state import TrainState, fresh_variables, init_variables, model_variables, seed_keys
from jaxkd.steps import augmented_batch, pmean, student_forward

PyTree = Any


@flax.struct.dataclass
class CohortState:
  """The cohort's train state: one entry per member in `params`, `batch_stats` and
  `opt_state` (tuples), one step counter and one key for the shared batch."""

  step: jax.Array
  params: tuple
  batch_stats: tuple
  opt_state: tuple
  rng: jax.Array

  @property
  def size(self) -> int:
    return len(self.params)

  @property
  def variables(self) -> tuple[dict, ...]:
    """Each member's variables in the layout `Module.apply` expects."""
    return tuple(model_variables(p, b) for p, b in zip(self.params, self.batch_stats))

  def member(self, index: int) -> TrainState:
    """Member `index` as a plain `TrainState` (exported, evaluated, fine-tuned alone)."""
    return TrainState(step=self.step, params=self.params[index],
                      batch_stats=self.batch_stats[index], opt_state=self.opt_state[index],
                      rng=self.rng)


def member_init_key(seed: int, index: int) -> jax.Array:
  """Member `index`'s initialisation key: member 0 starts as a supervised run of `seed`
  does (so the cohort pairs with the student alone), member i > 0 from `fold_in(key, i)`."""
  init_key, _ = seed_keys(seed)
  return init_key if index == 0 else jax.random.fold_in(init_key, index)


def create_cohort_state(models: Sequence[nn.Module], tx: optax.GradientTransformation, *,
                        seed: int, input_shape) -> CohortState:
  """Fresh cohort: each member initialised from `member_init_key(seed, i)`, with its own
  optimizer state."""
  if len(models) < 2:
    raise ValueError(f'mutual learning needs a cohort of at least 2 models, got {len(models)}.')
  variables = [fresh_variables(m, seed=seed, input_shape=input_shape) if i == 0 else
               init_variables(m, key=member_init_key(seed, i), input_shape=input_shape)
               for i, m in enumerate(models)]
  params = tuple(v['params'] for v in variables)
  return CohortState(step=jnp.zeros((), jnp.int32), params=params,
                     batch_stats=tuple(v.get('batch_stats', {}) for v in variables),
                     opt_state=tuple(tx.init(p) for p in params),
                     rng=jax.random.key_data(seed_keys(seed)[1]))


def check_cohort_objective(objective: losses.Objective, size: int) -> None:
  """Refuses what a cohort cannot run: terms owning parameters or state (one set would be
  shared by all members), feature taps (members may differ in architecture)."""
  if objective.owns_variables:
    owners = [name for name, _, term in objective.terms if term.owns_params or term.owns_state]
    raise ValueError(f'mutual learning runs terms that own no parameters or state; {owners} '
                     'do. Use logit terms such as kd, reverse_kl, jsd, dkd, dist.')
  if objective.student_taps or objective.teacher_taps:
    raise ValueError('mutual learning compares the members\' logits; feature terms '
                     f'(taps {list(objective.student_taps + objective.teacher_taps)}) are not '
                     'supported.')
  if objective.num_teachers not in (None, size - 1):
    raise ValueError(f'A cohort of {size} gives each member {size - 1} peers as teachers, but '
                     f'the objective was built for {objective.num_teachers}.')


def build_mutual_update(*, models: Sequence[nn.Module], tx: optax.GradientTransformation,
                        objective: losses.Objective, augment: Augment = Augment(),
                        learning_rate_fn: Callable | None = None) -> Callable:
  """The per-device cohort update `(state, batch, axis_name=None) -> (state, metrics)`.

  Metrics: each member's `m<i>_loss`, `m<i>_accuracy`, `m<i>_<term>_loss`, `m<i>_grad_norm`;
  `loss` and `accuracy` are their means over the members; plus the objective's weights.
  """
  check_cohort_objective(objective, len(models))
  forwards = [student_forward(m, ()) for m in models]

  def update(state: CohortState, batch: dict, *, axis_name=None):
    batch, dropout_key = augmented_batch(state, batch, augment, axis_name)

    def loss_fn(params):
      outputs, stats = [], []
      for i, forward in enumerate(forwards):
        out, batch_stats = forward(model_variables(params[i], state.batch_stats[i]),
                                   batch['image'], jax.random.fold_in(dropout_key, i))
        outputs.append(out)
        stats.append(batch_stats)
      member_losses, member_components = [], []
      for i, student in enumerate(outputs):
        peers = [losses.Outputs(jax.lax.stop_gradient(peer.logits))
                 for j, peer in enumerate(outputs) if j != i]
        per_example, components, _ = objective.apply(losses.Context(
            student, peers, batch, step=state.step, key=jax.random.fold_in(dropout_key, i),
            axis_name=axis_name))
        member_losses.append(jnp.mean(per_example))
        member_components.append({k: jnp.mean(v) for k, v in components.items()})
      logits = [out.logits for out in outputs]
      return sum(member_losses), (member_losses, member_components, logits, stats)

    grads, (member_losses, components, logits, stats) = jax.grad(loss_fn, has_aux=True)(
        state.params)
    grads = pmean(grads, axis_name)
    stats = pmean(tuple(stats), axis_name)
    params, opt_state, metrics = [], [], {}
    for i, (g, p, o) in enumerate(zip(grads, state.params, state.opt_state)):
      updates, o = tx.update(g, o, p)
      params.append(optax.apply_updates(p, updates))
      opt_state.append(o)
      metrics.update({f'm{i}_loss': member_losses[i], f'm{i}_grad_norm': optax.tree.norm(g),
                      f'm{i}_accuracy': jnp.mean(jnp.argmax(logits[i], -1) == batch['label']),
                      **{f'm{i}_{k}_loss': v for k, v in components[i].items()}})
    metrics = pmean(metrics, axis_name)
    size = len(models)
    metrics['loss'] = sum(metrics[f'm{i}_loss'] for i in range(size)) / size
    metrics['accuracy'] = sum(metrics[f'm{i}_accuracy'] for i in range(size)) / size
    if learning_rate_fn is not None:
      metrics['learning_rate'] = jnp.asarray(learning_rate_fn(state.step), jnp.float32)
    metrics.update({k: jnp.asarray(v, jnp.float32)
                    for k, v in objective.hyperparams(state.step).items()})
    return state.replace(step=state.step + 1, params=tuple(params), batch_stats=stats,
                         opt_state=tuple(opt_state)), metrics

  return update


def make_mutual_step(*, models: Sequence[nn.Module], tx: optax.GradientTransformation,
                     objective: losses.Objective, augment: Augment = Augment(),
                     learning_rate_fn: Callable | None = None,
                     parallel: Parallel = Parallel()) -> Callable:
  """The compiled cohort step `(state, batch) -> (state, metrics)`, donating the state.

  Args:
    models: the cohort's Linen modules (same or different architectures, same classes).
    tx: the optimizer; each member keeps its own state of it.
    objective: each member's objective, its teachers being the other members (build it with
      `num_teachers=len(models) - 1`); logit terms only.
    augment: augmentation applied once; every member sees the same batch.
    learning_rate_fn: schedule, logged as `learning_rate`.
    parallel: the data-parallel mode (jit over a mesh, pmap, shard_map).
  """
  return parallel.compile(build_mutual_update(models=models, tx=tx, objective=objective,
                                              augment=augment,
                                              learning_rate_fn=learning_rate_fn))
