"""Transfer to another domain: Fashion-MNIST -> the UCI handwritten digits (scikit-learn's copy).

    python experiments/reproduce_digits_transfer.py --profile full   # 5 seeds

Source: LeNet-5 trained on all of Fashion-MNIST (10 classes of clothing). Target: the 1,797
8x8 digits that ship inside scikit-learn (`pip install jaxkd[digits]`), resized to 20x20 and
centred in 28x28 like MNIST (`jaxkd.data.digits`), with 10 labelled images per class (a
different draw per seed) or all of the training split. Rows: scratch, linear probe, full
fine-tune, fine-tune with only conv1-conv2 carried over (the dense layers fresh), and
conv1-conv2 carried over and frozen. 300 of the digits' training images are held out first
(`validation_first`) for the best-validation epoch; the test set is only reported.

The primary test, fixed before any seed ran (from the Fashion-MNIST transfer table, where
carried-over dense layers hurt and convolutions helped): `ft_convs` > `scratch` at 10 labels
per class. Every other test is secondary.

This module is the table's whole description for `jaxkd.tables.reproduce`.
"""
import ml_collections

from jaxkd import data
from jaxkd.tables import building, reproduce
from jaxkd.tables.sweep import RunSpec

NAME = 'digits_transfer'
ROWS = {'scratch': 'LeNet-5 from scratch', 'lp': 'linear probe (head only)',
        'ft': 'full fine-tune', 'ft_convs': 'fine-tune, only conv1-conv2 carried over',
        'frozen_convs': 'conv1-conv2 carried over and frozen, the rest trained'}
PRIMARY = ('ft_convs', 'scratch', 10)  # (treatment, control, labels per class), in advance
CONVS = ('conv1', 'conv2')
DENSE = ('params/dense1/.*', 'params/dense2/.*')

PROFILES = {
    # labels per class: 0 = the whole training split (less the validation images)
    'full': dict(seeds=(0, 1, 2, 3, 4), labels_per_class=(10, 0), source_epochs=10,
                 source_steps=0, target_steps=300, validation_size=300),
    'tiny': dict(seeds=(0,), labels_per_class=(2,), source_epochs=1, source_steps=4,
                 target_steps=4, validation_size=40),
}


def get_config(profile: str = 'full') -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict(PROFILES[profile or 'full'])
  config.profile = profile or 'full'
  config.target = ml_collections.ConfigDict(dict(learning_rate=1e-3, lp_learning_rate=1e-2))
  return config


def _table(per_class: int) -> str:
  return f'{NAME}_{per_class}_per_class' if per_class else f'{NAME}_all'


def _label(per_class: int) -> str:
  return f'{per_class} / class' if per_class else 'all'


def run_specs(config, root: str) -> list:
  """Every run, each source before the target runs that start from it."""
  from fashion_mnist import get_config as train_config
  from finetune_fashion_mnist import get_config as finetune_config

  def targets(source, seed, per_class):
    specs = []
    for row in ROWS:
      run = finetune_config('lp' if row == 'lp' else 'ft')
      run.dataset = 'digits'
      run.classes = ()
      run.seed = seed
      run.train_per_class = per_class
      run.validation_size = config.validation_size
      run.validation_first = True
      run.batch_size = min(50, 10 * per_class // 4) if per_class else 50  # 4 steps/epoch
      run.num_steps = config.target_steps
      run.eval_every = 5 if per_class else 1
      run.checkpoint_every = 0
      run.log_every = 50
      run.optimizer.learning_rate = (config.target.lp_learning_rate if row == 'lp'
                                     else config.target.learning_rate)
      run.init_dir = '' if row == 'scratch' else source.workdir(root)
      if row in ('ft_convs', 'frozen_convs'):
        run.dont_load = (*run.dont_load, *DENSE)
      if row == 'frozen_convs':
        run.finetune.frozen = tuple(f'{layer}/.*' for layer in CONVS)
      specs.append(RunSpec(_table(per_class), row, seed, 'finetune', run,
                           info={'labels_per_class': per_class}))
    return specs

  return building.transfer_specs(NAME, lambda: train_config('lenet5'), targets, config=config)


# --- results -----------------------------------------------------------------------------------

def tabulate(records, config) -> dict:
  return building.tabulate_per_class(records, config, table=_table, rows=ROWS, primary=PRIMARY)


def render(payload: dict) -> str:
  per_class = payload['labels_per_class']
  lines = building.transfer_opening(
      payload, title='Transfer to another domain, Fashion-MNIST -> UCI digits', name=NAME,
      trained_on='Fashion-MNIST', caption='Digits test accuracy % (mean ± std over seeds; last '
      'step, and the epoch of best validation accuracy):')
  return building.per_class_markdown(
      lines, payload, ROWS, {_label(n): _table(n) for n in per_class},
      primary_at=f"at {_label(payload['primary'][2])}", against='labels',
      against_cell=lambda t: _label(t['labels_per_class']),
      selection='held-out digits training images choose the "best val" epoch; the primary '
      'test was fixed in advance; the test set is only reported.')


def plot_files(name: str) -> dict:
  return {'labels': f'{name}_labels.png'}


def plot(records, specs, *, config, root: str, paths: dict) -> None:
  del specs, root
  # 'all': the training split less the validation images, per class (1,201 - 300 -> ~90)
  info = data.info('digits')
  all_per_class = round((info.splits['train'] - config.validation_size) / info.num_classes)
  reproduce.plot_against_labels(
      paths['labels'], records, ROWS, all_labels=all_per_class,
      xlabel=f'labelled digits per class (all = {all_per_class})',
      ylabel='digits test accuracy %', title='Fashion-MNIST -> UCI digits: transfer vs labels')
