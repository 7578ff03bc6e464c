"""Reproduces jaxkd's method table (resumable: finished runs are kept).

    python experiments/reproduce_methods.py --profile select  # seed 10: ranks rows on validation
    python experiments/reproduce_methods.py --profile full    # the table
    python experiments/reproduce_methods.py --profile smoke   # CI: a few rows, 2 steps

Writes methods{,_<profile>}.{json,md} and a PNG plot (experiments/results/ for the full
profile); run outputs go to --root (default workdirs/methods_<profile>; the select and full
profiles share the seed-0 teacher when given the same --root).
"""
import os

from jaxkd.tables import reproduce

HERE = os.path.dirname(os.path.abspath(__file__))
table_config = reproduce.load_table(os.path.join(HERE, 'configs', 'reproduce_methods.py'))

if __name__ == '__main__':
  reproduce.command_line(__doc__, table_config, default_root=os.path.join('workdirs', 'methods'),
                         full_results=os.path.join(HERE, 'results'))
