"""TensorBoard event files (jaxkd.tensorboard) read back by TensorBoard."""
import glob

from tensorboard.backend.event_processing import event_accumulator

from jaxkd import tensorboard


def _read(logdir):
  accumulator = event_accumulator.EventAccumulator(str(logdir))
  accumulator.Reload()
  return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)]
          for tag in accumulator.Tags()['scalars']}


def test_tensorboard_event_file(tmp_path):
  writer = tensorboard.SummaryWriter(str(tmp_path))
  writer.scalars(7, {'loss': 0.25, 'accuracy': 0.5, 'name': 'skipped', 'done': True,
                     'epoch': 1, 'curve': [0.1]})
  writer.scalars(9, {'loss': 0.125})
  # Readable before close: scalars() flushes.
  expected = {'loss': [(7, 0.25), (9, 0.125)], 'accuracy': [(7, 0.5)], 'epoch': [(7, 1.0)]}
  assert _read(tmp_path) == expected
  writer.close()
  # A second writer in the same second and directory gets its own file.
  second = tensorboard.SummaryWriter(str(tmp_path))
  second.scalars(11, {'loss': 0.0625})
  second.close()
  assert len(glob.glob(str(tmp_path / 'events.out.tfevents.*'))) == 2
  assert _read(tmp_path) == {**expected, 'loss': [(7, 0.25), (9, 0.125), (11, 0.0625)]}
