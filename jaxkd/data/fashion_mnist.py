"""Fashion-MNIST from its four IDX .gz files (Debian: `dataset-fashion-mnist`)."""

from __future__ import annotations

import gzip
import pathlib
import zlib
from collections.abc import Mapping

import numpy as np

from jaxkd.data._local import CorruptDataError, DatasetInfo, LocalFileBuilder, RemoteFile

_IDX_UBYTE = 0x08  # IDX type code for unsigned bytes.
_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"


def read_idx(path: str | pathlib.Path, *, ndim: int) -> np.ndarray:
  """Reads a (possibly gzipped) IDX file of unsigned bytes with `ndim` dimensions.

  The header is two zero bytes, the type code 0x08 and the number of dimensions,
  then one big-endian uint32 per dimension; the data follows in C order.
  """
  path = pathlib.Path(path)
  try:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
      data = f.read()
  except (OSError, EOFError, zlib.error) as e:  # zlib: a damaged deflate stream
    raise CorruptDataError(f"Cannot read {path}: {e}. Replace the file.") from e
  header = 4 + 4 * ndim
  expected_magic = bytes([0, 0, _IDX_UBYTE, ndim])
  if len(data) < header or data[:4] != expected_magic:
    raise CorruptDataError(
        f"{path} is not an IDX file of {ndim}-d unsigned bytes: magic number "
        f"{data[:4].hex()} (expected {expected_magic.hex()}). Replace the file.")
  shape = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
  if len(data) - header != int(np.prod(shape)):
    raise CorruptDataError(
        f"{path} declares shape {shape} ({int(np.prod(shape))} bytes) but holds "
        f"{len(data) - header} bytes of data: truncated or corrupt. Replace the file.")
  return np.frombuffer(data, np.uint8, offset=header).reshape(shape)


class JaxkdFashionMnist(LocalFileBuilder):
  """Fashion-MNIST (Xiao et al., 2017), registered in TFDS as `jaxkd_fashion_mnist`."""

  INFO = DatasetInfo(
      name="fashion_mnist",
      class_names=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
      image_shape=(28, 28, 1),
      mean=(0.2860,),
      std=(0.3530,),
      splits={"train": 60000, "test": 10000},
      env_var="JAXKD_FASHION_MNIST_DIR",
      builder_name="jaxkd_fashion_mnist",
  )
  _SPLIT_FILES = {
      "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
      "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
  }
  RAW_FILES = tuple(f for pair in _SPLIT_FILES.values() for f in pair)
  DEFAULT_DIRS = ("/usr/share/datasets/fashion-mnist",)
  INSTALL_HINT = "sudo apt-get install dataset-fashion-mnist (installs them in " \
                 "/usr/share/datasets/fashion-mnist)"
  HOMEPAGE = "https://github.com/zalandoresearch/fashion-mnist"
  CITATION = ("Han Xiao, Kashif Rasul, Roland Vollgraf. Fashion-MNIST: a Novel Image "
              "Dataset for Benchmarking Machine Learning Algorithms. arXiv:1708.07747")
  URLS = {
      "train-images-idx3-ubyte.gz": RemoteFile(
          _URL + "train-images-idx3-ubyte.gz",
          "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84", 26421880),
      "train-labels-idx1-ubyte.gz": RemoteFile(
          _URL + "train-labels-idx1-ubyte.gz",
          "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845", 29515),
      "t10k-images-idx3-ubyte.gz": RemoteFile(
          _URL + "t10k-images-idx3-ubyte.gz",
          "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073", 4422102),
      "t10k-labels-idx1-ubyte.gz": RemoteFile(
          _URL + "t10k-labels-idx1-ubyte.gz",
          "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5", 5148),
  }

  def _read_split(self, files: Mapping[str, pathlib.Path], split: str):
    image_file, label_file = self._SPLIT_FILES[split]
    images = read_idx(files[image_file], ndim=3)
    labels = read_idx(files[label_file], ndim=1)
    if len(images) != len(labels):
      raise CorruptDataError(f"{image_file} has {len(images)} images but {label_file} "
                             f"has {len(labels)} labels. Replace the files.")
    return images[..., None], labels
