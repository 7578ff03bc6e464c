"""On-policy distillation (GKD; Agarwal et al. 2024) of `lm_student` from a trained
`lm_teacher` on the Python documentation ('pydoc', BPE 2,048), the settings of
reproduce_lm_kd.py's students.

    python experiments/language_model.py --config experiments/configs/gkd_pydoc.py:lambda_0.5 \
        --config.teacher_dir=workdirs/lm_kd/lm_kd/teacher/seed0/final --workdir workdirs/gkd

Variants: 'lambda_0', 'lambda_0.5', 'lambda_1': with that probability per batch
(`student_data_fraction`, the paper's lambda) the student's own samples (T = 1) of the rows'
first 64 tokens, up to 192 more, replace the rows' continuations; the divergence is
JSD(beta = 0.5) against the live teacher (GKD's generalized JSD; `jsd`'s `mixing_weight`
is beta). 'lambda_0' is supervised token KD with JSD (the table's off-policy control);
'reverse_kl_1' is fully on-policy with reverse KL (GKD's on-policy reverse-KL student).
'distillm': DistiLLM's (Ko et al. 2024) skew KL (skew 0.1) with its adaptive off-policy
schedule and the authors' settings: phi_0 = 0, raised by 0.1 when the validation loss rises
by 0.1 nats/token or more, a replay buffer of 1,000 student rows (`jaxkd.on_policy_replay`).
"""
import ml_collections

from jaxkd.recipes import language_model

VARIANTS = ('lambda_0', 'lambda_0.5', 'lambda_1', 'reverse_kl_1', 'distillm')


def get_config(variant: str = 'lambda_0.5') -> ml_collections.ConfigDict:
  variant, config = language_model.student_variant(variant, VARIANTS, default='lambda_0.5',
                                                    what='GKD')
  config.on_policy = {'prompt_len': 64, 'new_tokens': 192, 'temperature': 1.0}
  if variant == 'distillm':
    config.on_policy.update(adaptive=True, student_data_fraction=0.0, buffer_rows=1000,
                            fraction_increment=0.1, loss_tolerance=0.1)
    config.terms = {'skew_kl': {'weight': 1.0, 'skew': 0.1, 'temperature': 1.0}}
    return config
  config.on_policy.student_data_fraction = float(variant.rsplit('_', 1)[1])
  config.terms = ({'reverse_kl': {'weight': 1.0, 'temperature': 1.0}}
                  if variant.startswith('reverse_kl')
                  else {'jsd': {'weight': 1.0, 'mixing_weight': 0.5, 'temperature': 1.0}})
  return config
