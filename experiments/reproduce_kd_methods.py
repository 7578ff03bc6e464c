"""Trains every distillation method once on Fashion-MNIST, LeNet-5 -> LeNet-5-Half.

    python experiments/reproduce_kd_methods.py --profile full   # 1 seed, 5 epochs each
    python experiments/reproduce_kd_methods.py --profile tiny   # a smoke run

Writes kd_methods{,_<profile>}.{json,md} (experiments/results/ for the full profile); run
outputs go to --root (default workdirs/kd_methods_<profile>).
"""
from jaxkd.tables import reproduce

if __name__ == '__main__':
  reproduce.main(__file__, __doc__)
