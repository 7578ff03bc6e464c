"""Chains of teachers on Fashion-MNIST: born-again networks and teacher-assistant chains.

    python experiments/chain.py --config experiments/configs/chain_fashion_mnist.py:born_again \
        --workdir workdirs/ban
    python experiments/chain.py --config experiments/configs/chain_fashion_mnist.py:assistant \
        --config.teacher_dir=workdirs/teacher --workdir workdirs/takd

'born_again' (Furlanello et al. 2018): LeNet-5-Half generation 0 trained with labels, each
next generation of the same architecture distilled from the one before by pure KD at T = 1
(the paper's loss: the teacher's outputs only), then one more student distilled from the
ensemble of all generations. 'assistant' (Mirzadeh et al. 2020): LeNet-5 -> LeNet-5-Mid
(the assistant) -> LeNet-5-Half with the distillation config's KD (hard 0.5, soft 0.5,
T = 4); with `teacher_dir` set the LeNet-5 is that trained teacher instead of generation 0.
Every link is its own run in WORKDIR/<k>-<model>.
"""
import ml_collections

from distill_fashion_mnist import get_config as distill_config  # experiments/configs/

SCHEMES = {
    'born_again': dict(models='lenet5_half,lenet5_half', ensemble=True,
                       terms={'kd': {'weight': 1.0, 'temperature': 1.0}}),
    'assistant': dict(models='lenet5,lenet5_mid,lenet5_half', ensemble=False, terms={}),
}


def get_config(scheme: str = 'born_again') -> ml_collections.ConfigDict:
  scheme = scheme or 'born_again'
  if scheme not in SCHEMES:
    raise ValueError(f'Unknown chain scheme {scheme!r}; valid: {sorted(SCHEMES)}.')
  spec = SCHEMES[scheme]
  config = distill_config(spec['models'].split(',')[-1])
  config.chain = ml_collections.ConfigDict(dict(models=spec['models'],
                                                ensemble=spec['ensemble']))
  config.terms = ml_collections.ConfigDict(spec['terms'])
  return config
