"""Reproduces jaxkd's Fashion-MNIST distillation tables (resumable: finished runs are kept).

    python experiments/reproduce_fashion_mnist_kd.py --profile full   # 5 seeds
    python experiments/reproduce_fashion_mnist_kd.py --profile demo   # make demo

Writes fashion_mnist_kd{,_<profile>}.{json,md} and PNG plots (experiments/results/ for the
full profile); run outputs go to --root (default workdirs/reproduce_<profile>).
"""
import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, 'configs'))

import reproduce_fashion_mnist_kd as table_config  # noqa: E402

from jaxkd import recipes  # noqa: E402
from jaxkd.reproduce import fashion_mnist_kd  # noqa: E402


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--profile', default='full', choices=sorted(table_config.PROFILES))
  parser.add_argument('--root', default=None, help='folder for the runs')
  parser.add_argument('--results', default=None,
                      help='folder for the tables and plots (default: experiments/results for '
                           'the full profile, ROOT/results for the others)')
  parser.add_argument('--seeds', default='',
                      help='comma-separated subset of the profile\'s seeds, to split a sweep '
                           'over processes sharing --root (then rerun without it to collect)')
  parser.add_argument('--collect-only', action='store_true',
                      help='tabulate the finished runs under --root; run nothing')
  args = parser.parse_args()
  recipes.enable_compilation_cache()
  config = table_config.get_config(args.profile)
  root = args.root or os.path.join('workdirs', f'reproduce_{args.profile}')
  results = args.results or (os.path.join(HERE, 'results') if args.profile == 'full'
                             else os.path.join(root, 'results'))
  specs = table_config.run_specs(config, root)
  if args.seeds:
    seeds = {int(seed) for seed in args.seeds.split(',')}
    specs = [spec for spec in specs if spec.seed in seeds]
  fashion_mnist_kd(specs, profile=args.profile,
                   references=table_config.REFERENCES, root=root, results_dir=results,
                   sweep_seeds=tuple(config.sweep_seeds), collect_only=args.collect_only)


if __name__ == '__main__':
  main()
