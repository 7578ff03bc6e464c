"""Supervised training (a teacher, or a source-task model for transfer).

    python experiments/train.py --config experiments/configs/fashion_mnist.py:lenet5 \
        --workdir workdirs/lenet5

Writes WORKDIR/metrics.jsonl, WORKDIR/final_metrics.json and the final variables in
WORKDIR/final (the teacher checkpoint experiments/distill.py reads).
"""
from jaxkd import cli

if __name__ == '__main__':
  cli.main('train', __file__)
