"""Every distillation method of `jaxkd.losses.LOSSES` as a named config, with its paper's
default hyper-parameters (CIFAR-100 settings where the authors give several), built by
`jaxkd.recipes.method_configs` from the registry (`jaxkd/losses/methods/<name>.py` says
where each comes from) and the modules each method taps on the LeNet-5 pair.

    python experiments/distill.py --config experiments/configs/kd_methods.py:dkd \
        --config.teacher_dir=workdirs/teacher --workdir workdirs/dkd
    python experiments/distill.py --config experiments/configs/kd_methods.py:dkd+fitnet ...

`A+B` adds method B's distillation terms to method A's (cross-entropy weight of A). Any
setting can be overridden: `--config.terms.dkd.temperature=2 --config.terms.ce.weight=0.5`.
Settings named `<x>_epochs` are turned into `<x>_steps` with the run's steps per epoch.
Feature taps name LeNet-5 modules (`pool1`, `pool2`, `dense2`); other models list theirs in
`jaxkd.models.feature_paths`.
"""
import ml_collections

from jaxkd.recipes.method_configs import GAP_ONLY, LANGUAGE_ONLY, METHODS  # noqa: F401
from jaxkd.recipes.method_configs import method_config


def get_config(methods: str = 'kd') -> ml_collections.ConfigDict:
  return method_config(methods)
