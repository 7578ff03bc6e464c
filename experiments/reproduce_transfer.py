"""Reproduces jaxkd's Fashion-MNIST transfer table (resumable: finished runs are kept).

    python experiments/reproduce_transfer.py --profile full   # 5 seeds, 10 and 100 labels/class
    python experiments/reproduce_transfer.py --profile tiny   # CI: a few steps, 1 seed

Writes transfer{,_<profile>}.{json,md} and a PNG plot (experiments/results/ for the full
profile); run outputs go to --root (default workdirs/transfer_<profile>).
"""
from jaxkd.tables import reproduce

if __name__ == '__main__':
  reproduce.main(__file__, __doc__)
