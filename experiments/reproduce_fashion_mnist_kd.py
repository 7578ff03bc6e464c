"""Reproduces jaxkd's Fashion-MNIST distillation tables (resumable: finished runs are kept).

    python experiments/reproduce_fashion_mnist_kd.py --profile full   # 5 seeds
    python experiments/reproduce_fashion_mnist_kd.py --profile demo   # make demo

Writes fashion_mnist_kd{,_<profile>}.{json,md} and PNG plots (experiments/results/ for the
full profile); run outputs go to --root (default workdirs/reproduce_<profile>).
"""
import os

from jaxkd.tables import reproduce

HERE = os.path.dirname(os.path.abspath(__file__))
table_config = reproduce.load_table(os.path.join(HERE, 'configs', 'reproduce_fashion_mnist_kd.py'))

if __name__ == '__main__':
  reproduce.command_line(__doc__, table_config,
                         default_root=os.path.join('workdirs', 'reproduce'),
                         full_results=os.path.join(HERE, 'results'))
