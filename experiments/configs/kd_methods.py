"""Every distillation method of `jaxkd.losses.LOSSES` as a named config, with its paper's
default hyper-parameters (CIFAR-100 settings where the authors give several).

    python experiments/distill.py --config experiments/configs/kd_methods.py:dkd \
        --config.teacher_dir=workdirs/teacher --workdir workdirs/dkd
    python experiments/distill.py --config experiments/configs/kd_methods.py:dkd+fitnet ...

`A+B` adds method B's distillation terms to method A's (cross-entropy weight of A). Any
setting can be overridden: `--config.terms.dkd.temperature=2 --config.terms.ce.weight=0.5`.
Settings named `<x>_epochs` are turned into `<x>_steps` with the run's steps per epoch.
Feature taps name LeNet-5 modules (`pool1`, `pool2`); other models list theirs in
`jaxkd.models.feature_paths`.
"""
import ml_collections

from distill_fashion_mnist import get_config as distill_config  # experiments/configs/

# name: (cross-entropy weight, {term: settings}), each with the source of its defaults.
METHODS = {
    # Hinton et al. 2015; weights and T of the CIFAR-100 recipe (mdistiller, CRD, DKD).
    'kd': (0.1, {'kd': dict(weight=0.9, temperature=4.0)}),
    # Reverse KL (mode-seeking; e.g. Gu et al. 2024): no paper default, the kd recipe's.
    'reverse_kl': (0.1, {'reverse_kl': dict(weight=0.9, temperature=4.0)}),
    # Generalised JSD, Agarwal et al. 2024 (GKD): mixing 0.5, T = 1 as in their experiments.
    'jsd': (0.1, {'jsd': dict(weight=0.9, temperature=1.0, mixing_weight=0.5)}),
    # Zhao et al. 2022 (mdistiller DKD): CE 1, alpha 1, beta 8, T 4, 20 warm-up epochs.
    'dkd': (1.0, {'dkd': dict(weight=1.0, temperature=4.0, target_weight=1.0,
                              non_target_weight=8.0, warmup_epochs=20.0)}),
    # Huang et al. 2022 (reference implementation's defaults): beta = gamma = 1, tau = 1.
    'dist': (1.0, {'dist': dict(weight=1.0, temperature=1.0, inter_weight=1.0,
                                intra_weight=1.0)}),
    # Yang et al. 2023 (yzd-v/cls_KD NKDLoss): temp 1, gamma 1.5, CE 1.
    'nkd': (1.0, {'nkd': dict(weight=1.0, temperature=1.0, non_target_weight=1.5)}),
    # Zheng & Yang 2024 (zkxufo/TTM README): gamma = 0.1 (T = 10), weight 45, CE 1.
    'ttm': (1.0, {'ttm': dict(weight=45.0, temperature=10.0)}),
    # Zheng & Yang 2024 (README's WTTM example): gamma = 0.2 (T = 5), weight 4, CE 1.
    'wttm': (1.0, {'wttm': dict(weight=4.0, temperature=5.0)}),
    # Li et al. 2023 (zhengli97/CTKD): T in [1, 21], reversal 0 -> 1 over 10 epochs, KD
    # weights 0.1 / 0.9.
    'ctkd': (0.1, {'ctkd': dict(weight=0.9, min_temperature=1.0, temperature_range=20.0,
                                max_reversal=1.0, curriculum_epochs=10.0)}),
    # KD with logit standardisation, Sun et al. 2024: base T 2, KD weight 9, CE 0.1.
    'kd_ls': (0.1, {'kd': dict(weight=9.0, temperature=2.0, standardize=True)}),
    # Romero et al. 2015 (mdistiller FITNET): hint weight 100, CE 1; a middle stage.
    'fitnet': (1.0, {'fitnet': dict(weight=100.0, student_tap='pool2', teacher_tap='pool2')}),
    # Zagoruyko & Komodakis 2017 (mdistiller AT): p = 2, weight 1000, CE 1, every stage.
    'at': (1.0, {'at': dict(weight=1000.0, student_taps=('pool1', 'pool2'),
                            teacher_taps=('pool1', 'pool2'), power=2.0)}),
    # Tung & Mori 2019 (RepDistiller run script): weight 3000, the last conv stage.
    'sp': (1.0, {'sp': dict(weight=3000.0, student_tap='pool2', teacher_tap='pool2')}),
    # Peng et al. 2019: gamma 0.4, order 2 (torchdistill); no released weight for this
    # reduction (squared Frobenius / B^2, as Knowledge-Distillation-Zoo's CC): 100, set a priori.
    'cc': (1.0, {'cc': dict(weight=100.0, gamma=0.4, order=2, student_tap='dense2',
                            teacher_tap='dense2')}),
    # Park et al. 2019 (RepDistiller): distance 25, angle 50, weight 1, the penultimate layer.
    'rkd': (1.0, {'rkd': dict(weight=1.0, distance_weight=25.0, angle_weight=50.0,
                              student_tap='dense2', teacher_tap='dense2')}),
    # Passalis & Tefas 2018 (RepDistiller): weight 30000, the penultimate layer.
    'pkt': (1.0, {'pkt': dict(weight=30000.0, student_tap='dense2', teacher_tap='dense2')}),
    # Huang & Wang 2017 (RepDistiller): weight 50, the intermediate maps.
    'nst': (1.0, {'nst': dict(weight=50.0, student_taps=('pool1', 'pool2'),
                              teacher_taps=('pool1', 'pool2'))}),
    # Liu et al. 2021 (ICKD CIFAR-100 README): weight 2.5, the last conv stage.
    'ickd': (1.0, {'ickd': dict(weight=2.5, student_taps=('pool2',), teacher_taps=('pool2',))}),
    # Yim et al. 2017: RepDistiller trains FSP alone in a first stage, then CE; here one joint
    # objective, weight 1 (set a priori). The flow between conv2 (10x10) and pool2 (5x5):
    # LeNet's pool1 (14x14) does not pool onto either.
    'fsp': (1.0, {'fsp': dict(weight=1.0, student_taps=('conv2', 'pool2'),
                              teacher_taps=('conv2', 'pool2'))}),
    # Ahn et al. 2019 (RepDistiller): weight 1, initial variance 5, the intermediate maps.
    'vid': (1.0, {'vid': dict(weight=1.0, initial_variance=5.0, student_taps=('pool1', 'pool2'),
                              teacher_taps=('pool1', 'pool2'))}),
    # Heo et al. 2019: weight 1e-3 (CIFAR: the batch sum / 1000), pre-ReLU maps (LeNet's conv
    # outputs); LeNet-5 has no BatchNorm, so the margin reads the batch's statistics.
    'ofd': (1.0, {'ofd': dict(weight=1e-3, student_taps=('conv1', 'conv2'),
                              teacher_taps=('conv1', 'conv2'))}),
    # Tian et al. 2020 (RepDistiller train_student.py): weight 0.8 (-b), 128 dimensions,
    # 16384 negatives, T 0.07, momentum 0.5; the penultimate layer. num_data: the train split.
    'crd': (1.0, {'crd': dict(weight=0.8, embed_dim=128, num_negatives=16384, temperature=0.07,
                              momentum=0.5, student_tap='dense2', teacher_tap='dense2')}),
    # Chen et al. 2021 (ReviewKD): HCL weight 1 (their default; 5 for the CIFAR ResNet/WRN
    # pairs), the conv stages fused deepest first.
    'reviewkd': (1.0, {'reviewkd': dict(weight=1.0, student_taps=('pool1', 'pool2'),
                                        teacher_taps=('pool1', 'pool2'))}),
    # Wei et al. 2024 (SD-KD: mdistiller's KD settings): T 4, weight 0.9, CE 0.1, scales
    # 1, 2, 4, complementary cells x 2. Needs a classifier on the global average of the last
    # stage (ResNet/WRN; not LeNet-5): use with a ResNet pair, e.g. --config.model=resnet8.
    'sdd': (0.1, {'sdd': dict(weight=0.9, temperature=4.0, complementary_weight=2.0,
                              scales=(1, 2, 4), student_tap='stage3', teacher_tap='stage3')}),
}
GAP_ONLY = ('sdd',)  # methods that need a global-average-pool classifier (not LeNet-5)


def get_config(methods: str = 'kd') -> ml_collections.ConfigDict:
  names = (methods or 'kd').split('+')
  unknown = [n for n in names if n not in METHODS]
  if unknown:
    raise ValueError(f'Unknown method(s) {unknown}; valid: {sorted(METHODS)} (join with +).')
  config = distill_config('lenet5_half')
  terms = {'ce': dict(weight=METHODS[names[0]][0])}
  for name in names:
    terms.update({term: dict(settings) for term, settings in METHODS[name][1].items()})
  config.terms = ml_collections.ConfigDict(terms)
  config.method = '+'.join(names)
  return config
