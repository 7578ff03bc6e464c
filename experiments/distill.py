"""Knowledge distillation from a teacher trained with experiments/train.py (any method:
experiments/configs/kd_methods.py:NAME).

    python experiments/distill.py --config experiments/configs/distill_fashion_mnist.py \
        --config.teacher_dir=workdirs/teacher --workdir workdirs/kd

Writes WORKDIR/metrics.jsonl, WORKDIR/final_metrics.json and the student in WORKDIR/final.
"""
from jaxkd import cli

if __name__ == '__main__':
  cli.main('distill', __file__)
