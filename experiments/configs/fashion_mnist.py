"""Supervised training on Fashion-MNIST.

    python experiments/train.py --config experiments/configs/fashion_mnist.py:lenet5 \
        --workdir workdirs/lenet5 [--config.num_epochs=20 ...]

The part after ':' names the model (default lenet5): lenet5, lenet5_half, mlp_1200, mlp_800.
"""
import ml_collections

from jaxkd.recipes import defaults


def get_config(model: str = 'lenet5') -> ml_collections.ConfigDict:
  return defaults.supervised(model or 'lenet5')  # every setting, with its default
