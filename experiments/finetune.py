"""Fine-tuning a source-task model on a target task (LP, FT, LP-FT, gradual unfreezing).

    python experiments/finetune.py --config experiments/configs/finetune_fashion_mnist.py:lp_ft \
        --config.init_dir=workdirs/source --workdir workdirs/lp_ft

Writes WORKDIR/metrics.jsonl, WORKDIR/final_metrics.json and the fine-tuned model in
WORKDIR/final (a teacher for experiments/distill.py on the target task). Rerunning the same
command resumes from the newest checkpoint in WORKDIR/checkpoints.
"""
from jaxkd import cli

if __name__ == '__main__':
  cli.main('finetune', __file__)
