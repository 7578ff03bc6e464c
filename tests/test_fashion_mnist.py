"""`jaxkd.data.fashion_mnist.read_idx`: a damaged file is refused naming it."""
import gzip

import numpy as np
import pytest

from jaxkd.data import CorruptDataError
from jaxkd.data.fashion_mnist import read_idx


def _idx(labels: np.ndarray) -> bytes:
  return bytes([0, 0, 8, 1]) + np.asarray([len(labels)], '>u4').tobytes() + labels.tobytes()


def test_reads_a_gzipped_idx_file(tmp_path):
  labels = np.arange(200, dtype=np.uint8) % 10
  path = tmp_path / 'labels-idx1-ubyte.gz'
  path.write_bytes(gzip.compress(_idx(labels)))
  np.testing.assert_array_equal(read_idx(path, ndim=1), labels)


def test_damaged_deflate_stream_is_a_corrupt_data_error(tmp_path):
  raw = bytearray(gzip.compress(_idx(np.random.default_rng(0).integers(0, 256, 400, np.uint8))))
  for k in range(12, len(raw) - 10):  # the compressed blocks, not the gzip header
    raw[k] ^= 0x5A
  path = tmp_path / 'labels-idx1-ubyte.gz'
  path.write_bytes(bytes(raw))
  with pytest.raises(CorruptDataError, match='labels-idx1-ubyte.gz.*Replace the file'):
    read_idx(path, ndim=1)


def test_data_dir_that_is_a_file_is_refused(tmp_path, monkeypatch):
  from jaxkd import data
  afile = tmp_path / 'afile'
  afile.write_text('')
  monkeypatch.setenv('JAXKD_DATA_DIR', str(afile))
  with pytest.raises(ValueError, match=r'\$JAXKD_DATA_DIR=.*afile.* is a file, not a folder'):
    data.prepare('fashion_mnist')
