"""TensorBoard event files without TensorFlow: scalars, written through tensorboardX."""
from __future__ import annotations

import itertools
import os
import socket
import time

_WRITERS = itertools.count()


class SummaryWriter:
  """Appends scalar summaries to `logdir/events.out.tfevents.<time>.<host>.<pid>.<n>`.

  Each `scalars` call is on disk when it returns: events go through tensorboardX's public
  `RecordWriter` in this thread (its `SummaryWriter` queues them for a background thread, so
  a flush there can miss the latest ones). The pid and counter keep two writers started in
  the same second from truncating each other's file.

  tensorboardX is imported here, not with this module: its package imports PyTorch where
  PyTorch is installed (1.2 s), for tensor summaries this writer never writes.
  """

  def __init__(self, logdir: str):
    # pylint: disable=g-import-not-at-top
    import tensorboardX
    from tensorboardX.proto import event_pb2, summary_pb2
    self._event, self._summary = event_pb2.Event, summary_pb2.Summary
    os.makedirs(logdir, exist_ok=True)
    name = (f'events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}.'
            f'{next(_WRITERS)}')
    self._records = tensorboardX.RecordWriter(os.path.join(logdir, name))
    self._write(self._event(wall_time=time.time(), file_version='brain.Event:2'))

  def _write(self, event) -> None:
    self._records.write(event.SerializeToString())
    self._records.flush()

  def scalars(self, step: int, values: dict) -> None:
    """Writes every int or float entry of `values` (not bools) as a scalar at `step`."""
    summary = self._summary(value=[self._summary.Value(tag=tag, simple_value=float(value))
                             for tag, value in values.items()
                             if isinstance(value, (int, float)) and not isinstance(value, bool)])
    if summary.value:
      self._write(self._event(wall_time=time.time(), step=int(step), summary=summary))

  def close(self) -> None:
    self._records.close()
