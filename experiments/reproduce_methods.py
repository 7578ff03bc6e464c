"""Reproduces jaxkd's method table (resumable: finished runs are kept).

    python experiments/reproduce_methods.py --profile select  # seed 10: ranks rows on validation
    python experiments/reproduce_methods.py --profile full    # the table
    python experiments/reproduce_methods.py --profile smoke   # CI: a few rows, 2 steps

Writes methods{,_<profile>}.{json,md} and a PNG plot (experiments/results/ for the full
profile); run outputs go to --root (default workdirs/methods_<profile>; the select and full
profiles share the seed-0 teacher when given the same --root).
"""
from jaxkd.tables import reproduce

if __name__ == '__main__':
  reproduce.main(__file__, __doc__)
