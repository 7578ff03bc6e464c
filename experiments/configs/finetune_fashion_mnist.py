"""Transfer on Fashion-MNIST: pre-train on classes 0-4, fine-tune on 5-9 with 100 labels each.

    python experiments/train.py --config experiments/configs/fashion_mnist.py:lenet5 \
        --config.classes='(0,1,2,3,4)' --config.num_epochs=3 --workdir workdirs/source
    python experiments/finetune.py --config experiments/configs/finetune_fashion_mnist.py:lp_ft \
        --config.init_dir=workdirs/source --workdir workdirs/lp_ft

The part after ':' is the method: 'ft' (default), 'lp' (head only), 'lp_ft' (LP, then FT from
it with a fresh optimizer), 'scratch' (FT without a source: the baseline) or 'gradual' (FT
unfreezing one layer every `finetune.unfreeze_every` steps, head first).
A fine-tuned model is a teacher for the target task:

    python experiments/distill.py --config experiments/configs/distill_fashion_mnist.py \
        --config.classes='(5,6,7,8,9)' --config.train_per_class=100 \
        --config.teacher_dir=workdirs/lp_ft [--config.student_init_dir=workdirs/source_half] \
        --workdir workdirs/kd_target
"""
import ml_collections

from jaxkd.recipes import defaults

METHODS = ('ft', 'lp', 'lp_ft', 'scratch', 'gradual')


def get_config(method: str = 'ft') -> ml_collections.ConfigDict:
  method = method or 'ft'
  if method not in METHODS:
    raise ValueError(f'Unknown method {method!r}; choose one of {list(METHODS)}.')
  config = defaults.finetune('lenet5')  # init_dir, dont_load and finetune's other settings
  config.classes = (5, 6, 7, 8, 9)
  config.train_per_class = 100
  config.batch_size = 50  # 10 steps per epoch on 500 images
  config.num_epochs = 30
  config.log_every = 10
  # Training only the head needs a larger step than updating the whole network.
  config.optimizer.learning_rate = 1e-2 if method == 'lp' else 1e-3
  config.checkpoint_every = 50
  config.finetune.method = {'scratch': 'ft', 'gradual': 'ft'}.get(method, method)
  config.finetune.unfreeze_every = 50 if method == 'gradual' else 0  # steps between unfreezing
  return config
