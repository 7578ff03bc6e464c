"""Reproduces jaxkd's soft-targets table (resumable: finished runs are kept).

    python experiments/reproduce_soft_targets.py --profile select  # T on validation (seed 10)
    python experiments/reproduce_soft_targets.py --profile full    # 5 seeds, the table
    python experiments/reproduce_soft_targets.py --profile tiny    # CI: one epoch

Writes soft_targets{,_<profile>}.{json,md} and a PNG plot (experiments/results/ for the full
profile); run outputs go to --root (default workdirs/soft_targets_<profile>; the select and
full profiles share their teacher when given the same --root).
"""
from jaxkd.tables import reproduce

if __name__ == '__main__':
  reproduce.main(__file__, __doc__)
