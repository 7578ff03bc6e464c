"""Transfer learning: strict loading of pre-trained weights, freezing, layer-wise learning
rates, gradual unfreezing, and the fine-tuning step that keeps frozen BatchNorm frozen.

Two kinds of paths, both '/'-joined dict keys matched with `re.fullmatch`:

- `dont_load` patterns see a full variables path, collection first: `params/head/kernel`,
  `batch_stats/stem/bn/mean` (loading works on the whole variables dict, so a layer's
  BatchNorm statistics travel with its parameters).
- `frozen` / `trainable` patterns see the path inside a collection: `head/kernel`,
  `stem/bn/mean`, so one pattern selects a layer's parameters and its statistics alike.

Freezing happens in the optimizer (`optax.partition` + `optax.set_to_zero`): frozen leaves
get no optimizer state at all, and the fine-tuning step restores frozen BatchNorm statistics
after each update, so a frozen layer is bit-for-bit unchanged.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxkd import losses
from jaxkd.augment import Augment
from jaxkd.parallel import Parallel
from jaxkd.paths import check_patterns, check_patterns_match, flatten, matches, path_str
from jaxkd.steps import build_update

PyTree = Any
HEAD = 'head'  # every zoo model's classifier
# LP trains only the head; FT trains everything (both minus any extra `frozen` patterns).
METHODS = {'lp': (f'{HEAD}/.*',), 'ft': ()}


class TransferError(ValueError):
  """Checkpoint and model disagree on paths, shapes or dtypes not covered by `dont_load`."""


# --- loading ---------------------------------------------------------------------------------

def mismatches(target: dict[str, Any], source: dict[str, Any],
               dont_load: Sequence[str] = ()) -> dict[str, list[str]]:
  """Paths (flat dicts of arrays or shape/dtype structs) that cannot be loaded, by kind."""
  found = {'missing': [], 'extra': [], 'shape': [], 'dtype': []}
  for path, leaf in target.items():
    if matches(path, dont_load):
      continue
    if path not in source:
      found['missing'].append(path)
      continue
    other = source[path]
    if tuple(leaf.shape) != tuple(other.shape):
      found['shape'].append(f'{path}: model {tuple(leaf.shape)}, checkpoint '
                            f'{tuple(other.shape)}')
    elif np.dtype(leaf.dtype) != np.dtype(other.dtype):
      found['dtype'].append(f'{path}: model {np.dtype(leaf.dtype)}, checkpoint '
                            f'{np.dtype(other.dtype)}')
  found['extra'] = [p for p in source if p not in target and not matches(p, dont_load)]
  return {kind: paths for kind, paths in found.items() if paths}


def _raise_on(found: dict[str, list[str]], dont_load: Sequence[str], where: str) -> None:
  if not found:
    return
  titles = {'missing': 'in the model but not in the checkpoint',
            'extra': 'in the checkpoint but not in the model',
            'shape': 'with different shapes', 'dtype': 'with different dtypes'}
  lines = [f'Cannot load {where}: {sum(map(len, found.values()))} path(s) do not match and no '
           f'dont_load pattern covers them (dont_load={list(dont_load)}).']
  for kind, paths in found.items():
    lines.append(f'  {kind} ({titles[kind]}):')
    lines.extend(f'    {p}' for p in paths)
  lines.append(f"Add a dont_load regex for the paths that should keep their fresh init, e.g. "
               f"'params/{HEAD}/.*' for a new head.")
  raise TransferError('\n'.join(lines))


def merge_params(target_init: PyTree, source: PyTree, *, dont_load: Sequence[str] = ()) -> PyTree:
  """`target_init` with every leaf taken from `source`, except the `dont_load` paths.

  Works on full variables dicts (`{'params': ..., 'batch_stats': ...}`); paths are
  '/'-joined (`params/head/kernel`) and a leaf keeps its fresh init when its path fully
  matches a `dont_load` regex. Any other difference (a path missing from `source`, an extra
  path in it, a different shape or dtype) raises one `TransferError` listing every offending
  path. Loaded leaves are placed like the `target_init` leaves they replace.
  """
  dont_load = check_patterns(dont_load)
  target, treedef = jax.tree_util.tree_flatten_with_path(target_init)
  flat_source = flatten(source)
  flat_target = {path_str(p): leaf for p, leaf in target}
  check_patterns_match('dont_load', dont_load, [*flat_target, *flat_source])
  _raise_on(mismatches(flat_target, flat_source, dont_load), dont_load, 'the source variables')
  leaves = []
  for path, leaf in flat_target.items():
    if matches(path, dont_load):
      leaves.append(leaf)
    elif isinstance(leaf, jax.Array):
      leaves.append(jax.device_put(flat_source[path], leaf.sharding))
    else:
      leaves.append(flat_source[path])
  return jax.tree_util.tree_unflatten(treedef, leaves)


def load_pretrained(directory: str, target_init: PyTree, *,
                    dont_load: Sequence[str] = ()) -> tuple[PyTree, dict]:
  """Loads a checkpoint written by `save_variables` (a WORKDIR or its `final`) into a model.

  Checks every path, shape and dtype against `target_init` (as `merge_params` does) before
  reading any array, then reads only the leaves that are loaded, each straight into the
  placement of the `target_init` leaf it replaces: a target on another device mesh gets its
  shardings from Orbax directly. `dont_load` leaves (e.g. a head with another number of
  classes) are not read and keep their fresh init. Returns (variables, checkpoint metadata).
  """
  from jaxkd import checkpoint  # orbax is slow to import
  import orbax.checkpoint as ocp
  dont_load = check_patterns(dont_load)
  is_meta = lambda x: hasattr(x, 'shape') and hasattr(x, 'dtype')  # noqa: E731
  stored, metadata, step = checkpoint.variables_metadata(directory)
  flat_target = flatten(target_init)
  check_patterns_match('dont_load', dont_load, [*flat_target, *flatten(stored, is_leaf=is_meta)])
  _raise_on(mismatches(flat_target, flatten(stored, is_leaf=is_meta), dont_load), dont_load,
            f'{directory} (step {step}, model {metadata.get("model")})')

  def read_as(key_path, leaf):
    path = path_str(key_path)
    if matches(path, dont_load):
      return ocp.PLACEHOLDER
    target = flat_target[path]
    sharding = target.sharding if isinstance(target, jax.Array) else None
    return jax.ShapeDtypeStruct(target.shape, target.dtype, sharding=sharding)

  abstract = jax.tree_util.tree_map_with_path(read_as, stored, is_leaf=is_meta)
  restored, _ = checkpoint.load_variables(directory, target=abstract)
  return merge_params(target_init, restored, dont_load=dont_load), metadata


# --- layers, freezing and layer-wise learning rates ------------------------------------------

def layer_order(model: nn.Module, *, input_shape) -> tuple[str, ...]:
  """The model's top-level submodules that hold variables, in the order the forward pass
  calls them (from the input to the head). Runs `model.init` abstractly (no compute)."""
  called = []

  def record(next_fun, args, kwargs, context):
    path = context.module.path
    if len(path) == 1 and path[0] not in called:
      called.append(path[0])
    return next_fun(*args, **kwargs)

  images = jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32)

  def init(key, x):
    with nn.intercept_methods(record):
      return model.init({'params': key, 'dropout': key}, x, train=False)

  variables = jax.eval_shape(init, jax.random.key(0), images)
  present = {path.split('/')[1] for path in flatten(variables)}
  return tuple(name for name in called if name in present)


def _layer(path: str) -> str:
  return path.split('/')[0]


def unfreeze_steps(tree: PyTree, *, order: Sequence[str], frozen: Sequence[str] = (),
                   trainable: Sequence[str] = (), unfreeze_every: int = 0) -> dict[str, int | None]:
  """When each leaf of a collection (`params` or `batch_stats`) starts training.

  `None`: never (it fully matches a `frozen` pattern, or `trainable` patterns are given and
  it matches none of them). Otherwise a step: 0 without gradual unfreezing; with
  `unfreeze_every=k`, the layer `d` places below the head (by `order`) starts at `d * k`.
  """
  frozen, trainable = check_patterns(frozen), check_patterns(trainable)
  depth_below_head = {name: len(order) - 1 - i for i, name in enumerate(order)}
  steps = {}
  for path in flatten(tree):
    if matches(path, frozen) or (trainable and not matches(path, trainable)):
      steps[path] = None
    elif _layer(path) not in depth_below_head:
      raise ValueError(f'{path!r} belongs to no layer of {list(order)}; pass the layer_order '
                       f'of the model these variables come from.')
    else:
      steps[path] = depth_below_head[_layer(path)] * unfreeze_every
  return steps


def layer_scales(order: Sequence[str], layer_decay: float) -> dict[str, float]:
  """Layer-wise learning-rate decay: the layer `d` places below the head gets decay**d."""
  return {name: layer_decay ** (len(order) - 1 - i) for i, name in enumerate(order)}


def _gate(start: int) -> optax.GradientTransformation:
  """Zeroes updates until the transformation has been applied `start` times."""
  return optax.scale_by_schedule(lambda count: (count >= start).astype(jnp.float32))


def partition_optimizer(make_tx: Callable[[], optax.GradientTransformation], params: PyTree, *,
                        order: Sequence[str], frozen: Sequence[str] = (),
                        trainable: Sequence[str] = (), layer_decay: float = 1.0,
                        unfreeze_every: int = 0) -> optax.GradientTransformation:
  """`make_tx()` for the trainable parameters, `optax.set_to_zero()` for the frozen ones.

  Parameters are grouped by `optax.partition`: `frozen` (no optimizer state), and one group
  per layer (or a single `trainable` group when no layer needs its own treatment). With
  `layer_decay < 1`, layer `d` places below the head has its updates scaled by
  `layer_decay**d` (LLRD). With `unfreeze_every=k`, that layer's gradients and updates are
  zero until step `d * k` (gradual unfreezing from the head down; its optimizer state exists
  from the start and sees zero gradients while gated).

  Args:
    make_tx: builds the base optimizer (called once per group; groups keep separate states).
    params: the parameters (to label; values unused).
    order: layer names from input to head (`layer_order`).
    frozen, trainable: regexes on paths inside `params` (see the module docstring).
    layer_decay: LLRD factor in (0, 1]; 1 = off.
    unfreeze_every: steps between unfreezing successive layers; 0 = off.
  """
  if not 0 < layer_decay <= 1:
    raise ValueError(f'layer_decay must be in (0, 1], got {layer_decay}.')
  check_patterns_match('frozen', check_patterns(frozen), list(flatten(params)))
  check_patterns_match('trainable', check_patterns(trainable), list(flatten(params)))
  starts = unfreeze_steps(params, order=order, frozen=frozen, trainable=trainable,
                          unfreeze_every=unfreeze_every)
  scales = layer_scales(order, layer_decay)
  per_layer = layer_decay != 1 or unfreeze_every > 0

  def label(path: str) -> str:
    if starts[path] is None:
      return 'frozen'
    return f'layer:{_layer(path)}' if per_layer else 'trainable'

  labels = jax.tree_util.tree_map_with_path(lambda p, _: label(path_str(p)), params)
  layer_start = {_layer(p): s for p, s in starts.items() if s is not None}
  transforms = {'frozen': optax.set_to_zero()}
  for name in sorted(set(jax.tree.leaves(labels)) - {'frozen'}):
    if name == 'trainable':
      transforms[name] = make_tx()
      continue
    layer = name.split(':', 1)[1]
    start = layer_start[layer]
    parts = [make_tx()]
    if scales[layer] != 1:
      parts.append(optax.scale(scales[layer]))
    if start:
      parts = [_gate(start), *parts, _gate(start)]
    transforms[name] = optax.chain(*parts) if len(parts) > 1 else parts[0]
  return optax.partition(transforms, labels)


# --- the fine-tuning step --------------------------------------------------------------------

def hold_frozen_stats(update: Callable, stats_starts: dict[str, int | None]) -> Callable:
  """Wraps a per-device update so BatchNorm statistics of frozen layers stay unchanged.

  `stats_starts` (from `unfreeze_steps` on `batch_stats`) says from which step each
  statistic may change (None: never); before that, the update's new value is replaced by
  the old one. Frozen layers still normalize with their batch statistics in train mode; only
  the running averages are held.
  """
  if all(start == 0 for start in stats_starts.values()):
    return update

  def held(state, batch, *step_args, axis_name=None):
    new_state, metrics = update(state, batch, *step_args, axis_name=axis_name)

    def pick(key_path, old, new):
      start = stats_starts[path_str(key_path)]
      if start is None:
        return old
      return new if start == 0 else jnp.where(state.step >= start, new, old)

    stats = jax.tree_util.tree_map_with_path(pick, state.batch_stats, new_state.batch_stats)
    return new_state.replace(batch_stats=stats), metrics

  return held


def zero_frozen_grads(param_starts: dict[str, int | None]) -> Callable:
  """`grad_filter` for `build_update`: gradients of parameters that do not train yet become
  zeros (constant zeros for never-trained ones, so XLA drops their backward pass).

  `param_starts` is from `unfreeze_steps(params, ...)`; the optimizer from
  `partition_optimizer` ignores these gradients anyway, so values are unchanged.
  """

  def grad_filter(grads, step):
    def pick(key_path, grad):
      start = param_starts[path_str(key_path)]
      if start is None:
        return jnp.zeros_like(grad)
      return grad if start == 0 else jnp.where(step >= start, grad, jnp.zeros_like(grad))

    return jax.tree_util.tree_map_with_path(pick, grads)

  return grad_filter


def make_finetune_step(*, model: nn.Module, tx: optax.GradientTransformation,
                       param_starts: dict[str, int | None],
                       stats_starts: dict[str, int | None], label_smoothing: float = 0.0,
                       augment: Augment = Augment(), learning_rate_fn: Callable | None = None,
                       parallel: Parallel = Parallel()) -> Callable:
  """The supervised step `(state, batch) -> (state, metrics)` for a partly frozen model.

  `tx` is from `partition_optimizer` (frozen parameters get zero updates, no state);
  `param_starts` and `stats_starts` from `unfreeze_steps` on `params` and `batch_stats`
  with the same patterns. Frozen parameters' gradients are never computed, frozen BatchNorm
  statistics are held, and `grad_norm` covers the parameters being trained.
  """
  objective = losses.make_objective(hard_weight=1.0, soft_weight=0.0,
                                    label_smoothing=label_smoothing)
  update = build_update(model=model, tx=tx, objective=objective, augment=augment,
                        learning_rate_fn=learning_rate_fn,
                        grad_filter=zero_frozen_grads(param_starts))
  return parallel.compile(hold_frozen_stats(update, stats_starts))


__all__ = ['HEAD', 'METHODS', 'TransferError', 'hold_frozen_stats', 'layer_order',
           'layer_scales', 'load_pretrained', 'make_finetune_step', 'merge_params',
           'mismatches', 'partition_optimizer', 'unfreeze_steps', 'zero_frozen_grads']
