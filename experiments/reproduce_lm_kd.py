"""Reproduces jaxkd's language-model distillation table (resumable: finished runs are kept).

    python experiments/reproduce_lm_kd.py --profile select  # KD settings on validation
    python experiments/reproduce_lm_kd.py --profile full    # the table (after select)
    python experiments/reproduce_lm_kd.py --profile smoke   # every row, 20 steps

Writes lm_kd{,_<profile>}.{json,md} and lm_kd{,_<profile>}_curves.png (experiments/results/
for the full profile); run outputs go to --root (default workdirs/lm_kd_<profile>).
"""
import os

from jaxkd.tables import lm, reproduce

HERE = os.path.dirname(os.path.abspath(__file__))
table_config = reproduce.load_table(os.path.join(HERE, 'configs', 'reproduce_lm_kd.py'))

if __name__ == '__main__':
  lm.command_line(__doc__, table_config, default_root=os.path.join('workdirs', 'lm_kd'),
                  full_results=os.path.join(HERE, 'results'))
