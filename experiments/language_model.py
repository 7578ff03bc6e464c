"""Trains a language model, or distils one into another (token KD, word-KD, sequence-level KD):
`jaxkd.recipes.language_model`.

    python experiments/language_model.py --config experiments/configs/seqkd_pydoc.py:beam \
        --config.teacher_dir=workdirs/lm_kd/lm_kd/teacher/seed0/final --workdir workdirs/seqkd

Writes WORKDIR/metrics.jsonl, WORKDIR/final_metrics.json and the model in WORKDIR/final.
"""
from jaxkd import cli

if __name__ == '__main__':
  cli.main('language_model', __file__)
