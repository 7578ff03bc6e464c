"""Every distillation method once on Fashion-MNIST, LeNet-5 -> LeNet-5-Half: profiles 'full'
(teacher 15 epochs, each student 5 epochs, one seed) and 'tiny' (a smoke run).

    python experiments/reproduce_kd_methods.py --profile full

Each method runs with its named config (`kd_methods.py`: the paper's weights and
temperatures) on the LeNet pair's recipe of the distillation table (Adam 2e-3, cosine, batch
64, flips, 5,000 validation images). Epoch-based schedules (DKD's warm-up, CTKD's curriculum)
keep their share of the paper's 240 epochs. One seed: a smoke test of every method on real
data, not a ranking (the 5-seed tables are for that).
"""
import ml_collections

import kd_methods
import reproduce_fashion_mnist_kd as kd_table
from fashion_mnist import get_config as train_config
from jaxkd.tables import building, reproduce
from jaxkd.tables.sweep import RunSpec

NAME = 'kd_methods'
PROFILES = {
    'full': dict(seeds=(0,), teacher_epochs=15, student_epochs=5, validation_size=5000),
    'tiny': dict(seeds=(0,), teacher_epochs=1, student_epochs=1, validation_size=32),
}
PAPER_EPOCHS = 240  # the CIFAR-100 schedule the epoch-based defaults belong to
ROWS = {'teacher': 'LeNet-5 teacher', 'student': 'LeNet-5-Half alone',
        **{name: f'LeNet-5-Half + {name}' for name in kd_methods.METHODS
           if name not in (*kd_methods.GAP_ONLY, *kd_methods.LANGUAGE_ONLY)}}


def get_config(profile: str = 'full') -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict(PROFILES[profile or 'full'])
  config.profile = profile or 'full'
  config.lenet = kd_table.get_config('full').lenet
  return config


def lenet_recipe(config):
  """`common(run, epochs, seed)`: a run on the LeNet pair's recipe of the distillation table
  (its batch, optimizer, augmentation) with this table's validation split."""
  pair = config.lenet

  def common(run, epochs, seed):
    run.seed, run.num_epochs, run.batch_size = seed, epochs, pair.batch_size
    run.optimizer = ml_collections.ConfigDict(pair.optimizer.to_dict())
    run.augment = ml_collections.ConfigDict(pair.augment.to_dict())
    run.validation_size = config.validation_size
    run.log_every = 200
    return run

  return common


def run_specs(config, root: str) -> list:
  common = lenet_recipe(config)
  specs = []
  for seed in config.seeds:
    teacher = RunSpec(NAME, 'teacher', seed, 'train',
                      common(train_config('lenet5'), config.teacher_epochs, seed))
    specs += [teacher, RunSpec(NAME, 'student', seed, 'train',
                               common(train_config('lenet5_half'), config.student_epochs, seed))]
    for method in [m for m in kd_methods.METHODS
                   if m not in (*kd_methods.GAP_ONLY, *kd_methods.LANGUAGE_ONLY)]:
      run = common(kd_methods.get_config(method), config.student_epochs, seed)
      run.teacher_dir = teacher.workdir(root)
      scale_epochs(run, config.student_epochs)
      specs.append(RunSpec(NAME, method, seed, 'distill', run))
  return specs


def scale_epochs(run, epochs: float) -> None:
  """Epoch-based settings of `run`'s terms (DKD's warm-up, CTKD's curriculum) at their share
  of the paper's `PAPER_EPOCHS` in a run of `epochs`."""
  for term in run.terms.values():
    for key in [k for k in term if k.endswith('_epochs')]:
      term[key] = term[key] * epochs / PAPER_EPOCHS


tabulate = building.tabulate_runs


def render(payload: dict) -> str:
  cell = reproduce.cell
  return building.one_seed_render(
      payload, title=f"Every distillation method, LeNet-5 -> LeNet-5-Half ({payload['profile']} "
      "profile)", compared='methods', columns=lambda rows: [
          ('model', lambda r: ROWS.get(r['row'], r['row'])), ('seeds', lambda r: str(r['n'])),
          ('test acc % (last epoch)', lambda r: cell(r, 'test_accuracy')),
          ('test acc % (best val epoch)', lambda r: cell(r, 'best_val_test_accuracy')),
          ('vs kd (points)', reproduce.versus(rows, 'kd', skip=('teacher', 'student')))],
      selection='none: every row is its last epoch (the best-val-epoch column reads the '
      'validation split); each method runs its named config as committed.')
