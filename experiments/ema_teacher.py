"""Self-distillation from an EMA teacher (the moving average of the student's weights).

    python experiments/ema_teacher.py --config experiments/configs/ema_fashion_mnist.py \
        --workdir workdirs/ema

Writes the student in WORKDIR (final/, final_metrics.json) and the EMA teacher in WORKDIR/ema.
"""
from jaxkd import cli

if __name__ == '__main__':
  cli.main('ema_teacher', __file__)
