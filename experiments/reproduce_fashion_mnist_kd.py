"""Reproduces jaxkd's Fashion-MNIST distillation tables (resumable: finished runs are kept).

    python experiments/reproduce_fashion_mnist_kd.py --profile full   # 5 seeds
    python experiments/reproduce_fashion_mnist_kd.py --profile demo   # make demo

Writes fashion_mnist_kd{,_<profile>}.{json,md} and PNG plots (experiments/results/ for the
full profile); run outputs go to --root (default workdirs/reproduce_<profile>).
"""
from jaxkd.tables import reproduce

if __name__ == '__main__':
  reproduce.main(__file__, __doc__, root_name='reproduce')
