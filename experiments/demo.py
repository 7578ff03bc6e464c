"""`make demo`: LeNet-5 on Fashion-MNIST for one epoch, then its test accuracy."""
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), 'configs'))

import fashion_mnist  # noqa: E402  (experiments/configs/fashion_mnist.py)

from jaxkd import recipes  # noqa: E402


def main():
  recipes.enable_compilation_cache()
  config = fashion_mnist.get_config('lenet5')
  workdir = os.environ.get('JAXKD_DEMO_DIR', 'workdirs/demo/lenet5')
  start = time.perf_counter()
  final = recipes.train(config, workdir)
  print(f"\nLeNet-5, Fashion-MNIST, 1 epoch: test accuracy {100 * final['test_accuracy']:.2f} % "
        f"({time.perf_counter() - start:.0f} s); metrics in {workdir}")


if __name__ == '__main__':
  main()
