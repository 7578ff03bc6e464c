"""Fine-tuning a source-task model on a target task (LP, FT, LP-FT, gradual unfreezing).

    python experiments/finetune.py --config experiments/configs/finetune_fashion_mnist.py:lp_ft \
        --config.init_dir=workdirs/source --workdir workdirs/lp_ft

Writes WORKDIR/metrics.jsonl, WORKDIR/final_metrics.json and the fine-tuned model in
WORKDIR/final (a teacher for experiments/distill.py on the target task). Rerunning the same
command resumes from the newest checkpoint in WORKDIR/checkpoints.
"""
import os
import sys

from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configs'))

from jaxkd import recipes  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file (see experiments/configs).')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Output folder.', required=True)


def main(argv):
  del argv
  recipes.enable_compilation_cache()
  final = recipes.finetune(_CONFIG.value, _WORKDIR.value)
  print(f"test accuracy {final['test_accuracy']:.4f}  params_sha256 {final['params_sha256']}")


if __name__ == '__main__':
  flags.mark_flags_as_required(['config'])
  app.run(main)
