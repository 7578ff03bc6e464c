"""Checkpoints: round trip, retention, half-written folders, refused resumes, SIGTERM, exact
resume of the shared loop, and the final export."""
import json
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxkd import checkpoint, models
from jaxkd.checkpoint import Checkpointer, IncompatibleCheckpointError, IncompleteCheckpointWarning
from jaxkd.data import InMemoryDataset
from jaxkd.loop import Interrupted, fit
from jaxkd.state import create_train_state, tree_sha256
from jaxkd.steps import make_train_step

SHAPE = (1, 28, 28, 1)
META = {'task': 'train', 'model': 'mlp', 'model_overrides': {'hidden': [16]},
        'dataset': 'fake', 'classes': [], 'seed': 0, 'batch_size': 8}


def _state(seed=0, num_classes=10):
  model = models.build('mlp', num_classes=num_classes, hidden=(16,))
  tx = optax.sgd(0.1, momentum=0.9)
  return model, tx, create_train_state(model, tx, seed=seed, input_shape=SHAPE)


def _snapshot(directory):
  """Every file under `directory` with its bytes and modification time."""
  files = {}
  for root, _, names in os.walk(directory):
    for name in names:
      path = os.path.join(root, name)
      with open(path, 'rb') as f:
        files[os.path.relpath(path, directory)] = (f.read(), os.stat(path).st_mtime_ns)
  return files


def test_round_trip_restores_state_position_and_description(tmp_path):
  model, tx, state = _state()
  step_fn = make_train_step(model=model, tx=tx)
  rng = np.random.default_rng(0)
  batch = {'image': rng.normal(size=(8, 28, 28, 1)).astype(np.float32),
           'label': rng.integers(0, 10, 8).astype(np.int32)}
  for _ in range(2):
    state, _ = step_fn(state, batch)
  expected = tree_sha256(state)
  with Checkpointer(tmp_path / 'ckpt', metadata=META) as ckpt:
    ckpt.save(2, state, data_state={'epoch': 0, 'step_in_epoch': 2})
    # The save is asynchronous and the step donates its state: keep stepping meanwhile.
    for _ in range(3):
      state, _ = step_fn(state, batch)
    ckpt.wait_until_finished()
    _, _, fresh = _state(seed=1)
    restored = ckpt.restore(fresh)
  assert restored.step == 2 and int(restored.state.step) == 2
  assert tree_sha256(restored.state) == expected
  assert restored.data_state == {'epoch': 0, 'step_in_epoch': 2}
  meta = restored.metadata
  assert meta['step'] == 2 and meta['model'] == 'mlp'
  assert meta['model_overrides'] == {'hidden': [16]}
  assert meta['jax_version'] == jax.__version__ and meta['jaxkd_version']


def test_keeps_last_n_and_best_k_and_never_the_latest(tmp_path):
  _, _, state = _state()
  accuracy = {2: 0.5, 4: 0.9, 6: 0.7, 8: 0.1}  # step 8 is the worst, and the latest
  with Checkpointer(tmp_path / 'ckpt', metadata=META, keep_last=2, keep_best=2,
                    best_metric='val_accuracy') as ckpt:
    for step in range(1, 9):
      metrics = {'val_accuracy': accuracy[step], 'val_loss': 1.0} if step in accuracy else None
      ckpt.save(step, state, metrics=metrics)
    ckpt.wait_until_finished()
    assert ckpt.all_steps() == [4, 6, 7, 8]
  assert sorted(int(n) for n in os.listdir(tmp_path / 'ckpt') if n.isdigit()) == [4, 6, 7, 8]

  with Checkpointer(tmp_path / 'min', metadata=META, keep_last=1, keep_best=1,
                    best_metric='val_loss', best_mode='min') as ckpt:
    for step, loss in enumerate([0.3, 0.1, 0.2, 0.4], start=1):
      ckpt.save(step, state, metrics={'val_loss': loss})
    ckpt.wait_until_finished()
    assert ckpt.all_steps() == [2, 4]
  with pytest.raises(ValueError, match='keep_last must be >= 1'):
    Checkpointer(tmp_path / 'x', metadata=META, keep_last=0)


def test_half_written_checkpoint_is_ignored_with_a_warning_and_removed(tmp_path):
  _, _, state = _state()
  directory = tmp_path / 'ckpt'
  with Checkpointer(directory, metadata=META) as ckpt:
    ckpt.save(2, state)
  partial = directory / f'4{checkpoint.TMP_SUFFIX}'
  (partial / 'state').mkdir(parents=True)
  (partial / 'state' / 'garbage').write_bytes(b'\x00' * 10)

  assert checkpoint.latest_step(directory) == 2  # readers skip it and leave it alone
  assert partial.exists()
  with pytest.warns(IncompleteCheckpointWarning, match='4.orbax-checkpoint-tmp'):
    ckpt = Checkpointer(directory, metadata=META)
  with ckpt:
    assert ckpt.latest_step() == 2
    assert tree_sha256(ckpt.restore(state).state) == tree_sha256(state)
    ckpt.save(4, state)
  assert not partial.exists()
  assert checkpoint.incomplete_steps(directory) == []
  assert checkpoint.latest_step(directory) == 4


def test_resume_with_another_teacher_is_refused_and_writes_nothing(tmp_path):
  _, _, state = _state()
  directory = tmp_path / 'ckpt'
  meta = {**META, 'task': 'distill', 'teacher_fingerprints': ['a' * 64]}
  with Checkpointer(directory, metadata=meta) as ckpt:
    ckpt.save(3, state)
  (directory / f'5{checkpoint.TMP_SUFFIX}').mkdir()  # even leftovers stay put
  before = _snapshot(tmp_path)
  with pytest.raises(IncompatibleCheckpointError) as error:
    Checkpointer(directory, metadata={**meta, 'teacher_fingerprints': ['b' * 64]})
  assert 'a' * 64 in str(error.value) and 'b' * 64 in str(error.value)
  with pytest.raises(IncompatibleCheckpointError, match='model'):
    Checkpointer(directory, metadata={**meta, 'model': 'lenet5'})
  assert _snapshot(tmp_path) == before
  assert (directory / f'5{checkpoint.TMP_SUFFIX}').is_dir()
  with pytest.warns(IncompleteCheckpointWarning):  # the same run resumes: () == [] in JSON
    ckpt = Checkpointer(directory, metadata={**meta, 'classes': ()})
  with ckpt:
    assert ckpt.latest_step() == 3


def _fit_run(workdir, *, num_steps, on_step=None):
  """A 2-epoch fit of the tiny MLP with checkpoints every 4 steps; returns the state."""
  model, tx, state = _state()
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (48, 28, 28, 1), dtype=np.uint8)
  labels = rng.integers(0, 10, 48).astype(np.int32)
  dataset = InMemoryDataset(images, labels, batch_size=8, mean=0.5, std=0.25, seed=0,
                            num_classes=10)
  step_fn = make_train_step(model=model, tx=tx)
  evaluate = lambda s, epoch: {'val_accuracy': 0.1 * epoch}  # noqa: E731
  with Checkpointer(os.path.join(workdir, 'checkpoints'), metadata=META, keep_best=1,
                    best_metric='val_accuracy') as ckpt:
    return fit(state=state, step_fn=step_fn,
               batches=lambda e, s: dataset.epoch(e, start_step=s),
               steps_per_epoch=dataset.steps_per_epoch, num_steps=num_steps, batch_size=8,
               workdir=str(workdir), evaluate=evaluate, log_every=1, on_step=on_step,
               checkpointer=ckpt, checkpoint_every=4)


def test_sigterm_saves_then_rerun_resumes_exactly(tmp_path):
  reference = _fit_run(tmp_path / 'reference', num_steps=12)

  def terminate(state, step):
    if step == 7:
      os.kill(os.getpid(), signal.SIGTERM)

  workdir = tmp_path / 'run'
  handler = signal.getsignal(signal.SIGTERM)
  with pytest.raises(Interrupted) as stopped:
    _fit_run(workdir, num_steps=12, on_step=terminate)
  assert stopped.value.step == 7 and stopped.value.code == 128 + signal.SIGTERM
  assert signal.getsignal(signal.SIGTERM) == handler  # restored
  assert checkpoint.latest_step(workdir / 'checkpoints') == 7
  with open(workdir / 'metrics.jsonl', 'a') as f:  # a record cut short by a kill
    f.write('{"step": 8, "lo')
  resumed = _fit_run(workdir, num_steps=12)
  assert tree_sha256(resumed) == tree_sha256(reference)
  with open(workdir / 'metrics.jsonl') as f:
    lines = f.read().splitlines()
  with open(tmp_path / 'reference' / 'metrics.jsonl') as f:
    expected = f.read().splitlines()
  steps = [int(line.split('"step": ')[1].split(',')[0]) for line in lines]
  assert steps == [int(line.split('"step": ')[1].split(',')[0]) for line in expected]


def test_final_export_is_idempotent_and_never_overwritten(tmp_path):
  _, _, state = _state()
  variables = jax.device_get(state.variables)
  directory = str(tmp_path / 'final')
  checkpoint.save_variables(directory, variables, metadata={'model': 'mlp'}, step=5)
  checkpoint.save_variables(directory, variables, metadata={'model': 'mlp'}, step=5)
  loaded, meta = checkpoint.load_variables(str(tmp_path))  # a WORKDIR resolves to its final
  assert tree_sha256(loaded) == tree_sha256(variables) and meta['step'] == 5
  other = jax.tree.map(lambda x: x + 1, variables)
  with pytest.raises(FileExistsError, match='different variables'):
    checkpoint.save_variables(directory, other, metadata={'model': 'mlp'}, step=5)
  assert tree_sha256(checkpoint.load_variables(directory)[0]) == tree_sha256(variables)
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                          variables)
  placed, _ = checkpoint.load_variables(directory, target=abstract)
  assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(placed))
  assert jnp.array_equal(placed['params']['head']['kernel'], variables['params']['head']['kernel'])


def test_variables_whose_metadata_lost_its_checksums_are_refused(tmp_path):
  """Metadata without checksums cannot vouch for the arrays: refused, not trusted."""
  _, _, state = _state()
  directory = str(tmp_path / 'final')
  checkpoint.save_variables(directory, jax.device_get(state.variables),
                            metadata={'model': 'mlp'}, step=1)
  (meta_file,) = [os.path.join(d, f) for d, _, files in os.walk(directory) for f in files
                  if os.path.basename(d) == 'metadata' and f == 'metadata']
  with open(meta_file) as f:
    meta = json.load(f)
  del meta['leaf_sha256'], meta['variables_sha256']
  with open(meta_file, 'w') as f:
    json.dump(meta, f)
  with pytest.raises(checkpoint.DamagedCheckpointError, match='lost both checksums'):
    checkpoint.load_variables(directory)
