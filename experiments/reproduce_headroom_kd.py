"""Reproduces jaxkd's headroom distillation table (resumable: finished runs are kept).

    python experiments/reproduce_headroom_kd.py --profile select  # KD settings on validation
    python experiments/reproduce_headroom_kd.py --profile full    # 5 seeds, the table
    python experiments/reproduce_headroom_kd.py --profile teachers  # the 5 teachers alone
    python experiments/reproduce_headroom_kd.py --profile tiny    # CI: one epoch

Writes headroom_kd{,_<profile>}.{json,md} and a PNG plot (experiments/results/ for the full
profile); run outputs go to --root (default workdirs/headroom_kd_<profile>; the select and
full profiles share the seed-0 teacher when given the same --root).
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, 'configs'))

import reproduce_headroom_kd as table_config  # noqa: E402

from jaxkd.tables import reproduce  # noqa: E402

if __name__ == '__main__':
  reproduce.command_line(__doc__, table_config,
                         default_root=os.path.join('workdirs', 'headroom_kd'),
                         full_results=os.path.join(HERE, 'results'))
