"""The CIFAR-100 pairs of the CRD / DKD tables: teachers, students alone, KD and DKD.

    JAXKD_CIFAR100_DIR=/data/cifar python experiments/reproduce_cifar100.py --profile full
    python experiments/reproduce_cifar100.py --profile tiny   # a smoke run of the machinery

Writes cifar100{,_<profile>}.{json,md} (experiments/results/ for the full profile); run
outputs go to --root (default workdirs/cifar100_<profile>). Needs the CIFAR-100 archive,
which no machine of this project can download: the full profile is for a GPU and the data.
"""
from jaxkd.tables import reproduce

if __name__ == '__main__':
  reproduce.main(__file__, __doc__)
