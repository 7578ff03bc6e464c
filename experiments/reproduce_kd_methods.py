"""Trains every distillation method once on Fashion-MNIST, LeNet-5 -> LeNet-5-Half.

    python experiments/reproduce_kd_methods.py --profile full   # 1 seed, 5 epochs each
    python experiments/reproduce_kd_methods.py --profile tiny   # a smoke run

Writes kd_methods{,_<profile>}.{json,md} (experiments/results/ for the full profile); run
outputs go to --root (default workdirs/kd_methods_<profile>).
"""
import os

from jaxkd.tables import reproduce

HERE = os.path.dirname(os.path.abspath(__file__))
table_config = reproduce.load_table(os.path.join(HERE, 'configs', 'reproduce_kd_methods.py'))

if __name__ == '__main__':
  reproduce.command_line(__doc__, table_config,
                         default_root=os.path.join('workdirs', 'kd_methods'),
                         full_results=os.path.join(HERE, 'results'))
