"""Sequence-level KD (Kim & Rush 2016) of `lm_student` from a trained `lm_teacher` on the
Python documentation ('pydoc', BPE 2,048), the settings of reproduce_lm_kd.py's students.

    python experiments/language_model.py --config experiments/configs/seqkd_pydoc.py:beam \
        --config.teacher_dir=workdirs/lm_kd/lm_kd/teacher/seed0/final --workdir workdirs/seqkd

Variants: 'greedy' and 'beam' (4 beams) train on the teacher's continuations with
cross-entropy alone; 'greedy_word_kd' and 'beam_word_kd' add token KD from the live teacher
(weights 0.5 / 0.5, temperature 1). Prompts are the first 64 tokens of each training row, the
teacher writes up to 192 more (stopping at the document separator); the data is decoded once
into `seqkd.data_dir` (set it to share one dataset between seeds and variants of the same
decoding).
"""
import ml_collections

from jaxkd.recipes import language_model

VARIANTS = ('greedy', 'beam', 'greedy_word_kd', 'beam_word_kd')


def get_config(variant: str = 'greedy') -> ml_collections.ConfigDict:
  variant, config = language_model.student_variant(variant, VARIANTS, default='greedy',
                                                    what='SeqKD')
  decode = variant.split('_')[0]
  config.seqkd = {'decode': decode, 'num_beams': 4 if decode == 'beam' else 1,
                  'prompt_len': 64, 'new_tokens': 192, 'data_dir': ''}
  config.terms = ({'ce': {'weight': 0.5}, 'kd': {'weight': 0.5, 'temperature': 1.0}}
                  if variant.endswith('word_kd') else {'ce': {'weight': 1.0}})
  return config
