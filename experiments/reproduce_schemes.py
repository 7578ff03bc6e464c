"""Trains every teacher scheme once on Fashion-MNIST with LeNet-sized models.

    python experiments/reproduce_schemes.py --profile full   # 1 seed, 5 epochs per model
    python experiments/reproduce_schemes.py --profile tiny   # a smoke run

Writes schemes{,_<profile>}.{json,md} (experiments/results/ for the full profile); run
outputs go to --root (default workdirs/schemes_<profile>).
"""
import os

from jaxkd.tables import reproduce

HERE = os.path.dirname(os.path.abspath(__file__))
table_config = reproduce.load_table(os.path.join(HERE, 'configs', 'reproduce_schemes.py'))

if __name__ == '__main__':
  reproduce.command_line(__doc__, table_config,
                         default_root=os.path.join('workdirs', 'schemes'),
                         full_results=os.path.join(HERE, 'results'))
