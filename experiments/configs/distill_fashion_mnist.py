"""Distillation on Fashion-MNIST from a teacher trained with experiments/train.py.

    python experiments/train.py --config experiments/configs/fashion_mnist.py:lenet5 \
        --workdir workdirs/teacher
    python experiments/distill.py --config experiments/configs/distill_fashion_mnist.py \
        --config.teacher_dir=workdirs/teacher --workdir workdirs/kd

The part after ':' names the student (default lenet5_half).
"""
import ml_collections

from fashion_mnist import get_config as supervised_config  # experiments/configs/


def get_config(student: str = 'lenet5_half') -> ml_collections.ConfigDict:
  config = supervised_config(student or 'lenet5_half')
  config.teacher_dir = ''  # WORKDIR of experiments/train.py; comma-separated for several
  config.student_init_dir = ''  # optional WORKDIR whose final variables initialise the student
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
  # for every method: experiments/configs/kd_methods.py.
  config.terms = ml_collections.ConfigDict()
  return config
