"""Config -> library objects: the task, model, optimizer, parallel mode, augmentation,
batches, evaluator, initial variables and teachers that every recipe is assembled from."""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxkd import data, distributed, models, optim, paths, transfer
from jaxkd.augment import Augment
from jaxkd.loop import eval_batches
from jaxkd.models import DTYPES
from jaxkd.parallel import Parallel
from jaxkd.recipes.defaults import setting
from jaxkd.state import fresh_variables, tree_sha256
from jaxkd.steps import make_eval_step, summarize_eval

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

  @property
  def input_shape(self) -> tuple[int, ...]:
    """One example's shape with a batch dimension of 1, for initializing models."""
    return (1,) + self.train_images.shape[1:]

  def normalize(self, images: np.ndarray) -> np.ndarray:
    return ((images.astype(np.float32) / 255.0 - self.mean) / self.std).astype(np.float32)


def load_task(config) -> Task:
  """Loads the config's dataset (optionally a subset of classes) as host arrays.

  `train_per_class` keeps that many training images of each class (of `classes`, or of
  every class when none are given), a seeded draw: `seed` picks them.

  `validation_size` images are held out of the training split for model selection: by
  default from what the class subset (`classes`, `train_per_class`) leaves; with
  `validation_first`, from the whole training split before the subset is drawn, so a
  small-data run (e.g. 3 % of the images) is selected on as many images as a full one and
  never trains on them."""
  info = data.info(config.dataset)
  data_dir = config.get('data_dir') or None
  train = data.load_arrays(config.dataset, 'train', data_dir=data_dir)
  test = data.load_arrays(config.dataset, 'test', data_dir=data_dir)
  num_classes = info.num_classes
  classes = tuple(config.get('classes') or ())
  validation_size = setting(config, 'validation_size')
  first = bool(validation_size and setting(config, 'validation_first'))
  val = (None, None)
  if first:
    val, train = _hold_out(train, validation_size)
  per_class = config.get('train_per_class') or None
  if classes:
    train = data.subset_classes(*train, classes, per_class=per_class, seed=config.seed)
    test = data.subset_classes(*test, classes)
    if first:
      val = data.subset_classes(*val, classes)
    num_classes = len(classes)
  elif per_class:  # every class, `per_class` training images of each (labels unchanged)
    train = data.subset_classes(*train, tuple(range(num_classes)), per_class=per_class,
                                seed=config.seed)
  if validation_size and not first:
    val, train = _hold_out(train, validation_size)
  return Task(config.dataset, *train, *test, num_classes=num_classes,
              mean=np.asarray(info.mean, np.float32), std=np.asarray(info.std, np.float32),
              val_images=val[0], val_labels=val[1])


def _hold_out(split: tuple, size: int) -> tuple[tuple, tuple]:
  """`(held out, kept)`: `size` examples of `split`, the same ones for every run and seed
  (so the runs of a table share their validation set), both in stored order."""
  if not 0 < size < len(split[1]):
    raise ValueError(f'validation_size={size} must be in 1..{len(split[1]) - 1} '
                     f'(the training split has {len(split[1])} examples).')
  order = np.random.default_rng(VALIDATION_SEED).permutation(len(split[1]))
  held, kept = np.sort(order[:size]), np.sort(order[size:])
  return (split[0][held], split[1][held]), (split[0][kept], split[1][kept])


def build_model(config, num_classes: int):
  overrides = dict(config.get('model_overrides') or {})
  dtype = setting(config, 'dtype')
  if dtype != 'float32':
    overrides['dtype'] = DTYPES[dtype]
  return models.build(config.model, num_classes=num_classes, **overrides)


def build_optimizer(config, total_steps: int):
  """`(tx, schedule)` from `config.optimizer` for a run of `total_steps`."""
  o = config.optimizer
  schedule = optim.make_schedule(
      name=o.schedule, learning_rate=o.learning_rate, total_steps=total_steps,
      warmup_steps=setting(config, 'optimizer.warmup_steps'),
      boundaries=tuple(setting(config, 'optimizer.boundaries')),
      decay_factor=setting(config, 'optimizer.decay_factor'))
  tx = optim.make_optimizer(name=o.name, learning_rate=schedule,
                            momentum=setting(config, 'optimizer.momentum'),
                            nesterov=setting(config, 'optimizer.nesterov'),
                            weight_decay=setting(config, 'optimizer.weight_decay'),
                            clip_norm=setting(config, 'optimizer.clip_norm'))
  return tx, schedule


def build_parallel(config) -> Parallel:
  return Parallel(mode=setting(config, 'parallel.mode'),
                  num_devices=setting(config, 'parallel.num_devices') or None,
                  shard_teacher=setting(config, 'parallel.shard_teacher'))


def build_augment(config) -> Augment:
  return Augment(crop_padding=setting(config, 'augment.crop_padding'),
                 flip=setting(config, 'augment.flip'))


def make_batches(task: Task, config, parallel: Parallel,
                 columns: dict | None = None) -> tuple[Callable, int]:
  """The in-memory fast path: the split lives on device, batches are gathered under jit,
  each already placed where the step wants it (one process; several assemble theirs).
  `columns` are more per-example arrays carried in each batch (cached teacher outputs)."""
  processes = jax.process_count()
  if config.batch_size % parallel.size:
    raise ValueError(f'batch_size={config.batch_size}: must be a multiple of the '
                     f'{parallel.size} devices (the global batch is split over them).')
  # Each process feeds its share of the global batch (the same permutation everywhere).
  dataset = data.InMemoryDataset(
      task.train_images, task.train_labels, batch_size=config.batch_size // processes,
      seed=config.seed,
      mean=task.mean, std=task.std, columns=columns, num_classes=task.num_classes,
      batch_sharding=parallel.batch_sharding() if processes == 1 else None)
  return (lambda epoch, start: dataset.epoch(epoch, start_step=start)), dataset.steps_per_epoch


def num_train_steps(config, steps_per_epoch: int) -> int:
  return config.get('num_steps') or config.num_epochs * steps_per_epoch


def make_evaluator(model, task: Task, config, parallel: Parallel) -> Callable[[Any], dict]:
  """`evaluate(variables) -> {'test_accuracy': ..., 'val_accuracy': ..., ...}` over the
  whole test split and the validation split if there is one (padded last batches)."""
  eval_step = make_eval_step(model=model, num_classes=task.num_classes, parallel=parallel)
  splits = {'test': (task.test_images, task.test_labels)}
  if task.val_labels is not None:
    splits['val'] = (task.val_images, task.val_labels)
  # Whole multiples of the devices, and no larger than the largest split needs: a split of
  # 64 images is not padded to a batch of 1,000 (one batch shape for every split: one compile).
  largest = max(len(labels) for _, labels in splits.values())
  needed = -(-largest // parallel.size) * parallel.size
  batch_size = min(setting(config, 'eval_batch_size'), needed)
  batch_size = max(batch_size - batch_size % parallel.size, parallel.size)

  def evaluate(variables) -> dict:
    results = {}
    for split, (images, labels) in splits.items():
      total = None
      for batch in eval_batches(images, labels, batch_size=batch_size, normalize=task.normalize):
        local = distributed.process_rows(batch)  # each process feeds its share
        sums = parallel.unreplicate(eval_step(variables, parallel.shard_batch(local)))
        total = sums if total is None else jax.tree.map(jnp.add, total, sums)
      summary = summarize_eval(jax.device_get(total))
      results.update({f'{split}_{k}': v for k, v in summary.items()})
    return results

  return evaluate


def load_init(model, config, task: Task, *, init_dir: str = '',
              dont_load: Sequence[str] = ()) -> tuple[dict | None, dict]:
  """Initial variables loaded from the checkpoint in `init_dir` (a WORKDIR), or None.

  The model's fresh init (`jaxkd.state.fresh_variables`, as in `create_train_state`) with
  every leaf not covered by `dont_load` taken from the checkpoint; plus what to record about
  it (`init_dir`, `init_fingerprint`, the source's dataset, model and classes).
  """
  if not init_dir:
    return None, {}
  fresh = fresh_variables(model, seed=config.seed, input_shape=task.input_shape)
  variables, meta = transfer.load_pretrained(init_dir, fresh, dont_load=tuple(dont_load))
  return variables, {'init_dir': init_dir, 'init_fingerprint': tree_sha256(variables),
                     'init_dataset': meta.get('dataset'), 'init_model': meta.get('model'),
                     'init_classes': meta.get('classes')}


def load_teacher(directory: str, task: Task, config) -> tuple[Any, Any, dict]:
  """A teacher written by a recipe (its WORKDIR or WORKDIR/final): (model, variables, meta)."""
  from jaxkd import checkpoint  # local import: orbax is slow to import
  final = os.path.join(directory, 'final')
  variables, meta = checkpoint.load_variables(final if os.path.isdir(final) else directory)
  everything = list(range(data.info(task.name).num_classes))
  # explicit classes 0..C-1 in order are the whole dataset: the same task as `classes=()`
  same_task = lambda c: [] if list(c or ()) == everything else list(c or ())  # noqa: E731
  classes = same_task(config.get('classes'))
  if meta['dataset'] != task.name or same_task(meta.get('classes')) != classes:
    raise ValueError(
        f"Teacher {directory!r} was trained on {meta['dataset']} classes "
        f"{meta.get('classes') or 'all'}, but this run is on {task.name} classes "
        f"{classes or 'all'}; distil on the teacher's task or fine-tune the teacher first.")
  model = models.build(meta['model'], num_classes=meta['num_classes'],
                       **meta.get('model_overrides', {}))
  expected = jax.eval_shape(lambda: fresh_variables(model, seed=0, input_shape=task.input_shape))
  shapes = lambda tree: {p: tuple(v.shape) for p, v in paths.flatten(tree).items()}  # noqa: E731
  want, have = shapes(expected), shapes(variables)
  if want != have:
    wrong = sorted(p for p in set(want) | set(have) if want.get(p) != have.get(p))
    raise ValueError(
        f"Teacher {directory!r}: its metadata says model {meta['model']!r} with "
        f"{meta['num_classes']} classes, but its variables do not fit that model ({len(wrong)} "
        f"leaves differ, e.g. {wrong[0]}: expected {want.get(wrong[0])}, saved "
        f"{have.get(wrong[0])}). The folder was damaged or edited; retrain or restore it.")
  return model, variables, meta


def input_transform(task: Task, config) -> dict:
  """What a teacher cache depends on besides the teacher: data, subset and normalization."""
  return {'classes': list(config.get('classes') or ()),
          'train_per_class': config.get('train_per_class') or 0,
          'subset_seed': config.seed if config.get('classes') else None,
          'mean': np.asarray(task.mean).tolist(), 'std': np.asarray(task.std).tolist()}
