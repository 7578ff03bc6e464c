"""Distillation on Fashion-MNIST from a teacher trained with experiments/train.py.

    python experiments/train.py --config experiments/configs/fashion_mnist.py:lenet5 \
        --workdir workdirs/teacher
    python experiments/distill.py --config experiments/configs/distill_fashion_mnist.py \
        --config.teacher_dir=workdirs/teacher --workdir workdirs/kd

The part after ':' names the student (default lenet5_half).
"""
import ml_collections

from jaxkd.recipes import defaults


def get_config(student: str = 'lenet5_half') -> ml_collections.ConfigDict:
  return defaults.distillation(student or 'lenet5_half')  # every setting, with its default
