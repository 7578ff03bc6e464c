"""Reproduces jaxkd's layer-transfer sweep (resumable: finished runs are kept).

    python experiments/reproduce_layer_transfer.py --profile full   # 5 seeds, 10 and 100/class
    python experiments/reproduce_layer_transfer.py --profile tiny   # CI: a few steps, 1 seed

Writes layer_transfer{,_<profile>}.{json,md} and a PNG plot (experiments/results/ for the full
profile); run outputs go to --root (default workdirs/layer_transfer_<profile>).
"""
import os

from jaxkd.tables import reproduce

HERE = os.path.dirname(os.path.abspath(__file__))
table_config = reproduce.load_table(os.path.join(HERE, 'configs', 'reproduce_layer_transfer.py'))

if __name__ == '__main__':
  reproduce.command_line(__doc__, table_config,
                         default_root=os.path.join('workdirs', 'layer_transfer'),
                         full_results=os.path.join(HERE, 'results'))
