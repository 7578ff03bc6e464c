"""Distillation on CIFAR-100 with the papers' recipe (`cifar100.py`) and any registered method.

    python experiments/distill.py --config experiments/configs/distill_cifar100.py:dkd \
        --config.model=resnet20 --config.teacher_dir=workdirs/c100_resnet56 --workdir workdirs/dkd

The part after ':' names the method(s) of `kd_methods.py` (default `kd`: T = 4, hard 0.1,
soft 0.9); epoch settings (DKD's 20 warm-up epochs) are the papers' own, for 240 epochs.
Methods that tap features name LeNet modules there: set their taps for the model at hand
(`jaxkd.models.feature_paths`), e.g. `--config.terms.fitnet.student_tap=stage2`.
"""
import ml_collections

import kd_methods
from cifar100 import recipe  # experiments/configs/


def get_config(methods: str = 'kd') -> ml_collections.ConfigDict:
  config = recipe(kd_methods.get_config(methods or 'kd'))
  config.model = 'resnet20'
  return config
