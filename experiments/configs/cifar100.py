"""CIFAR-100 with the recipe of the CRD and DKD papers' tables (RepDistiller, mdistiller).

    JAXKD_CIFAR100_DIR=/data/cifar python experiments/train.py \
        --config experiments/configs/cifar100.py:resnet56 --workdir workdirs/c100_resnet56

SGD 0.05 with momentum 0.9 and (coupled) weight decay 5e-4, batch 64, 240 epochs, the rate
x0.1 at epochs 150, 180 and 210; random 4-pixel crops and horizontal flips. The last epoch is
reported, as in the papers (no validation split). The archive `cifar-100-python.tar.gz` comes
from https://www.cs.toronto.edu/~kriz/cifar.html (put it in $JAXKD_CIFAR100_DIR).
"""
import ml_collections

from fashion_mnist import get_config as base_config  # experiments/configs/

EPOCHS = 240
DECAY_EPOCHS = (150, 180, 210)


def recipe(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` (any recipe's) on CIFAR-100 with the papers' schedule, optimizer and crops."""
  config.dataset = 'cifar100'
  config.batch_size = 64
  config.num_epochs = EPOCHS
  config.optimizer = ml_collections.ConfigDict(dict(
      name='sgd', learning_rate=0.05, momentum=0.9, weight_decay=5e-4, schedule='piecewise',
      boundaries=tuple(e / EPOCHS for e in DECAY_EPOCHS), decay_factor=0.1, warmup_steps=0))
  config.augment = ml_collections.ConfigDict(dict(crop_padding=4, flip=True))
  config.log_every = 500
  config.checkpoint_every = 2000
  return config


def get_config(model: str = 'resnet56') -> ml_collections.ConfigDict:
  return recipe(base_config(model or 'resnet56'))
