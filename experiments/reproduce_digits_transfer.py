"""Reproduces jaxkd's Fashion-MNIST -> digits transfer table (resumable: finished runs are kept).

    python experiments/reproduce_digits_transfer.py --profile full  # 5 seeds, 10 labels/class and all
    python experiments/reproduce_digits_transfer.py --profile tiny   # CI: a few steps, 1 seed

Writes digits_transfer{,_<profile>}.{json,md} and a PNG plot (experiments/results/ for the full
profile); run outputs go to --root (default workdirs/digits_transfer_<profile>).
"""
from jaxkd.tables import reproduce

if __name__ == '__main__':
  reproduce.main(__file__, __doc__)
