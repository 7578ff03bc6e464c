"""Deep mutual learning on Fashion-MNIST: a cohort of students teaching each other.

    python experiments/mutual.py --config experiments/configs/mutual_fashion_mnist.py \
        --workdir workdirs/dml [--config.cohort=lenet5_half,lenet5 ...]

The part after ':' is the cohort (comma-separated zoo models; default two LeNet-5-Halfs).
Each member's objective is the paper's (Zhang et al. 2018): cross-entropy plus the mean KL
from its peers' predictions at T = 1, weights 1 and 1; any logit term of
`jaxkd.losses.LOSSES` can replace it (`--config.terms...`). Members end up in
WORKDIR/members/<i>, each a finished run that can teach or be fine-tuned.
"""
import ml_collections

from distill_fashion_mnist import get_config as distill_config  # experiments/configs/


def get_config(cohort: str = 'lenet5_half,lenet5_half') -> ml_collections.ConfigDict:
  cohort = cohort or 'lenet5_half,lenet5_half'
  config = distill_config(cohort.split(',')[0])
  config.cohort = cohort
  del config.teacher_dir, config.student_init_dir, config.dont_load
  config.kd.cache = ''
  config.terms = ml_collections.ConfigDict({
      'ce': {'weight': 1.0},
      'kd': {'weight': 1.0, 'temperature': 1.0},  # the mean over peers of KL(p_j || p_i)
  })
  return config
