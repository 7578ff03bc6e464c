"""Reproduces jaxkd's headroom distillation table (resumable: finished runs are kept).

    python experiments/reproduce_headroom_kd.py --profile select  # KD settings on validation
    python experiments/reproduce_headroom_kd.py --profile full    # 5 seeds, the table
    python experiments/reproduce_headroom_kd.py --profile teachers  # the 5 teachers alone
    python experiments/reproduce_headroom_kd.py --profile tiny    # CI: one epoch

Writes headroom_kd{,_<profile>}.{json,md} and a PNG plot (experiments/results/ for the full
profile); run outputs go to --root (default workdirs/headroom_kd_<profile>; the select and
full profiles share the seed-0 teacher when given the same --root).
"""
from jaxkd.tables import reproduce

if __name__ == '__main__':
  reproduce.main(__file__, __doc__)
