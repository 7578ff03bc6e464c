"""Seed statistics against textbook values; TensorBoard files against the record format."""
import glob
import struct

import numpy as np
import pytest

from jaxkd import stats, tensorboard


def test_t_distribution_matches_tables():
  # Critical values from standard t tables: P(T > t) for df degrees of freedom.
  assert stats.t_sf(2.132, 4) == pytest.approx(0.05, abs=2e-4)
  assert stats.t_sf(2.776, 4) == pytest.approx(0.025, abs=2e-4)
  assert stats.t_sf(2.228, 10) == pytest.approx(0.025, abs=2e-4)
  assert stats.t_sf(1.0, 1) == pytest.approx(0.25)  # Cauchy: 1/2 - atan(1)/pi
  assert stats.t_sf(0.0, 7) == pytest.approx(0.5)
  assert stats.t_sf(-2.132, 4) == pytest.approx(0.95, abs=2e-4)
  # I_0.5(2, 3) = sum_{j=2..4} C(4, j) / 16 = 11/16.
  assert stats.betainc(2, 3, 0.5) == pytest.approx(11 / 16)


def test_paired_test():
  result = stats.paired_test([0.90, 0.91, 0.92, 0.90, 0.915], [0.89, 0.905, 0.91, 0.899, 0.90])
  diff = np.array([0.01, 0.005, 0.01, 0.001, 0.015])
  t = diff.mean() / (diff.std(ddof=1) / np.sqrt(5))
  assert result['t'] == pytest.approx(t)
  assert result['mean_difference'] == pytest.approx(diff.mean())
  assert result['p_value'] == pytest.approx(stats.t_sf(t, 4))
  assert result['p_value_sign_flip'] == pytest.approx(1 / 32)  # all five differences > 0
  assert stats.mean_std([1.0, 3.0]) == pytest.approx((2.0, np.sqrt(2)))


def _read_records(path):
  with open(path, 'rb') as f:
    blob = f.read()
  records, offset = [], 0
  while offset < len(blob):
    (length,) = struct.unpack('<Q', blob[offset:offset + 8])
    (length_crc,) = struct.unpack('<I', blob[offset + 8:offset + 12])
    payload = blob[offset + 12:offset + 12 + length]
    (payload_crc,) = struct.unpack('<I', blob[offset + 12 + length:offset + 16 + length])
    assert length_crc == tensorboard._masked_crc(blob[offset:offset + 8])
    assert payload_crc == tensorboard._masked_crc(payload)
    records.append(payload)
    offset += 16 + length
  return records


def test_tensorboard_event_file(tmp_path):
  assert tensorboard.crc32c(b'123456789') == 0xE3069283  # the CRC-32C check value
  writer = tensorboard.SummaryWriter(str(tmp_path))
  writer.scalars(7, {'loss': 0.25, 'accuracy': 0.5, 'name': 'skipped'})
  writer.close()
  (path,) = glob.glob(str(tmp_path / 'events.out.tfevents.*'))
  first, second = _read_records(path)
  assert b'brain.Event:2' in first
  # Event: field 2 (step) = 7; Summary values with tag and float simple_value.
  assert b'\x10\x07' in second
  assert b'loss' in second and struct.pack('<f', 0.25) in second
  assert b'accuracy' in second and struct.pack('<f', 0.5) in second
  assert b'name' not in second
