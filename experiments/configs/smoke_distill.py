"""A smoke test of distillation, small enough to run as several processes in CI.

    python experiments/train.py --config experiments/configs/smoke.py:mlp_800 \
        --config.num_steps=100 --workdir /tmp/smoke_teacher
    python experiments/distill.py --config experiments/configs/smoke_distill.py \
        --config.teacher_dir=/tmp/smoke_teacher --workdir /tmp/smoke_kd
    # the same run as two processes of two CPU devices each (gloo collectives):
    JAX_NUM_CPU_DEVICES=2 python experiments/distill.py ... --coordinator_address=127.0.0.1:12355 \
        --num_processes=2 --process_id=0   # and --process_id=1 in a second shell

An MLP student (64 hidden units) on 2000 Fashion-MNIST images, 60 steps at a global batch
of 32, a checkpoint every 10 steps.
"""
import ml_collections

from distill_fashion_mnist import get_config as distill_config  # experiments/configs/


def get_config(student: str = 'mlp') -> ml_collections.ConfigDict:
  config = distill_config(student or 'mlp')
  if config.model == 'mlp':
    config.model_overrides = ml_collections.ConfigDict({'hidden': (64,)})
  config.classes = tuple(range(10))
  config.train_per_class = 200  # 2000 images: 62 steps per epoch at batch 32
  config.batch_size = 32  # global: each of P processes feeds 32 / P
  config.num_steps = 60
  config.log_every = 10
  config.eval_batch_size = 1000
  config.checkpoint_every = 10
  config.keep_last = 2
  return config
