"""A smoke test of train / resume: LeNet-5-half on 2000 Fashion-MNIST images, 300 steps.

    python experiments/train.py --config experiments/configs/smoke.py --workdir /tmp/smoke

A checkpoint every 20 steps; kill the run (even with SIGKILL) and rerun the same command: it
resumes from the newest checkpoint and ends with the same `params_sha256`. Under a minute on
two CPU cores.
"""
import ml_collections

from fashion_mnist import get_config as supervised_config  # experiments/configs/


def get_config(model: str = 'lenet5_half') -> ml_collections.ConfigDict:
  config = supervised_config(model or 'lenet5_half')
  config.classes = tuple(range(10))
  config.train_per_class = 200  # 2000 images: 62 steps per epoch at batch 32
  config.batch_size = 32
  config.num_steps = 300
  config.log_every = 20
  config.eval_batch_size = 1000
  config.checkpoint_every = 20
  config.keep_last = 2
  config.keep_best = 1
  config.validation_size = 100  # what ranks the best checkpoint (never the test set)
  return config
