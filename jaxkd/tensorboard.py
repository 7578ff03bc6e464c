"""TensorBoard event files written without TensorFlow: scalars only, standard format.

An event file is a sequence of TFRecords (length, masked CRC-32C of the length, payload,
masked CRC-32C of the payload); each payload is an `Event` protocol buffer, encoded here by
hand for the few fields scalars need.
"""
from __future__ import annotations

import os
import socket
import struct
import time


def _crc32c_table() -> list[int]:
  table = []
  for n in range(256):
    crc = n
    for _ in range(8):
      crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    table.append(crc)
  return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
  crc = 0xFFFFFFFF
  for byte in data:
    crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(value: int) -> bytes:
  out = bytearray()
  while True:
    byte = value & 0x7F
    value >>= 7
    out.append(byte | (0x80 if value else 0))
    if not value:
      return bytes(out)


def _field(number: int, wire_type: int, payload: bytes) -> bytes:
  return _varint(number << 3 | wire_type) + payload


def _length_delimited(number: int, payload: bytes) -> bytes:
  return _field(number, 2, _varint(len(payload)) + payload)


def _event(step: int, *, file_version: str | None = None, scalars: dict | None = None) -> bytes:
  event = _field(1, 1, struct.pack('<d', time.time())) + _field(2, 0, _varint(step))
  if file_version is not None:
    event += _length_delimited(3, file_version.encode())
  if scalars:
    values = b''.join(
        _length_delimited(1, _length_delimited(1, tag.encode()) +
                          _field(2, 5, struct.pack('<f', float(value))))
        for tag, value in scalars.items())
    event += _length_delimited(5, values)
  return event


class SummaryWriter:
  """Appends scalar summaries to `logdir/events.out.tfevents.<time>.<host>`."""

  def __init__(self, logdir: str):
    os.makedirs(logdir, exist_ok=True)
    name = f'events.out.tfevents.{int(time.time())}.{socket.gethostname()}'
    self.path = os.path.join(logdir, name)
    self._file = open(self.path, 'ab')
    self._write(_event(0, file_version='brain.Event:2'))

  def _write(self, payload: bytes) -> None:
    header = struct.pack('<Q', len(payload))
    self._file.write(header + struct.pack('<I', _masked_crc(header)) + payload +
                     struct.pack('<I', _masked_crc(payload)))

  def scalars(self, step: int, values: dict) -> None:
    """Writes every finite-number entry of `values` as a scalar at `step`."""
    scalars = {k: v for k, v in values.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if scalars:
      self._write(_event(int(step), scalars=scalars))
      self._file.flush()

  def close(self) -> None:
    self._file.close()
