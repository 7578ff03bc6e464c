"""Deep mutual learning: a cohort of students trained together, each taught by the others.

    python experiments/mutual.py --config experiments/configs/mutual_fashion_mnist.py \
        --workdir workdirs/dml

Writes WORKDIR/metrics.jsonl, WORKDIR/final_metrics.json (the cohort) and each member in
WORKDIR/members/<i> (final/ and final_metrics.json).
"""
from jaxkd import cli

if __name__ == '__main__':
  cli.main('mutual', __file__)
