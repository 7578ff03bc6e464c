"""Every recipe setting's default, written once: the base configs `experiments/configs/*.py`
start from, and the value a recipe reads (`setting`) when its config leaves a setting out.

    config = defaults.distillation('lenet5_half')   # every setting a distillation shows
    config.teacher_dir = 'workdirs/teacher'
    recipes.distill(config, 'workdirs/kd')
"""
from __future__ import annotations

import functools
from typing import Any

import ml_collections


def supervised(model: str = 'lenet5') -> ml_collections.ConfigDict:
  """Supervised training of `model` on Fashion-MNIST (`recipes.train`)."""
  config = ml_collections.ConfigDict()
  config.dataset = 'fashion_mnist'
  config.data_dir = ''  # '' = $JAXKD_DATA_DIR or ~/tensorflow_datasets
  config.validation_size = 0  # > 0: hold out this many training images for model selection
  config.validation_first = False  # True: held out before the class subset is drawn
  config.classes = ()  # a subset of classes, relabelled 0..k-1 (transfer tasks)
  config.train_per_class = 0  # 0 = all training images of each class
  config.model = model
  config.model_overrides = ml_collections.ConfigDict()
  config.dtype = 'float32'  # or 'bfloat16' compute (float32 parameters and losses)
  config.seed = 0
  config.batch_size = 64
  config.num_epochs = 1
  config.num_steps = 0  # > 0 overrides num_epochs
  config.optimizer = ml_collections.ConfigDict(dict(
      name='adam', learning_rate=2e-3, momentum=0.9, weight_decay=0.0, schedule='cosine',
      warmup_steps=0))
  config.label_smoothing = 0.0
  config.augment = ml_collections.ConfigDict(dict(crop_padding=0, flip=False))
  config.parallel = ml_collections.ConfigDict(dict(mode='jit', num_devices=0,
                                                   shard_teacher=False))
  config.log_every = 100
  config.eval_batch_size = 1000
  config.eval_every = 1  # epochs between evaluations (the last epoch is always evaluated)
  # Checkpoints in WORKDIR/checkpoints; a rerun of the same command resumes from the newest.
  config.checkpoint_every = 500  # steps; 0 = no checkpoints (and no resume)
  config.keep_last = 2  # newest checkpoints kept
  config.keep_best = 0  # best checkpoints kept besides, ranked at each epoch's evaluation
  config.best_metric = 'val_accuracy'  # needs validation_size > 0; never a test metric...
  config.allow_test_selection = False  # ...unless this says so (and the run records it)
  config.best_mode = 'max'
  return config


def distillation(student: str = 'lenet5_half') -> ml_collections.ConfigDict:
  """`supervised(student)` plus the teachers and the objective (`recipes.distill`)."""
  config = supervised(student)
  config.teacher_dir = ''  # WORKDIR of experiments/train.py; comma-separated for several
  config.student_init_dir = ''  # optional WORKDIR whose final variables initialize the student
  config.dont_load = ('params/head/.*',)  # with student_init_dir: paths kept at fresh init
  config.kd = ml_collections.ConfigDict(dict(
      hard_weight=0.5,
      soft_weight=0.5,
      temperature=4.0,
      teacher_weights=(),  # per teacher; () = equal
      multi_teacher='sum',  # or 'ensemble'
      cache='',  # '' = live teacher; 'float32' or 'float16' = precomputed teacher logits
      cache_topk=0,  # > 0: keep the top-k logits, the rest's mass in one bucket
  ))
  # The objective by term name instead of the kd shorthand above (empty: hard + soft from kd),
  # e.g. {'ce': {'weight': 1.0}, 'dkd': {'weight': 1.0, 'temperature': 4.0}}; named configs
  # for every method: jaxkd.recipes.method_configs (experiments/configs/kd_methods.py).
  config.terms = ml_collections.ConfigDict()
  return config


def ema_teacher(model: str = 'lenet5_half') -> ml_collections.ConfigDict:
  """`distillation(model)` taught by the EMA of its own weights (`recipes.ema_teacher`)."""
  config = distillation(model)
  del config.teacher_dir
  config.ema = ml_collections.ConfigDict(dict(decay=0.999, ramp_up=True))
  return config


def finetune(model: str = 'lenet5') -> ml_collections.ConfigDict:
  """`supervised(model)` started from a source-task run (`recipes.finetune`)."""
  config = supervised(model)
  config.init_dir = ''  # WORKDIR of the source-task run; '' = from scratch
  config.dont_load = ('params/head/.*',)  # re-initialized: the source head has other classes
  config.finetune = ml_collections.ConfigDict(dict(
      method='ft',  # 'lp' (head only), 'ft' (everything) or 'lp_ft' (LP, then FT)
      frozen=(),  # regexes on paths inside a collection (e.g. 'conv1/.*'): never trained
      layer_decay=1.0,  # < 1: layer-wise learning-rate decay, decay**d for d layers below the head
      unfreeze_every=0,  # steps between unfreezing layers (0: everything trains from the start)
      lp_epochs=10,  # lp_ft: epochs of LP before the num_epochs of FT
      lp_steps=0,  # > 0 overrides lp_epochs
      lp_learning_rate=1e-2,  # lp_ft: the LP stage's learning rate (0 = optimizer's)
  ))
  return config


# Optimizer settings no base config shows: a new key under `optimizer` would change what every
# run records (`provenance.TRAJECTORY_SETTINGS`), and so refuse to resume the runs made before.
_UNSHOWN = {'optimizer.nesterov': False, 'optimizer.clip_norm': 0.0,
            'optimizer.boundaries': (), 'optimizer.decay_factor': 0.1}


def _flatten(node, prefix: str = '') -> dict[str, Any]:
  flat = {}
  for key, value in node.items():
    if isinstance(value, ml_collections.ConfigDict) and len(value):
      flat.update(_flatten(value, f'{prefix}{key}.'))
    else:
      flat[f'{prefix}{key}'] = value
  return flat


@functools.cache
def _defaults() -> dict[str, Any]:
  base = ml_collections.ConfigDict({**distillation().to_dict(), **ema_teacher().to_dict(),
                                    **finetune().to_dict()})
  return {**_flatten(base), **_UNSHOWN}


def default(name: str):
  """The default of the dotted setting `name`."""
  return _defaults()[name]


def setting(config, name: str):
  """`config`'s value of the dotted setting `name` (e.g. 'optimizer.momentum'), or its
  default when the config leaves it out."""
  node = config
  for part in name.split('.'):
    if node is None or not hasattr(node, 'get') or part not in node:
      return default(name)
    node = node[part]
  return node
