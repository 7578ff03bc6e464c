"""TensorBoard event files without TensorFlow: scalars, written through tensorboardX."""
from __future__ import annotations

import itertools
import os
import sys
import time


_WRITERS = itertools.count()


class SummaryWriter:
  """Appends scalar summaries to `logdir/events.out.tfevents.<time>.<host>.<pid>.<n>`.

  Writes synchronously with tensorboardX's `EventsWriter`: its `SummaryWriter` queues events
  for a background thread, so a flush there can miss the latest ones. The pid and counter
  keep two writers started in the same second from truncating each other's file.

  tensorboardX is imported here, not with this module: its package imports PyTorch where
  PyTorch is installed (1.2 s, and ~0.5 GB), for image summaries this writer never writes.
  """

  def __init__(self, logdir: str):
    EventsWriter, Event, Summary = _tensorboardx()  # pylint: disable=invalid-name
    self._event, self._summary = Event, Summary
    os.makedirs(logdir, exist_ok=True)
    self._events = EventsWriter(os.path.join(logdir, 'events'),
                                f'.{os.getpid()}.{next(_WRITERS)}')

  def scalars(self, step: int, values: dict) -> None:
    """Writes every int or float entry of `values` (not bools) as a scalar at `step`."""
    summary = self._summary(value=[self._summary.Value(tag=tag, simple_value=float(value))
                             for tag, value in values.items()
                             if isinstance(value, (int, float)) and not isinstance(value, bool)])
    if summary.value:
      self._events.write_event(self._event(wall_time=time.time(), step=int(step), summary=summary))
      self._events.flush()

  def close(self) -> None:
    self._events.close()


def _tensorboardx():
  """tensorboardX's event writer and protos, imported without PyTorch.

  tensorboardX's `writer` module tries `import torch` (an optional dependency it uses for
  tensor summaries); while it is imported here, `torch` reads as absent, unless PyTorch is
  already loaded, in which case nothing changes.
  """
  # pylint: disable=g-import-not-at-top
  hide = 'torch' not in sys.modules
  if hide:
    sys.modules['torch'] = None  # `import torch` raises ImportError
  try:
    from tensorboardX.event_file_writer import EventsWriter
    from tensorboardX.proto.event_pb2 import Event
    from tensorboardX.proto.summary_pb2 import Summary
  finally:
    if hide:
      del sys.modules['torch']
  return EventsWriter, Event, Summary
