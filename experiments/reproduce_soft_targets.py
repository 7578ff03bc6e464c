"""Reproduces jaxkd's soft-targets table (resumable: finished runs are kept).

    python experiments/reproduce_soft_targets.py --profile select  # T on validation (seed 10)
    python experiments/reproduce_soft_targets.py --profile full    # 5 seeds, the table
    python experiments/reproduce_soft_targets.py --profile tiny    # CI: one epoch

Writes soft_targets{,_<profile>}.{json,md} and a PNG plot (experiments/results/ for the full
profile); run outputs go to --root (default workdirs/soft_targets_<profile>; the select and
full profiles share their teacher when given the same --root).
"""
import os

from jaxkd.tables import reproduce

HERE = os.path.dirname(os.path.abspath(__file__))
table_config = reproduce.load_table(os.path.join(HERE, 'configs', 'reproduce_soft_targets.py'))

if __name__ == '__main__':
  reproduce.command_line(__doc__, table_config,
                         default_root=os.path.join('workdirs', 'soft_targets'),
                         full_results=os.path.join(HERE, 'results'))
