"""Born-again networks and teacher-assistant chains: each generation teaches the next.

    python experiments/chain.py --config experiments/configs/chain_fashion_mnist.py:born_again \
        --workdir workdirs/ban

Each link runs in WORKDIR/<k>-<model> (a finished train/distill run); WORKDIR/final_metrics.json
holds the last student's metrics and every generation's test accuracy.
"""
from jaxkd import cli

if __name__ == '__main__':
  cli.main('chain', __file__)
