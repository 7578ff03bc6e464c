"""Reproduces jaxkd's Fashion-MNIST distillation tables (resumable: finished runs are kept).

    python experiments/reproduce_fashion_mnist_kd.py --profile full   # 5 seeds
    python experiments/reproduce_fashion_mnist_kd.py --profile demo   # make demo

Writes fashion_mnist_kd{,_<profile>}.{json,md} and PNG plots (experiments/results/ for the
full profile); run outputs go to --root (default workdirs/reproduce_<profile>).
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, 'configs'))

import reproduce_fashion_mnist_kd as table_config  # noqa: E402

from jaxkd.tables import reproduce  # noqa: E402

if __name__ == '__main__':
  reproduce.command_line(__doc__, table_config,
                         default_root=os.path.join('workdirs', 'reproduce'),
                         full_results=os.path.join(HERE, 'results'))
