"""Every teacher scheme once on Fashion-MNIST, LeNet-sized models: profiles 'full' (teacher
15 epochs, every student model 5 epochs, one seed) and 'tiny' (a smoke run).

    python experiments/reproduce_schemes.py --profile full

Rows: the LeNet-5 teacher, LeNet-5-Half alone and with plain KD from it (the `kd` named
method), deep mutual learning (two LeNet-5-Halfs; the row is their mean, the members are in
the run's final_metrics.json), self-distillation from an EMA teacher, born-again networks (2
generations, then the ensemble of both teaching a third student) and a teacher-assistant
chain (the LeNet-5 teacher -> LeNet-5-Mid -> LeNet-5-Half). Every scheme runs its committed
config on the LeNet pair's recipe of the distillation table (Adam 2e-3, cosine, batch 64,
flips, 5,000 validation images). One seed: a smoke test of each scheme on real data, not a
ranking.
"""
import ml_collections

import chain_fashion_mnist
import ema_fashion_mnist
import kd_methods
import mutual_fashion_mnist
import reproduce_kd_methods as methods_table
from fashion_mnist import get_config as train_config
from jaxkd.tables import building, reproduce
from jaxkd.tables.sweep import RunSpec

NAME = 'schemes'
PROFILES = methods_table.PROFILES
ROWS = {'teacher': 'LeNet-5 teacher', 'student': 'LeNet-5-Half alone',
        'kd': 'LeNet-5-Half + KD (teacher)', 'dml': 'LeNet-5-Half x 2, mutual learning',
        'ema': 'LeNet-5-Half + EMA teacher',
        'born_again': 'LeNet-5-Half, born-again x 2 + ensemble',
        'assistant': 'LeNet-5 -> LeNet-5-Mid -> LeNet-5-Half'}


def get_config(profile: str = 'full') -> ml_collections.ConfigDict:
  return methods_table.get_config(profile)


def run_specs(config, root: str) -> list:
  common = methods_table.lenet_recipe(config)
  specs, epochs = [], config.student_epochs
  for seed in config.seeds:
    teacher = RunSpec(NAME, 'teacher', seed, 'train',
                      common(train_config('lenet5'), config.teacher_epochs, seed))
    kd = common(kd_methods.get_config('kd'), epochs, seed)
    kd.teacher_dir = teacher.workdir(root)
    assistant = common(chain_fashion_mnist.get_config('assistant'), epochs, seed)
    assistant.teacher_dir = teacher.workdir(root)
    assistant.chain.models = 'lenet5_mid,lenet5_half'
    specs += [
        teacher,
        RunSpec(NAME, 'student', seed, 'train', common(train_config('lenet5_half'), epochs, seed)),
        RunSpec(NAME, 'kd', seed, 'distill', kd),
        RunSpec(NAME, 'dml', seed, 'mutual', common(mutual_fashion_mnist.get_config(), epochs,
                                                    seed)),
        RunSpec(NAME, 'ema', seed, 'ema_teacher', common(ema_fashion_mnist.get_config(), epochs,
                                                         seed)),
        RunSpec(NAME, 'born_again', seed, 'chain',
                common(chain_fashion_mnist.get_config('born_again'), epochs, seed)),
        RunSpec(NAME, 'assistant', seed, 'chain', assistant),
    ]
  return specs


tabulate = building.tabulate_runs


def render(payload: dict) -> str:
  cell = reproduce.cell
  return building.one_seed_render(
      payload, title=f"Teacher schemes, LeNet-sized models ({payload['profile']} profile)",
      compared='schemes', columns=lambda rows: [
          ('models', lambda r: ROWS.get(r['row'], r['row'])), ('seeds', lambda r: str(r['n'])),
          ('test acc % (last epoch)', lambda r: cell(r, 'test_accuracy')),
          ('vs student alone (points)',
           reproduce.versus(rows, 'student', skip=('teacher', 'student'))),
          ('vs kd (points)', reproduce.versus(rows, 'kd', skip=('teacher', 'kd')))],
      selection='none: every model is its last epoch; each scheme runs its config as committed '
      '(the dml row is the mean of its two members; chains report their last student).')
