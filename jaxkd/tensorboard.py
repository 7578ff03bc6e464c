"""TensorBoard event files without TensorFlow: scalars, written through tensorboardX."""
from __future__ import annotations

import itertools
import os
import time

from tensorboardX.event_file_writer import EventsWriter
from tensorboardX.proto.event_pb2 import Event
from tensorboardX.proto.summary_pb2 import Summary

_WRITERS = itertools.count()


class SummaryWriter:
  """Appends scalar summaries to `logdir/events.out.tfevents.<time>.<host>.<pid>.<n>`.

  Writes synchronously with tensorboardX's `EventsWriter`: its `SummaryWriter` queues events
  for a background thread, so a flush there can miss the latest ones. The pid and counter
  keep two writers started in the same second from truncating each other's file.
  """

  def __init__(self, logdir: str):
    os.makedirs(logdir, exist_ok=True)
    self._events = EventsWriter(os.path.join(logdir, 'events'),
                                f'.{os.getpid()}.{next(_WRITERS)}')

  def scalars(self, step: int, values: dict) -> None:
    """Writes every int or float entry of `values` (not bools) as a scalar at `step`."""
    summary = Summary(value=[Summary.Value(tag=tag, simple_value=float(value))
                             for tag, value in values.items()
                             if isinstance(value, (int, float)) and not isinstance(value, bool)])
    if summary.value:
      self._events.write_event(Event(wall_time=time.time(), step=int(step), summary=summary))
      self._events.flush()

  def close(self) -> None:
    self._events.close()
