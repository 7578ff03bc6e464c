"""Self-distillation from an EMA teacher on Fashion-MNIST: no trained teacher needed.

    python experiments/ema_teacher.py --config experiments/configs/ema_fashion_mnist.py \
        --workdir workdirs/ema [--config.ema.decay=0.99 ...]

The part after ':' names the model (default lenet5_half). The teacher is the exponential
moving average of the student's weights (mean teacher, Tarvainen & Valpola 2017: decay
0.999 with the ramp-up min(decay, 1 - 1/(t+1))); it teaches through `config.terms`
(default: cross-entropy 1 + KD at T = 4, weight 1; no paper fixes these for
self-distillation, they were set before any run). The EMA teacher is exported beside the
student in WORKDIR/ema.
"""
import ml_collections

from jaxkd.recipes import defaults


def get_config(model: str = 'lenet5_half') -> ml_collections.ConfigDict:
  config = defaults.ema_teacher(model or 'lenet5_half')  # ema: decay 0.999, ramp_up
  config.terms = ml_collections.ConfigDict({
      'ce': {'weight': 1.0},
      'kd': {'weight': 1.0, 'temperature': 4.0},
  })
  return config
