"""A hostile but realistic user's bad inputs, beyond the config settings (test_validation.py):
checkpoints and workdirs, teachers and source models, the library API, data and numerics.

Every case asserts the error type and that the message names the setting, quantity or file;
every case that meets an existing workdir asserts that its files are byte-identical after
the refusal. Runs are tiny MLPs on generated Fashion-MNIST, built once per module.
"""
import fcntl
import glob
import hashlib
import json
import os
import shutil

import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from fakedata import fashion_mnist_in_process, make_fashion_mnist
from jaxkd import cache, checkpoint, data, losses, recipes
from jaxkd.data import pipeline
from jaxkd.recipes import defaults
from jaxkd.recipes.run import LOCK_FILE, WorkdirBusyError



@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """Generated data, two teachers, and templates of unfinished train and distill runs."""
  with fashion_mnist_in_process(tmp_path_factory.mktemp('bad_inputs'), n_train=200,
                                n_test=50) as tmp:
    recipes.train(config('train'), str(tmp / 'teacher'))
    recipes.train(config('train', seed=1), str(tmp / 'teacher2'))
    recipes.distill(config('distill', teacher_dir=str(tmp / 'teacher')), str(tmp / 'kd'))
    for name in ('teacher', 'kd'):  # unfinished copies: checkpoints at steps 2 and 4 only
      shutil.copytree(tmp / name, tmp / f'{name}_partial')
      os.remove(tmp / f'{name}_partial' / 'final_metrics.json')
      shutil.rmtree(tmp / f'{name}_partial' / 'final')
    yield tmp


def config(kind: str, **changes):
  config = {'train': defaults.supervised, 'distill': defaults.distillation}[kind]('mlp')
  config.model_overrides = ml_collections.ConfigDict({'hidden': (16,)})
  config.update(dict(num_steps=4, batch_size=16, log_every=1, checkpoint_every=2,
                     eval_batch_size=50))
  config.parallel.num_devices = 1
  for dotted, value in changes.items():
    *parents, leaf = dotted.split('__')
    node = config
    for part in parents:
      node = node[part]
    node[leaf] = value
  return config


def snapshot(folder) -> dict:
  """{relative path: sha256} of every file under `folder`."""
  files = {}
  for path in sorted(glob.glob(os.path.join(folder, '**'), recursive=True)):
    if os.path.isfile(path):
      with open(path, 'rb') as f:
        files[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
  return files


def flip_byte(folder: str) -> str:
  """Flips one byte in the middle of the largest array-data file under `folder`."""
  files = [p for p in glob.glob(os.path.join(folder, '**'), recursive=True)
           if os.path.isfile(p) and '/d/' in p]
  path = max(files, key=os.path.getsize)
  with open(path, 'r+b') as f:
    f.seek(os.path.getsize(path) // 2)
    byte = f.read(1)
    f.seek(-1, 1)
    f.write(bytes([byte[0] ^ 0x10]))
  return path


# --- workdirs and checkpoints: (name, kind, template, changes, error, words) -----------------
RESUMES = [
    ('rerun-finished', 'train', 'teacher', {}, FileExistsError, 'holds a finished run'),
    ('rerun-finished-other-seed', 'train', 'teacher', {'seed': 3},
     checkpoint.IncompatibleCheckpointError, 'seed: checkpoint 0, this run 3'),
    ('resume-learning-rate', 'train', 'teacher_partial', {'optimizer__learning_rate': 1e-2},
     checkpoint.IncompatibleCheckpointError, 'settings.optimizer.learning_rate'),
    ('resume-optimizer', 'train', 'teacher_partial', {'optimizer__name': 'sgd'},
     checkpoint.IncompatibleCheckpointError, 'settings.optimizer.name'),
    ('resume-schedule', 'train', 'teacher_partial', {'optimizer__schedule': 'constant'},
     checkpoint.IncompatibleCheckpointError, 'settings.optimizer.schedule'),
    ('resume-warmup', 'train', 'teacher_partial', {'optimizer__warmup_steps': 2},
     checkpoint.IncompatibleCheckpointError, 'settings.optimizer.warmup_steps'),
    ('resume-label-smoothing', 'train', 'teacher_partial', {'label_smoothing': 0.1},
     checkpoint.IncompatibleCheckpointError, 'settings.label_smoothing'),
    ('resume-augment', 'train', 'teacher_partial', {'augment__flip': True},
     checkpoint.IncompatibleCheckpointError, 'settings.augment.flip'),
    ('resume-seed', 'train', 'teacher_partial', {'seed': 5},
     checkpoint.IncompatibleCheckpointError, 'seed'),
    ('resume-batch-size', 'train', 'teacher_partial', {'batch_size': 8},
     checkpoint.IncompatibleCheckpointError, 'batch_size'),
    ('resume-fewer-steps', 'train', 'teacher_partial', {'num_steps': 2},
     checkpoint.IncompatibleCheckpointError, 'settings.num_steps'),
    ('resume-model', 'train', 'teacher_partial',
     {'model_overrides': ml_collections.ConfigDict({'hidden': (32,)})},
     checkpoint.IncompatibleCheckpointError, 'model_overrides.hidden'),
    ('resume-classes', 'train', 'teacher_partial', {'classes': (0, 1, 2)},
     checkpoint.IncompatibleCheckpointError, 'classes'),
    ('resume-validation', 'train', 'teacher_partial', {'validation_size': 20},
     checkpoint.IncompatibleCheckpointError, 'settings.validation_size'),
    ('checkpoints-without-checkpointing', 'train', 'teacher_partial', {'checkpoint_every': 0},
     FileExistsError, 'checkpoint_every=0'),
    ('resume-temperature', 'distill', 'kd_partial', {'kd__temperature': 2.0},
     checkpoint.IncompatibleCheckpointError, 'kd.temperature'),
    ('resume-soft-weight', 'distill', 'kd_partial', {'kd__soft_weight': 0.9},
     checkpoint.IncompatibleCheckpointError, 'kd.soft_weight'),
    ('resume-cache', 'distill', 'kd_partial', {'kd__cache': 'float16'},
     checkpoint.IncompatibleCheckpointError, 'kd.cache'),
    ('resume-other-teacher', 'distill', 'kd_partial', {'teacher_dir': 'teacher2'},
     checkpoint.IncompatibleCheckpointError, 'teacher fingerprint'),
    ('distill-finished', 'distill', 'kd', {}, FileExistsError, 'holds a finished run'),
]


@pytest.mark.parametrize('name, kind, template, changes, error, words', RESUMES,
                         ids=[r[0] for r in RESUMES])
def test_unsafe_rerun_is_refused_and_changes_nothing(runs, tmp_path, name, kind, template,
                                                      changes, error, words):
  del name
  workdir = tmp_path / 'run'
  shutil.copytree(runs / template, workdir)
  before = snapshot(workdir)
  if 'teacher_dir' in changes:
    changes = {**changes, 'teacher_dir': str(runs / changes['teacher_dir'])}
  if kind == 'distill':
    changes = {'teacher_dir': str(runs / 'teacher'), **changes}
  with pytest.raises(error) as raised:
    recipes.RECIPES[kind](config(kind, **changes), str(workdir))
  assert words in str(raised.value), str(raised.value)
  assert snapshot(workdir) == before


def test_same_settings_resume_and_stale_lock(runs, tmp_path):
  """The unfinished run resumes with its own settings, over a lock file left by a killed
  process (no live owner): the guard refuses what differs, not what resumes."""
  workdir = tmp_path / 'run'
  shutil.copytree(runs / 'teacher_partial', workdir)
  (workdir / LOCK_FILE).write_text('{"pid": 999999, "host": "gone"}')  # stale: nobody holds it
  final = recipes.train(config('train'), str(workdir))
  with open(runs / 'teacher' / 'final_metrics.json') as f:
    assert final['params_sha256'] == json.load(f)['params_sha256']
  assert not (workdir / LOCK_FILE).exists()


def test_second_process_on_a_workdir_is_refused(runs, tmp_path):
  workdir = tmp_path / 'run'
  shutil.copytree(runs / 'teacher_partial', workdir)
  (workdir / LOCK_FILE).write_text('{"pid": 4242, "host": "elsewhere"}')
  before = snapshot(workdir)
  fd = os.open(workdir / LOCK_FILE, os.O_RDWR)
  fcntl.flock(fd, fcntl.LOCK_EX)  # another open file description: another run
  try:
    with pytest.raises(WorkdirBusyError, match=r'in use by another run .*4242'):
      recipes.train(config('train'), str(workdir))
  finally:
    os.close(fd)
  assert snapshot(workdir) == before


def test_damaged_newest_checkpoint_falls_back(runs, tmp_path):
  workdir = tmp_path / 'run'
  shutil.copytree(runs / 'teacher_partial', workdir)
  flip_byte(str(workdir / 'checkpoints' / '4'))
  with pytest.warns(checkpoint.DamagedCheckpointWarning, match=r'checkpoints/4 is damaged'):
    final = recipes.train(config('train'), str(workdir))
  with open(runs / 'teacher' / 'final_metrics.json') as f:
    assert final['params_sha256'] == json.load(f)['params_sha256']  # redone from step 2
  assert os.path.isdir(workdir / 'damaged_checkpoints' / '4')


def test_every_checkpoint_damaged_is_refused(runs, tmp_path):
  workdir = tmp_path / 'run'
  shutil.copytree(runs / 'teacher_partial', workdir)
  for step in ('2', '4'):
    flip_byte(str(workdir / 'checkpoints' / step))
  before = snapshot(workdir)
  with pytest.raises(checkpoint.DamagedCheckpointError, match=r'checkpoints/2 is damaged'):
    recipes.train(config('train'), str(workdir))
  assert snapshot(workdir) == before


# --- teachers and source models -------------------------------------------------------------

def _damaged_copy(runs, tmp_path, how: str):
  teacher = tmp_path / 'teacher'
  shutil.copytree(runs / 'teacher', teacher)
  if how == 'bit':
    flip_byte(str(teacher / 'final'))
  elif how == 'metadata':  # metadata that no longer describes the variables
    (path,) = glob.glob(str(teacher / 'final' / '*' / 'metadata' / 'metadata'))
    with open(path) as f:
      meta = json.load(f)
    meta['model_overrides'] = {'hidden': [24]}
    with open(path, 'w') as f:
      json.dump(meta, f)
  elif how == 'nan':  # a teacher that diverged: sound files, non-finite outputs
    variables, meta = checkpoint.load_variables(str(runs / 'teacher'))
    variables['params']['head']['bias'] = np.full_like(variables['params']['head']['bias'],
                                                       np.nan)
    shutil.rmtree(teacher / 'final')
    checkpoint.save_variables(str(teacher / 'final'), variables, metadata=meta,
                              step=meta['step'])
  elif how == 'empty':
    shutil.rmtree(teacher)
    teacher.mkdir()
  return teacher


TEACHERS = [
    ('teacher-bit-flip', 'bit', {}, checkpoint.DamagedCheckpointError, 'is damaged'),
    ('teacher-metadata', 'metadata', {}, ValueError, 'do not fit that model'),
    ('teacher-not-a-run', 'empty', {}, FileNotFoundError, 'teacher'),
    ('teacher-other-classes', None, {'classes': (0, 1, 2)}, ValueError, 'was trained on'),
    ('teacher-nan-live', 'nan', {}, FloatingPointError, 'non-finite teacher logits'),
    ('teacher-nan-cached', 'nan', {'kd__cache': 'float32'}, FloatingPointError,
     'non-finite logits'),
]


@pytest.mark.parametrize('name, how, changes, error, words', TEACHERS,
                         ids=[t[0] for t in TEACHERS])
def test_bad_teacher_is_refused_by_name(runs, tmp_path, name, how, changes, error, words):
  del name
  teacher = _damaged_copy(runs, tmp_path, how) if how else runs / 'teacher'
  before = snapshot(teacher)
  with pytest.raises(error) as raised:
    recipes.distill(config('distill', teacher_dir=str(teacher), **changes),
                    str(tmp_path / 'kd'))
  assert words in str(raised.value), str(raised.value)
  if how != 'nan':  # the NaN teacher is refused after training began: no folder check
    assert 'teacher' in str(raised.value)
  assert snapshot(teacher) == before


def test_damaged_source_model_is_refused_for_fine_tuning(runs, tmp_path):
  source = _damaged_copy(runs, tmp_path, 'bit')
  with pytest.raises(checkpoint.DamagedCheckpointError, match=str(source)):
    recipes.distill(config('distill', teacher_dir=str(runs / 'teacher'),
                           student_init_dir=str(source)), str(tmp_path / 'kd'))


# --- the library API, data and numerics: (name, call, error, words) --------------------------

def _images(n=8, channels=1):
  return np.zeros((n, 4, 4, channels), np.uint8)


def _dataset(**kwargs):
  args = dict(images=_images(), labels=np.arange(8) % 4, batch_size=4, mean=0.5, std=0.25,
              num_classes=4)
  args.update(kwargs)
  return pipeline.InMemoryDataset(args.pop('images'), args.pop('labels'), **args)


def _cache_with_damaged_file(tmp):
  teacher_cache = cache.TeacherCache(np.ones((4, 3), np.float32), None, None, {
      'dataset': 'fashion_mnist', 'split': 'train', 'transform': {}, 'teacher_fingerprint': 'x',
      'num_classes': 3, 'num_examples': 4, 'topk': None, 'temperature': None,
      'dtype': 'float32'})
  teacher_cache.save(str(tmp / 'cache'))
  path = tmp / 'cache' / 'teacher_logits.npy'
  raw = bytearray(path.read_bytes())
  raw[-1] ^= 0x01
  path.write_bytes(bytes(raw))
  return cache.TeacherCache.load(str(tmp / 'cache'))


def _negative_schedule():
  return losses.build_objective({'ce': {'weight': 1.0},
                                 'kd': {'weight': lambda step: 1.0 - step / 1000,
                                        'temperature': 4.0}})


API = [
    ('labels-out-of-range', lambda tmp: _dataset(labels=np.arange(8), num_classes=4),
     ValueError, 'num_classes=4'),
    ('labels-negative', lambda tmp: _dataset(labels=np.arange(8) - 1), ValueError, '>= 0'),
    ('batch-size-negative', lambda tmp: _dataset(batch_size=-16), ValueError,
     'batch_size must be a whole number >= 1, got -16'),
    ('num-classes-zero', lambda tmp: _dataset(num_classes=0), ValueError,
     'num_classes must be a whole number >= 1, got 0'),
    ('labels-not-integers', lambda tmp: _dataset(labels=np.linspace(0, 1, 8)), ValueError,
     'integer class indices'),
    ('mean-channels', lambda tmp: _dataset(mean=(0.5, 0.5, 0.5)), ValueError, 'mean has 3'),
    ('std-channels', lambda tmp: _dataset(images=_images(channels=3), std=(1.0, 1.0)),
     ValueError, 'std has 2'),
    ('std-zero', lambda tmp: _dataset(std=0.0), ValueError, 'std must be'),
    ('mean-nan', lambda tmp: _dataset(mean=float('nan')), ValueError, 'mean must be finite'),
    ('subset-absent-class', lambda tmp: data.subset_classes(
        _images(), np.arange(8) % 4, (1, 7)), ValueError, 'classes [7] have no examples'),
    ('subset-negative-class', lambda tmp: data.subset_classes(
        _images(), np.arange(8) % 4, (-1, 2)), ValueError, 'class indices >= 0'),
    ('temperature-array-zero', lambda tmp: losses.kd_loss(
        jnp.zeros((2, 3)), jnp.zeros((2, 3)), temperature=jnp.array(0.0)), ValueError,
     'temperature'),
    ('temperature-array-negative', lambda tmp: losses.kd_loss(
        jnp.zeros((2, 3)), jnp.zeros((2, 3)), temperature=np.array([1.0, -1.0])), ValueError,
     'temperature'),
    ('weight-schedule-negative', lambda tmp: _negative_schedule(), ValueError,
     'at step 1001'),  # the first negative step (1 - 1001/1000)
    ('unknown-loss', lambda tmp: losses.build_objective({'kdd': {'weight': 1.0}}), ValueError,
     "'kdd'"),
    ('checkpointer-keep-last', lambda tmp: checkpoint.Checkpointer(
        str(tmp / 'c'), metadata={}, keep_last=0), ValueError, 'keep_last'),
    ('load-variables-nothing', lambda tmp: checkpoint.load_variables(str(tmp)),
     FileNotFoundError, 'no finished checkpoint'),
    ('load-variables-missing', lambda tmp: checkpoint.load_variables(str(tmp / 'none')),
     FileNotFoundError, 'none'),
    ('cache-damaged-file', _cache_with_damaged_file, cache.CacheMismatchError,
     'teacher_logits.npy'),
    ('cache-missing', lambda tmp: cache.TeacherCache.load(str(tmp)), FileNotFoundError,
     'cache.json'),
    ('cache-nan-teacher', lambda tmp: cache.compute(
        lambda v, x: jnp.full((x.shape[0], 3), jnp.nan), {}, np.zeros((4, 2, 2, 1), np.float32),
        dataset='fashion_mnist', split='train', transform={}, teacher_fingerprint='abc' * 8,
        batch_size=2), FloatingPointError, 'non-finite logits for 4 of 4'),
]


def test_prepare_reports_a_damaged_file_by_name(tmp_path, monkeypatch, capsys):
  """`python -m jaxkd.data prepare` on a damaged raw file: one message naming the file."""
  from jaxkd.data.__main__ import main
  make_fashion_mnist(tmp_path / 'raw', n_train=10, n_test=4)
  with open(tmp_path / 'raw' / 't10k-labels-idx1-ubyte.gz', 'wb') as f:
    f.write(b'not a gzip file')
  monkeypatch.setenv('JAXKD_FASHION_MNIST_DIR', str(tmp_path / 'raw'))
  assert main(['prepare', 'fashion_mnist', '--data_dir', str(tmp_path / 'tfds')]) == 1
  assert 't10k-labels-idx1-ubyte.gz' in capsys.readouterr().err


@pytest.mark.parametrize('name, call, error, words', API, ids=[a[0] for a in API])
def test_bad_api_input_is_refused(tmp_path, name, call, error, words):
  del name
  with pytest.raises(error) as raised:
    call(tmp_path)
  assert words in str(raised.value), str(raised.value)


# --- numerics inside a run: the guard names what went wrong first ---------------------------

def _fit(labels, learning_rate=1e-3):
  from jaxkd import loop, models
  from jaxkd.state import create_train_state
  from jaxkd.steps import make_train_step
  model = models.build('mlp', num_classes=4, hidden=(8,))
  tx = optax.sgd(learning_rate)
  state = create_train_state(model, tx, seed=0, input_shape=(1, 4, 4, 1))
  step = make_train_step(model=model, tx=tx)
  batch = {'image': np.ones((8, 4, 4, 1), np.float32),
           'label': np.asarray(labels * 2, np.int32)}  # 8 examples: one per fake device
  return loop.fit(state=state, step_fn=step, batches=lambda epoch, start: iter([batch] * 2),
                  steps_per_epoch=2, num_steps=2, batch_size=8,
                  workdir=os.environ['PYTEST_FIT_DIR'], log_every=1)


@pytest.mark.parametrize('labels, learning_rate, words', [
    ((0, 1, 2, 9), 1e-3, 'labels outside 0..num_classes-1'),
    ((0, 1, 2, -1), 1e-3, 'labels outside 0..num_classes-1'),
    ((0, 1, 2, 3), 1e38, 'non-finite'),
], ids=['label-too-large', 'label-negative', 'diverged'])
def test_numerics_guard_names_the_quantity(tmp_path, monkeypatch, labels, learning_rate, words):
  monkeypatch.setenv('PYTEST_FIT_DIR', str(tmp_path))
  with pytest.raises(FloatingPointError, match=words):
    _fit(labels, learning_rate)


# --- refused from the config and the teachers' metadata, before any data is read ------------

def _fitnet(**taps):
  return ml_collections.ConfigDict({'ce': {'weight': 1.0}, 'fitnet': {
      'weight': 1.0, 'student_tap': 'dense1', 'teacher_tap': 'dense1', **taps}})


PREFLIGHT = [
    ('cache-of-two-teachers', {'kd__cache': 'float32', 'teacher_dir': 'teacher,teacher2'},
     'A teacher cache holds one teacher'),
    ('cache-of-features', {'kd__cache': 'float32', 'terms': _fitnet()},
     "carries teacher logits only, but the objective reads teacher features at ['dense1']"),
    ('student-tap', {'terms': _fitnet(student_tap='conv9')},
     "taps ['conv9'] of the student (MLP), which has no such module; its paths: "
     "['dense1', 'head']"),
    ('teacher-tap', {'terms': _fitnet(teacher_tap='dense7')}, "taps ['dense7'] of teacher"),
    ('devices', {'parallel__num_devices': 64}, 'num_devices'),
]


@pytest.mark.parametrize('name, changes, words', PREFLIGHT, ids=[p[0] for p in PREFLIGHT])
def test_distill_refuses_before_reading_data(runs, tmp_path, monkeypatch, name, changes, words):
  del name
  def no_data(config):
    raise AssertionError('the data was read before the refusal')
  monkeypatch.setattr('jaxkd.recipes.distillation.load_task', no_data)
  teachers = changes.get('teacher_dir', 'teacher').split(',')
  changes = {**changes, 'teacher_dir': ','.join(str(runs / t) for t in teachers)}
  with pytest.raises(ValueError) as raised:
    recipes.distill(config('distill', **changes), str(tmp_path / 'kd'))
  assert words in str(raised.value), str(raised.value)
  assert not (tmp_path / 'kd').exists()


# --- the loss API: inputs that used to be accepted silently ---------------------------------

def _weight_negative_between_sampled_steps():
  # Negative only at step 3, between the old sampled steps 2 and 5; jnp arithmetic (vmapped).
  return losses.build_objective({'kd': {'weight': lambda step: 1.0 - 2.0 * (step == 3),
                                        'temperature': 4.0}})


def _weight_python_branch_negative_at(bad_step):
  # Python control flow on the step cannot be vmapped: it is checked step by step.
  return losses.build_objective({'kd': {'weight': lambda step: -1.0 if step == bad_step else 1.0,
                                        'temperature': 4.0}})


LOSS_API = [
    ('temperature-string', lambda: losses.kd_loss(jnp.zeros((2, 3)), jnp.zeros((2, 3)),
                                                  temperature='4'), ValueError,
     "temperature must be a number or an array of numbers, got '4'"),
    ('temperature-string-dkd', lambda: losses.dkd_loss(
        jnp.zeros((2, 3)), jnp.zeros((2, 3)), jnp.zeros(2, jnp.int32), temperature='4',
        target_weight=1.0, non_target_weight=1.0), ValueError, "temperature must be a number"),
    ('weight-schedule-negative-at-step-3', _weight_negative_between_sampled_steps, ValueError,
     'kd_weight must be finite and non-negative, got -1.0 at step 3'),
    ('weight-schedule-negative-at-step-9999', lambda: losses.build_objective(
        {'kd': {'weight': lambda step: 1.0 - 2.0 * (step == 9999), 'temperature': 4.0}}),
     ValueError, 'at step 9999'),
    ('weight-schedule-python-branch', lambda: _weight_python_branch_negative_at(3), ValueError,
     'got -1.0 at step 3'),
    ('temperature-schedule-zero-at-step-7', lambda: losses.build_objective(
        {'kd': {'weight': 1.0, 'temperature': lambda step: 4.0 * (step != 7)}}), ValueError,
     'temperature must be finite and positive, got 0.0 at step 7'),
]


@pytest.mark.parametrize('name, call, error, words', LOSS_API, ids=[a[0] for a in LOSS_API])
def test_bad_loss_input_is_refused(name, call, error, words):
  del name
  with pytest.raises(error) as raised:
    call()
  assert words in str(raised.value), str(raised.value)
