"""Reproduces jaxkd's on-policy, sequence-level and cached language-model distillation table
(resumable: finished runs are kept).

    python experiments/reproduce_lm_onpolicy.py --profile full   # the table (after lm_kd's KD)
    python experiments/reproduce_lm_onpolicy.py --profile smoke  # every row once, 20 steps

Writes lm_onpolicy{,_<profile>}.{json,md} and lm_onpolicy{,_<profile>}_curves.png
(experiments/results/ for the full profile); run outputs go to --root (default
workdirs/lm_kd_<profile>, the root of reproduce_lm_kd.py, whose teacher and student-alone
runs this table shares).
"""
import os

from jaxkd.tables import lm, reproduce

HERE = os.path.dirname(os.path.abspath(__file__))
table_config = reproduce.load_table(os.path.join(HERE, 'configs', 'reproduce_lm_onpolicy.py'))

if __name__ == '__main__':
  lm.command_line(__doc__, table_config, default_root=os.path.join('workdirs', 'lm_kd'),
                  full_results=os.path.join(HERE, 'results'))
