"""Trains every teacher scheme once on Fashion-MNIST with LeNet-sized models.

    python experiments/reproduce_schemes.py --profile full   # 1 seed, 5 epochs per model
    python experiments/reproduce_schemes.py --profile tiny   # a smoke run

Writes schemes{,_<profile>}.{json,md} (experiments/results/ for the full profile); run
outputs go to --root (default workdirs/schemes_<profile>).
"""
from jaxkd.tables import reproduce

if __name__ == '__main__':
  reproduce.main(__file__, __doc__)
